"""Your own images: a folder per class, the layout of torchvision's ImageFolder.

root/train/<class>/*.png|jpg|jpeg|bmp...  required: the class names are these folder names (the suffixes read:
                                          images.SUFFIXES; other files are skipped, and counted in one line)
root/val/<class>/*                        optional: else `val_size` of train/ is held out (seeded)
root/test/<class>/*                       optional: else `proj.fit` skips its test
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from proj.data.base import ImageDataModule, Split, TensorSplit, channel_stats
from proj.data.images import SUFFIXES, image_files, is_deep_gray, read_image, say_skipped
from proj.errors import UserError

STATS_SAMPLE = 1000  # training images that the streaming pipeline measures mean and std on
ASPECT_TOLERANCE = 0.02  # aspect ratios this close (relatively) to the median one count as the same


def default_size(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], str | None]:
    """The (height, width) to make images of these sizes, and why, when they vary: the size shared by most (more
    than half) of them, with no reason given; else their median side (the median of sqrt(height * width)), rounded,
    as a square, or at the aspect ratio most of them share (within ASPECT_TOLERANCE of the median ratio) when that
    is not square: a size a user would pick, where the most common of many sizes may be any one image's."""
    common, times = Counter(sizes).most_common(1)[0]
    if times > len(sizes) / 2:
        return common, None
    side = float(statistics.median([math.sqrt(height * width) for height, width in sizes]))
    aspects = [width / height for height, width in sizes]
    aspect = float(statistics.median(aspects))
    shared = sum(abs(ratio / aspect - 1) <= ASPECT_TOLERANCE for ratio in aspects) > len(sizes) / 2
    if shared and abs(aspect - 1) > ASPECT_TOLERANCE:
        size = (max(1, round(side / math.sqrt(aspect))), max(1, round(side * math.sqrt(aspect))))
        how = f"their median size, at the aspect ratio most of them share (width:height {aspect:.2f})"
    else:
        size = (max(1, round(side)),) * 2
        how = "their median side, square as " + ("most of them are" if shared else "their aspect ratios vary")
    reason = (
        f"image sizes vary (no size is shared by more than half of the {len(sizes)} images): using "
        f"--data.image_size {size[0]} {size[1]}, {how}. Pass --data.image_size H W to choose another."
    )
    return size, reason


