"""Datasets as LightningDataModules. Add a dataset as a new module here, exporting its DataModule."""

from proj.data.mnist import MNISTDataModule

__all__ = ["MNISTDataModule"]
