"""Small, learnable stand-ins for the data sets in their real file layouts, for tests and offline benchmarks.

Each class is a bright patch at its own place on a noisy background, so a model learns it in a few steps.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from PIL import Image

from proj.data.idx import write_idx

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_synthetic_mnist(root: str | Path, num_train: int = 1000, num_test: int = 200, seed: int = 0) -> Path:
    """Write `root/MNIST/raw/*-ubyte` with one noisy bright patch per class, so models can learn it.

    Returns `root`, ready to pass as `data_dir`.
    """
    _write_idx_patches(Path(root) / "MNIST" / "raw", num_train, num_test, seed)
    return Path(root)


def write_synthetic_fashion_mnist(root: str | Path, num_train: int = 1000, num_test: int = 200, seed: int = 0) -> Path:
    """Write `root/FashionMNIST/raw/*-ubyte` (MNIST's format, Fashion-MNIST's folder), learnable like
    `write_synthetic_mnist`. Returns `root`, ready to pass as `data_dir`."""
    _write_idx_patches(Path(root) / "FashionMNIST" / "raw", num_train, num_test, seed)
    return Path(root)


def _write_idx_patches(raw: Path, num_train: int, num_test: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = torch.arange(count) % 10
        labels = labels[torch.randperm(count, generator=generator)]
        images = torch.randint(0, 60, (count, 28, 28), generator=generator)
        rows, cols = 4 + 8 * (labels // 4), 2 + 6 * (labels % 4)  # a 3x4 grid of patch positions
        for image, row, col in zip(images, rows.tolist(), cols.tolist(), strict=True):
            image[row : row + 6, col : col + 6] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def synthetic_cifar10_split(count: int, generator: torch.Generator) -> tuple[np.ndarray, list[int]]:
    """`count` 3x32x32 images as CIFAR-10 rows (N, 3072: the R, G, B planes) and their labels: a bright patch
    per class on a 3x4 grid, in a colour of its own, over dim noise."""
    labels = (torch.arange(count) % 10)[torch.randperm(count, generator=generator)]
    images = torch.randint(0, 60, (count, 3, 32, 32), generator=generator)
    for image, label in zip(images, labels.tolist(), strict=True):
        row, col = 2 + 10 * (label // 4), 2 + 8 * (label % 4)
        image[:, row : row + 6, col : col + 6] = 128
        image[label % 3, row : row + 6, col : col + 6] = 255
    return images.to(torch.uint8).reshape(count, -1).numpy(), labels.tolist()


class _Python2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 did its `str` (BINSTRING), as in the original CIFAR-10 files: loaded with
    `encoding="latin1"` they come back as text, which numpy takes as an array's raw data. (Python 3's protocol 2
    instead pickles bytes as a call of `_codecs.encode`, which a numpy-only unpickler rightly refuses.)"""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)  # type: ignore[attr-defined]
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)  # type: ignore[attr-defined]
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[bytes] = save_bytes


def python2_pickle(obj: object) -> bytes:
    """`obj` pickled the way Python 2 wrote the CIFAR-10 batches (protocol 2, bytes as `str`)."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_synthetic_cifar10(root: str | Path, num_train: int = 500, num_test: int = 100, seed: int = 0) -> Path:
    """Write `root/cifar-10-batches-py/` in the real format (`write_cifar10_batches`) with learnable synthetic
    images (`synthetic_cifar10_split`). Returns `root`, ready to pass as `data_dir`."""
    generator = torch.Generator().manual_seed(seed)
    train = synthetic_cifar10_split(num_train, generator)
    return write_cifar10_batches(root, train, synthetic_cifar10_split(num_test, generator))


def write_cifar10_batches(
    root: str | Path, train: tuple[np.ndarray, list[int]], test: tuple[np.ndarray, list[int]]
) -> Path:
    """Write `root/cifar-10-batches-py/` in the real format: data_batch_1..5 (the `train` rows split in five),
    test_batch and batches.meta, each a plain dict pickled as Python 2 wrote the original files (`data` a uint8
    array (N, 3072), the R, G, B planes of each image, `labels` a list of ints). Returns `root`, ready to pass
    as `data_dir`."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    data, labels = train
    bounds = [round(len(labels) * part / 5) for part in range(6)]
    batches = {
        f"data_batch_{n}": (data[bounds[n - 1] : bounds[n]], labels[bounds[n - 1] : bounds[n]]) for n in range(1, 6)
    }
    batches["test_batch"] = test
    for name, (rows, targets) in batches.items():
        batch = {
            "batch_label": f"synthetic {name}",
            "labels": targets,
            "data": rows,
            "filenames": [f"{name}_{index}.png" for index in range(len(targets))],
        }
        (folder / name).write_bytes(python2_pickle(batch))
    meta = {"num_cases_per_batch": bounds[1], "label_names": list(CIFAR_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(python2_pickle(meta))
    return Path(root)


def write_image_folder(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog", "owl"),
    per_class: int | Mapping[str, int] = 10,
    size: tuple[int, int] | Sequence[tuple[int, int]] = (32, 32),
    mode: str = "RGB",
    splits: Sequence[str] = ("train",),
    suffixes: Sequence[str] = (".png",),
    seed: int = 0,
) -> Path:
    """Write `root/<split>/<class>/NNN<suffix>` for each split: `per_class` images per class (a count, or one
    per split), of `size` (H, W), or of the sizes given cycled through image by image, in `mode` ("RGB" or
    "L"), as the `suffixes` cycled through (.png, .jpg, .bmp). Class i is a bright patch in cell i of a grid
    over the image (in a colour of its own in RGB), over noise. Returns `root`, ready to pass as `root`."""
    rng = np.random.default_rng(seed)
    sizes = cast(list[tuple[int, int]], [size] if isinstance(size[0], int) else list(size))
    grid = math.ceil(math.sqrt(len(classes)))
    colours = [(255, 64, 64), (64, 255, 64), (64, 64, 255), (255, 255, 64), (255, 64, 255), (64, 255, 255)]
    number = 0
    for split in splits:
        count = per_class if isinstance(per_class, int) else per_class[split]
        for index, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for item in range(count):
                height, width = sizes[number % len(sizes)]
                suffix = suffixes[number % len(suffixes)]
                number += 1
                pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
                cell_h, cell_w = height / grid, width / grid
                top, left = int((index // grid + 0.25) * cell_h), int((index % grid + 0.25) * cell_w)
                bottom, right = int((index // grid + 0.75) * cell_h), int((index % grid + 0.75) * cell_w)
                pixels[top:bottom, left:right] = colours[index % len(colours)]
                Image.fromarray(pixels).convert(mode).save(folder / f"{item:03d}{suffix}")
    return Path(root)
