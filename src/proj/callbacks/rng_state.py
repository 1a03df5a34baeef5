"""The random number generators' state in every checkpoint, so that a resumed run draws what the original would."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RNGState(Callback):
    """Saves torch (CPU and CUDA), NumPy and Python RNG states; restores them as the resumed epoch starts.

    Lightning checkpoints hold weights, optimizer, schedulers and counters, but not these: without them a
    resumed run draws other dropout masks (and, with torchvision's DataLoader, another shuffle) than the run
    it continues. They are restored at the start of the first training epoch rather than at load time,
    because the sanity-check validation in between would consume them (a DataLoader draws a seed per
    iterator). Everything is stored as tensors and numbers, so the checkpoint still loads with
    `weights_only=True`.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

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
        self.pending = state_dict

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.pending is None:
            return
        state, self.pending = self.pending, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        numpy_state = state["numpy"]
        has_gauss, gauss = numpy_state["gauss"]
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, numpy_state["pos"], has_gauss, gauss))
        python_state = state["python"]
        random.setstate((python_state["version"], tuple(python_state["words"].tolist()), python_state["gauss"]))
