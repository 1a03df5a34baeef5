"""MNIST: 70,000 handwritten digits, 28x28 grayscale, in IDX files (torchvision's layout and downloader).

The model for a data set of named files: say where the files are, how to read a split, what the images are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset
from torchvision.datasets import MNIST
from torchvision.transforms import v2

from proj.data.base import ImageDataModule, Split, TensorSplit
from proj.data.idx import read_idx_shape
from proj.errors import UserError

MEAN, STD = 0.1307, 0.3081  # of the 60,000 training images, pixels scaled to [0, 1]
# Rotations and shifts keep a digit's identity; flips do not (a mirrored 2 is no 2).
AUGMENT = {"degrees": 10.0, "translate": 0.1}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNISTDataModule(ImageDataModule):
    """MNIST's 60,000 training images split into train and val; its official 10,000 for test.

    Args:
        data_dir: folder holding `MNIST/raw/*-ubyte` (torchvision's layout); downloaded there if absent.
        download: fetch missing files with torchvision; off for machines without internet.
        **kwargs: batch size, split, augmentation and pipeline: see `ImageDataModule`.
    """

    dataset_class: ClassVar[type[MNIST]] = MNIST  # torchvision's reader and downloader for these files
    AUGMENT = AUGMENT
    DIGITS = True
    MEAN = (MEAN,)
    STD = (STD,)
    CLASS_NAMES = tuple(str(digit) for digit in range(10))
    INPUT_SHAPE = (1, 28, 28)

    def __init__(self, data_dir: str | Path = "data", download: bool = True, **kwargs: Any) -> None:
        data_dir = str(data_dir)  # hparams stay plain data: a Path would not load with weights_only=True
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / self.dataset_class.__name__ / "raw"

    @property
    def cache_path(self) -> Path:
        return self.raw_dir.parent / "resident-uint8.pt"

    def sources(self) -> list[Path]:
        return [self.raw_dir / name for files in SPLIT_FILES.values() for name in files]

    def resident_bytes(self) -> int:
        return 70_000 * 28 * 28

    def check(self) -> None:
        self.missing()

    def missing(self) -> list[str]:
        """Fail on a bad data_dir, bad files or a too large val_size; return the files still to download."""
        if self.data_dir.is_file():
            raise UserError(f"data_dir {str(self.data_dir)!r} is a file; point --data.data_dir at a folder.")
        missing = [path.name for path in self.sources() if not path.is_file()]
        if missing and not self.hparams["download"]:
            raise self._not_found(missing, "downloading is off (--data.download false)")
        if not missing:
            self.val_count(self._check_files("train"))
            self._check_files("test")
        return missing

    def prepare_data(self) -> None:
        """Download once per machine, before `setup` runs in every process."""
        if missing := self.missing():
            try:
                for train in (True, False):
                    self.dataset_class(self.data_dir, train=train, download=True)
            except (RuntimeError, OSError) as err:
                raise self._not_found(missing, f"the download failed ({str(err).splitlines()[0]})") from err
            self.missing()
        super().prepare_data()

    def _not_found(self, missing: list[str], reason: str) -> UserError:
        name = self.dataset_class.__name__
        return UserError(
            f"{name} not found: {self.raw_dir} lacks {', '.join(missing)}, and {reason}. "
            f"Point --data.data_dir at a folder holding {name}/raw/ with the four *-ubyte files, "
            "or run once with internet access to download them there."
        )

    def _check_files(self, split: str) -> int:
        """Header checks that name the bad file if there is one; the split's image count."""
        images, labels = (self.raw_dir / name for name in SPLIT_FILES[split])
        missing = [path.name for path in (images, labels) if not path.is_file()]
        if missing:
            raise self._not_found(missing, "setup() ran without prepare_data() to download them")
        count, labels_count = read_idx_shape(images, ndim=3)[0], read_idx_shape(labels, ndim=1)[0]
        if count != labels_count:
            raise UserError(
                f"{images} holds {count} images but {labels} holds {labels_count} labels; "
                "the files come from different sets. Replace both with matching originals."
            )
        return count

    def _load(self, split: Split, transform: v2.Transform | None = None) -> MNIST:
        """torchvision's reader, after the header checks."""
        self._check_files("test" if split == "test" else "train")
        return self.dataset_class(self.data_dir, train=split != "test", transform=transform)

    def read_split(self, split: Split) -> TensorSplit | None:
        if split == "val":
            return None  # split off the training images
        dataset = self._load(split)
        return dataset.data.unsqueeze(1), dataset.targets

    def dataset(self, split: Split, transform: v2.Transform) -> Dataset | None:
        return None if split == "val" else self._load(split, transform)
