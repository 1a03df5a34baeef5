"""Reading checkpoints outside the Trainer (predict, export, checks before a run), with errors that say what to do."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from proj.errors import UserError
from proj.models import ImageClassifier

HINT = "pass a .ckpt written by proj.fit, e.g. logs/mnist/version_0/checkpoints/last.ckpt"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents on the CPU; a missing, truncated or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}: {HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        reason = (str(err).strip() or type(err).__name__).splitlines()[0].split(". ")[0]
        raise UserError(f"checkpoint {str(path)!r} cannot be read (truncated or not a checkpoint: {reason}); {HINT}")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{str(path)!r} is not a Lightning checkpoint (it has no state_dict); {HINT}")
    return checkpoint


def classifier_class(checkpoint: dict[str, Any], path: str | Path) -> type[ImageClassifier]:
    """The ImageClassifier subclass that wrote the checkpoint (LightningCLI records it as `_class_path`)."""
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise UserError(
            f"checkpoint {str(path)!r} does not say which model wrote it (no _class_path; it was not written by "
            "the proj CLI): load it with that class, e.g. MLPClassifier.load_from_checkpoint(path)"
        )
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise UserError(f"checkpoint {str(path)!r} was written by {class_path}, which cannot be imported here")
    if not (isinstance(cls, type) and issubclass(cls, ImageClassifier)):
        raise UserError(f"checkpoint {str(path)!r} holds a {class_path}, not an ImageClassifier")
    return cls


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> ImageClassifier:
    """The trained model from a checkpoint, in eval mode, whatever ImageClassifier subclass wrote it."""
    cls = classifier_class(read_checkpoint(path), path)
    try:
        model = cls.load_from_checkpoint(path, map_location=map_location)
    except (RuntimeError, KeyError, TypeError) as err:
        raise UserError(f"checkpoint {str(path)!r} does not fit {cls.__name__}: {str(err).splitlines()[0]}")
    return model.eval()
