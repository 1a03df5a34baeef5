"""The random number generators' state in every checkpoint, so that a resumed run draws what the original would."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class RNGState(Callback):
    """Saves torch (CPU and CUDA), NumPy and Python RNG states in checkpoints, and restores them on resume.

    Lightning checkpoints hold weights, optimizer, schedulers and counters, but not these: without them a
    resumed run draws other dropout masks (and, with torchvision's DataLoader, another shuffle) than the run
    it continues. Restoring at load time is early enough: Lightning skips the sanity check when resuming
    (and isolates its RNG otherwise), so the next draw is the resumed epoch's shuffle. Everything is stored
    as tensors and numbers, so the checkpoint still loads with `weights_only=True`.
    """

    def state_dict(self) -> dict[str, Any]:
        _, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)  # ("MT19937", words, ...)
        assert isinstance(keys, np.ndarray)
        python_version, python_words, python_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": position, "gauss": (has_gauss, gauss)},
            "python": {"version": python_version, "words": torch.tensor(python_words), "gauss": python_gauss},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        numpy_state = state_dict["numpy"]
        has_gauss, gauss = numpy_state["gauss"]
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, numpy_state["pos"], has_gauss, gauss))
        python_state = state_dict["python"]
        random.setstate((python_state["version"], tuple(python_state["words"].tolist()), python_state["gauss"]))
