"""Fashion-MNIST: 70,000 photos of clothing in ten classes, 28x28 grayscale, in MNIST's file format and layout."""

from __future__ import annotations

from typing import Any, ClassVar

from torchvision.datasets import MNIST, FashionMNIST

from proj.data.mnist import MNISTDataModule


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST's 60,000 training images split into train and val; its official 10,000 for test.

    Args:
        data_dir: folder holding `FashionMNIST/raw/*-ubyte` (torchvision's layout); downloaded there if absent.
        download: fetch missing files with torchvision; off for machines without internet.
        **kwargs: batch size, split, augmentation and pipeline: see `ImageDataModule`.
    """

    dataset_class: ClassVar[type[MNIST]] = FashionMNIST
    # A mirrored shirt is still a shirt, and garments sit a few pixels off centre: flips and padded crops.
    AUGMENT: ClassVar[dict[str, Any]] = {"flip": True, "crop": 2}
    DIGITS = False
    MEAN = (0.2860,)  # of the 60,000 training images
    STD = (0.3530,)
    CLASS_NAMES = tuple(FashionMNIST.classes)
