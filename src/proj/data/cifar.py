"""CIFAR-10: 60,000 32x32 colour photos in ten classes, in the "python version" batches (torchvision's layout)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from proj.data.base import ImageDataModule, Split, TensorSplit
from proj.errors import UserError

FOLDER = "cifar-10-batches-py"
SPLIT_FILES = {"train": tuple(f"data_batch_{number}" for number in range(1, 6)), "test": ("test_batch",)}
SIDE = 32


class NumpyOnlyUnpickler(pickle.Unpickler):
    """The batches are pickles of numpy arrays and lists: allow those, refuse any other global (code to run)."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10's 50,000 training images split into train and val; its official 10,000 for test.

    Args:
        data_dir: folder holding `cifar-10-batches-py/` (torchvision's layout); downloaded there if absent.
        download: fetch missing files with torchvision; off for machines without internet.
        **kwargs: batch size, split, augmentation and pipeline: see `ImageDataModule`.
    """

    # The classic CIFAR augmentation: mirror images, and crop 32x32 from the image padded by 4 pixels.
    AUGMENT: ClassVar[dict[str, Any]] = {"flip": True, "crop": 4}
    CLASS_NAMES = (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    )  # fmt: skip
    INPUT_SHAPE = (3, SIDE, SIDE)
    MEAN = (0.4914, 0.4822, 0.4465)  # of the 50,000 training images
    STD = (0.2470, 0.2435, 0.2616)

    def __init__(self, data_dir: str | Path = "data", download: bool = True, **kwargs: Any) -> None:
        data_dir = str(data_dir)  # hparams stay plain data: a Path would not load with weights_only=True
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)

    @property
    def folder(self) -> Path:
        return self.data_dir / FOLDER

    @property
    def cache_path(self) -> Path:
        return self.folder / "resident-uint8.pt"

    def sources(self) -> list[Path]:
        return [self.folder / name for files in SPLIT_FILES.values() for name in files]

    def resident_bytes(self) -> int:
        return 60_000 * 3 * SIDE * SIDE

    def check(self) -> None:
        if self.data_dir.is_file():
            raise UserError(f"data_dir {str(self.data_dir)!r} is a file; point --data.data_dir at a folder.")
        missing = [path.name for path in self.sources() if not path.is_file()]
        if missing and not self.hparams["download"]:
            raise self._not_found(missing, "downloading is off (--data.download false)")
        if not missing:  # unlike MNIST's headers, a batch must be read to be checked: read once, into the cache
            self.val_count(len(self.decoded()["train"][1]))

    def prepare_data(self) -> None:
        """Download once per machine (torchvision checks the files' checksums), before `setup` runs in every process."""
        self.check()
        if missing := [path.name for path in self.sources() if not path.is_file()]:
            try:
                CIFAR10(self.data_dir, train=True, download=True)
            except (RuntimeError, OSError) as err:
                raise self._not_found(missing, f"the download failed ({str(err).splitlines()[0]})") from err
        super().prepare_data()

    def _not_found(self, missing: list[str], reason: str) -> UserError:
        return UserError(
            f"CIFAR-10 not found: {self.folder} lacks {', '.join(missing)}, and {reason}. Point --data.data_dir at a "
            f"folder holding {FOLDER}/ (the python version of CIFAR-10), or run once with internet access."
        )

    def read_split(self, split: Split) -> TensorSplit | None:
        if split == "val":
            return None  # split off the training images
        parts = [self._read_batch(self.folder / name) for name in SPLIT_FILES[split]]
        images, labels = zip(*parts, strict=True)
        return torch.cat(images), torch.cat(labels)

    def _read_batch(self, path: Path) -> TensorSplit:
        """One batch file: a pickled dict with `data` (N, 3072) uint8 rows, R then G then B planes, and `labels`."""
        fix = "Delete it so it is downloaded again, or replace it with the original file."
        if not path.is_file():
            raise self._not_found([path.name], "setup() ran without prepare_data() to download them")
        try:
            with path.open("rb") as file:
                batch = NumpyOnlyUnpickler(file, encoding="latin1").load()
            data, labels = np.asarray(batch["data"], dtype=np.uint8), torch.tensor(batch["labels"], dtype=torch.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(
                f"{path} is truncated or not a CIFAR-10 batch ({type(err).__name__}: {err}). {fix}"
            ) from err
        if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or len(data) != len(labels):
            raise UserError(
                f"{path} is corrupt: {list(data.shape)} pixels for {len(labels)} labels, expected (N, 3072). {fix}"
            )
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.CLASS_NAMES):
            raise UserError(f"{path} is corrupt: labels outside 0..9. {fix}")
        return torch.from_numpy(data.copy()).reshape(-1, 3, SIDE, SIDE), labels
