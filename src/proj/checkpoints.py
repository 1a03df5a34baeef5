"""Checkpoints: written whole or not at all, found again by "last", read back with errors that say what to do."""

from __future__ import annotations

import importlib
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from proj.data import ImageDataModule
from proj.errors import UserError
from proj.models import ImageClassifier
from proj.models.base import DATA_KEY
from proj.outputs import atomic_write

HINT = "pass a .ckpt written by proj.fit, e.g. logs/mnist/version_0/checkpoints/last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its destination, syncs it to disk, then renames it into place (`atomic_write`).

    Lightning's own writer renames a temporary file from the system's temp folder: across file systems
    that is a copy, and a kill during the copy leaves a truncated `last.ckpt`. A rename within one folder
    is atomic, so a crash at any moment leaves the previous checkpoint or the new one, never half of one. A
    failed write (a full disk, a read-only folder) removes its partial file and stops the run with a UserError.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:  # one partial name per checkpoint (only rank 0 writes): a killed run's leftover is overwritten
            with atomic_write(path, path.with_name(f".{path.name}.partial")) as partial, open(partial, "wb") as file:
                file.write(buffer.getbuffer())
        except OSError as err:
            raise UserError(
                f"cannot write checkpoint {str(path)!r}: {err.strerror or err}. Nothing half-written is left and "
                f"the previous {path.name} (if any) is intact; free space or write elsewhere (--trainer.logger."
                "init_args.save_dir), then resume with --ckpt_path last."
            ) from err


def version_dirs(root: str | Path) -> list[Path]:
    """The `version_N` folders of a logger's root (e.g. logs/mnist), oldest first."""
    found = [path for path in Path(root).glob("version_*") if re.fullmatch(r"version_\d+", path.name)]
    return sorted(found, key=lambda path: int(path.name.removeprefix("version_")))