class ImageFolderDataModule(ImageDataModule):
    """Images in class folders (see above), of any sizes and modes, made one shape: resized to cover
    `image_size` and centre-cropped to it, as grayscale or RGB. Mean and std are measured on the training split.

    Augmentation is off unless asked for: the template cannot know which moves keep your classes.
    `--data.augment true` crops at random from the image padded by an eighth of its side (and zooms by
    `augment_scale`); `--data.flip true` also mirrors images left-right.

    Args:
        root: the folder holding train/ (and optionally val/ and test/).
        image_size: (height, width), or one side for square images; default: the size most (more than half) of
            the images have; when no size is that common, their median side (of sqrt(height * width)), rounded, as
            a square, or at the aspect ratio most of them share, said in one line.
        channels: 1 (grayscale) or 3 (RGB); default: 1 when every image is grayscale, else 3.
        flip: mirror training images left-right at random (only where a mirrored image keeps its class).
        **kwargs: batch size, split (`val_size`: 10% of train/ by default, when there is no val/), augmentation
            and pipeline: see `ImageDataModule`.
    """

    VAL_SIZE: ClassVar[int | float] = 0.1  # a fraction: folders come in every size

    def __init__(
        self,
        root: str | Path = "data/images",
        image_size: int | tuple[int, int] | None = None,
        channels: Literal[1, 3] | None = None,
        flip: bool = False,
        **kwargs: Any,
    ) -> None:
        root = str(root)  # hparams stay plain data: a Path would not load with weights_only=True
        super().__init__(**kwargs)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if image_size is not None and min(image_size) < 1:
            raise UserError(f"image_size must be positive, got {list(image_size)}: set --data.image_size H W.")
        self.root = Path(root)
        self._size = image_size
        self._channels = channels
        self._files: dict[str, list[tuple[Path, int]]] | None = None
        self._classes: list[str] | None = None
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._header_list: list[tuple[str, tuple[int, int]]] | None = None

    @property
    def augmentation(self) -> dict[str, Any] | None:
        moves: dict[str, Any] = {}
        if self.hparams["augment"]:
            moves.update(crop=max(1, min(self.input_shape[1:]) // 8), scale=self.hparams["augment_scale"])
        if self.hparams["flip"]:
            moves["flip"] = True
        return {"scale": 0.0, **moves} if moves else None

    # The folder, scanned once.

    def files(self) -> dict[str, list[tuple[Path, int]]]:
        """(image file, class index) per split folder present, sorted; the checks on the layout on the way."""
        if self._files is None:
            train = self.root / "train"
            if not self.root.is_dir():
                what = "is a file" if self.root.is_file() else "does not exist"
                raise UserError(f"--data.root {str(self.root)!r} {what}: point it at a folder holding train/<class>/.")
            if not train.is_dir():
                raise UserError(
                    f"--data.root {str(self.root)!r} has no train/ folder: put the training images in "
                    f"{train}/<class name>/ (one folder per class), optionally val/ and test/ beside it."
                )
            classes = sorted(
                entry.name for entry in train.iterdir() if entry.is_dir() and not entry.name.startswith(".")
            )
            if len(classes) < 2:
                found = f"only the class {classes[0]!r}" if classes else "no class folders"
                raise UserError(
                    f"{train} holds {found}: a classifier needs at least 2 classes, one folder each ({train}/<class>/)."
                )
            self._classes = classes
            files: dict[str, list[tuple[Path, int]]] = {}
            skipped: list[Path] = []
            for split in ("train", "val", "test"):
                if (self.root / split).is_dir():
                    files[split] = self._list(split, classes, skipped)
            say_skipped(skipped)
            self._files = files
        return self._files

    def _list(self, split: str, classes: list[str], skipped: list[Path]) -> list[tuple[Path, int]]:
        folder = self.root / split
        unknown = sorted(
            entry.name
            for entry in folder.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in classes
        )
        if unknown:
            raise UserError(f"{folder} has classes that train/ lacks: {', '.join(unknown)}. Give train/ those folders.")
        found = []
        for index, name in enumerate(classes):
            images = image_files(folder / name, skipped)
            if split == "train" and not images:
                raise UserError(
                    f"class folder {folder / name} has no image files ({', '.join(SUFFIXES)}): add images or remove it."
                )
            found += [(path, index) for path in images]
        return found

    def _headers(self) -> list[tuple[str, tuple[int, int]]]:
        """Mode and (height, width) of every image, from its header, read once; an unreadable file is named."""
        if self._header_list is not None:
            return self._header_list
        headers = []
        for split in self.files().values():
            for path, _ in split:
                try:
                    with Image.open(path) as image:
                        headers.append((image.mode, (image.height, image.width)))
                except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                    raise UserError(
                        f"{path} is not a readable image ({type(err).__name__}): repair or remove the file."
                    ) from err
        self._header_list = headers
        return headers

    def check(self) -> None:
        headers = self._headers()  # names a file that is no image; a truncated one is found when it is decoded
        if self._size is None or self._channels is None:
            self._infer_shape(headers)
        if "val" not in self.files():
            self.val_count(len(self.files()["train"]))

    def _infer_shape(self, headers: list[tuple[str, tuple[int, int]]] | None = None) -> None:
        headers = self._headers() if headers is None else headers
        if self._channels is None:
            self._channels = 1 if all(mode in ("1", "L") or is_deep_gray(mode) for mode, _ in headers) else 3
        if self._size is None:
            self._size, reason = default_size([size for _, size in headers])
            if reason is not None:
                rank_zero_info(f"{type(self).__name__}: {reason}")

    # What the data set is.

    @property
    def class_names(self) -> tuple[str, ...]:
        self.files()
        assert self._classes is not None
        return tuple(self._classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self._size is None or self._channels is None:
            self.files()
            self._infer_shape()
        assert self._size is not None and self._channels is not None
        return (self._channels, *self._size)

    def statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training split (all of it when resident, else a seeded sample)."""
        if self._stats is None:
            if isinstance(self.train_set, tuple):
                images = self.train_set[0]
            else:
                train = self.files()["train"]
                indices = self.split_indices(len(train))[0] if "val" not in self.files() else torch.arange(len(train))
                sample = indices[
                    torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE]
                ]
                images = torch.stack([self._read(train[index][0]) for index in sample.tolist()])
            self._stats = channel_stats(images)
        return self._stats

    def has_test_split(self) -> bool:
        return "test" in self.files()

    # Reading.

    @property
    def cache_path(self) -> Path:
        channels, height, width = self.input_shape
        return self.root / f".resident-{channels}x{height}x{width}.pt"

    def sources(self) -> list[Path]:
        return [path for split in self.files().values() for path, _ in split]

    def resident_bytes(self) -> int:
        return sum(len(split) for split in self.files().values()) * int(torch.tensor(self.input_shape).prod())

    def _read(self, path: Path) -> Tensor:
        channels, height, width = self.input_shape
        return read_image(path, channels, (height, width))

    def read_split(self, split: Split) -> TensorSplit | None:
        if split not in self.files():
            return None
        files = self.files()[split]
        images = torch.stack([self._read(path) for path, _ in files])
        return images, torch.tensor([label for _, label in files], dtype=torch.int64)

    def dataset(self, split: Split, transform: v2.Transform) -> Dataset | None:
        if split not in self.files():
            return None
        channels, height, width = self.input_shape
        return ImageFiles(self.files()[split], partial(read_image, channels=channels, size=(height, width)), transform)


class ImageFiles(Dataset[tuple[Any, int]]):
    """(file, label) pairs read and transformed one at a time, in loader workers: memory stays flat."""

    def __init__(self, files: list[tuple[Path, int]], read: Callable[[Path], Tensor], transform: v2.Transform) -> None:
        self.files, self.read, self.transform = files, read, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.files[index]
        return self.transform(self.read(path)), label
