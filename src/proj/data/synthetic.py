"""A small, learnable stand-in for MNIST in the real file layout, for tests and offline benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from proj.data.idx import write_idx


def write_synthetic_mnist(root: str | Path, num_train: int = 1000, num_test: int = 200, seed: int = 0) -> Path:
    """Write `root/MNIST/raw/*-ubyte` with one noisy bright patch per class, so models can learn it.

    Returns `root`, ready to pass as `data_dir`.
    """
    generator = torch.Generator().manual_seed(seed)
    raw = Path(root) / "MNIST" / "raw"
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = torch.arange(count) % 10
        labels = labels[torch.randperm(count, generator=generator)]
        images = torch.randint(0, 60, (count, 28, 28), generator=generator)
        rows, cols = 4 + 8 * (labels // 4), 2 + 6 * (labels % 4)  # a 3x4 grid of patch positions
        for image, row, col in zip(images, rows.tolist(), cols.tolist(), strict=True):
            image[row : row + 6, col : col + 6] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)