def find_last(root: str | Path) -> Path:
    """`last.ckpt` of the newest run under `root` that has one: what `--ckpt_path last` resumes from."""
    for run in reversed(version_dirs(root)):
        if (last := run / "checkpoints" / "last.ckpt").is_file():
            return last
    raise UserError(
        f"--ckpt_path last: no run under {str(root)!r} has a checkpoints/last.ckpt to resume from. "
        "Pass the run's logger settings (--config <run>/config.yaml) or an explicit --ckpt_path FILE."
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents on the CPU; a missing, truncated or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}: {HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        reason = (str(err).strip() or type(err).__name__).splitlines()[0].split(". ")[0]
        message = f"checkpoint {str(path)!r} cannot be read (truncated or not a checkpoint: {reason}); {HINT}"
        raise UserError(message) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{str(path)!r} is not a Lightning checkpoint (it has no state_dict); {HINT}")
    return checkpoint


TRUSTED_PACKAGE = "proj"  # model classes a checkpoint may name without the user naming them too


def check_trusted(class_path: str, path: str | Path, trusted: Sequence[str] = ()) -> None:
    """Refuse, before importing anything, a model class outside proj that the user did not name.

    A checkpoint names the class that wrote it, and importing that class's module runs its code: a file from
    elsewhere could name any module. Weights load with `weights_only=True`; this keeps the class as safe.
    """
    module_name = class_path.rpartition(".")[0]
    if module_name == TRUSTED_PACKAGE or module_name.startswith(f"{TRUSTED_PACKAGE}.") or class_path in trusted:
        return
    raise UserError(
        f"checkpoint {str(path)!r} names its model class {class_path}, outside {TRUSTED_PACKAGE}: loading it would "
        f"import and run that code. If you trust the file and that package, name the class: --model {class_path}"
    )


def classifier_class(
    checkpoint: dict[str, Any], path: str | Path, trusted: Sequence[str] = ()
) -> type[ImageClassifier]:
    """The ImageClassifier subclass that wrote the checkpoint (LightningCLI records it as `_class_path`): one of
    proj's, or one of the `trusted` class paths."""
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise UserError(
            f"checkpoint {str(path)!r} does not say which model wrote it (no _class_path; it was not written by "
            "the proj CLI): load it with that class, e.g. MLPClassifier.load_from_checkpoint(path)"
        )
    check_trusted(class_path, path, trusted)
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise UserError(f"checkpoint {str(path)!r} was written by {class_path}, which is not importable") from None
    if not (isinstance(cls, type) and issubclass(cls, ImageClassifier)):
        raise UserError(f"checkpoint {str(path)!r} holds a {class_path}, not an ImageClassifier")
    return cls


def check_same_data(checkpoint: dict[str, Any], path: str | Path, datamodule: ImageDataModule) -> None:
    """Fail before a run starts if the checkpoint was trained on other data than `datamodule` serves."""
    trained_on = checkpoint.get(DATA_KEY)
    if not trained_on:
        return  # written before checkpoints described their data: check_fits still compares the tensors
    here = datamodule.identity()
    keys = ("class_path", "input_shape", "class_names")
    if differ := [key for key in keys if trained_on.get(key) != here[key]]:

        def describe(data: dict[str, Any]) -> str:
            shape = "x".join(str(side) for side in data.get("input_shape", []))
            name = data.get("class_path", "?").rpartition(".")[2]
            return f"{name} ({shape}, {len(data.get('class_names', []))} classes)"

        fix = "the data settings it was trained with" if "class_path" not in differ else "its data"
        raise UserError(
            f"checkpoint {str(path)!r} was trained on {describe(trained_on)}, but this run's data is {describe(here)} "
            f"({differ[0].replace('_', ' ')} differs): pass {fix} (--data {trained_on.get('class_path', '?')} ...), "
            "or that run's --config <run>/config.yaml."
        )


def check_fits(checkpoint: dict[str, Any], path: str | Path, model: ImageClassifier) -> None:
    """Fail before a run starts if the checkpoint's tensors do not fit `model` (names and shapes)."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in checkpoint["state_dict"].items() if hasattr(value, "shape")}
    if mismatched := sorted(key for key in expected.keys() & found.keys() if expected[key] != found[key]):
        key = mismatched[0]
        raise UserError(
            f"checkpoint {str(path)!r} does not fit this {type(model).__name__}: {key} is {found[key]} there and "
            f"{expected[key]} here. Use the settings it was trained with: --config <its run>/config.yaml."
        )
    if different := sorted(expected.keys() ^ found.keys()):
        where = "lacks" if different[0] in expected else "has an extra"
        raise UserError(
            f"checkpoint {str(path)!r} {where} {different[0]} for this {type(model).__name__} ({len(different)} "
            "tensors differ): it was trained with other settings; use --config <its run>/config.yaml."
        )


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu", trusted: Sequence[str] = ()
) -> ImageClassifier:
    """The trained model from a checkpoint, in eval mode, whatever ImageClassifier subclass of proj (or of the
    `trusted` class paths) wrote it."""
    cls = classifier_class(read_checkpoint(path), path, trusted)
    try:
        model = cls.load_from_checkpoint(path, map_location=map_location)
    except (RuntimeError, KeyError, TypeError) as err:
        raise UserError(f"checkpoint {str(path)!r} does not fit {cls.__name__}: {str(err).splitlines()[0]}") from err
    return model.eval()


def load_weights(model: ImageClassifier, path: str | Path) -> None:
    """The checkpoint's network weights into `model` (`--weights_from`): the metrics' states (the best accuracy
    so far) stay fresh, as the optimizer, schedule and epoch count do, for a run of its own."""
    checkpoint = read_checkpoint(path)
    check_fits(checkpoint, path, model)
    weights = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
    if not weights:
        raise UserError(f"checkpoint {str(path)!r} holds no network weights (no net.* tensors); {HINT}")
    model.load_state_dict(weights, strict=False)
