"""Image data sets as LightningDataModules, chosen with `--data NAME`. Add a data set as a module here: a subclass
of `ImageDataModule` (see mnist.py), exported below."""

from proj.data.base import ImageDataModule
from proj.data.cifar import CIFAR10DataModule
from proj.data.fashion_mnist import FashionMNISTDataModule
from proj.data.folder import ImageFolderDataModule
from proj.data.mnist import MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
]
