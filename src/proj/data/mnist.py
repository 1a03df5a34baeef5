"""MNIST as a LightningDataModule: where the files live, how they are split, transformed and batched."""

from __future__ import annotations

import copy
import os
import pickle
import warnings
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import MNIST
from torchvision.transforms import v2

from proj.data.idx import read_idx_shape
from proj.data.resident import ResidentLoader
from proj.errors import UserError

MEAN, STD = 0.1307, 0.3081  # of the 60,000 training images, pixels scaled to [0, 1]
# Rotations and shifts keep a digit's identity; flips do not (a mirrored 2 is no 2).
AUGMENT = {"degrees": 10.0, "translate": 0.1}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


TensorSplit = tuple[Tensor, Tensor]  # uint8 images (N, 28, 28) and int64 labels (N,)
Split = Dataset[tuple[Tensor, int]] | TensorSplit


class MNISTDataModule(LightningDataModule):
    """Train/val split of the 60,000 training images (seeded, disjoint); the official 10,000 for test.

    Two pipelines, same images, labels and normalisation:
    - "resident" (default): each split is one uint8 tensor on the training device (decoded once into a
      cache file beside the data); batches are index slices, augmented and normalised whole on the device,
      in an order drawn from (seed, epoch). Epochs are then bound by the model's compute.
    - "torchvision": torchvision's MNIST dataset with per-sample transforms v2 in a DataLoader, the classic
      pipeline to compare with, and the pattern to follow for data that does not fit in memory.

    Args:
        data_dir: folder holding `MNIST/raw/*-ubyte` (torchvision's layout); downloaded there if absent.
        batch_size: images per optimizer step (and per evaluation batch).
        val_size: training images held out for validation.
        augment: random small rotations and shifts of training images, drawn anew every epoch.
        augment_scale: when augmenting, also zoom each image by a random factor in [1 - s, 1 + s]: digits
            are written at different sizes, and the test set's writers are not the training set's.
        pipeline: "resident" or "torchvision", see above.
        num_workers: loader subprocesses decoding images while the model trains (torchvision pipeline).
        pin_memory: page-locked batches, for faster copies to a GPU (torchvision pipeline).
        persistent_workers: keep loader workers alive between epochs (torchvision pipeline).
        download: fetch missing files with torchvision; off for machines without internet.
        split_seed: seed of the train/val split, independent of the training seed.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        augment: bool = False,
        augment_scale: float = 0.0,
        pipeline: Literal["resident", "torchvision"] = "resident",
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        download: bool = True,
        split_seed: int = 42,
    ) -> None:
        super().__init__()
        data_dir = str(data_dir)  # hparams stay plain data: a Path would not load with weights_only=True
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}: set --data.batch_size.")
        if val_size < 1:
            raise UserError(f"val_size must be at least 1, got {val_size}: set --data.val_size.")
        if not 0 <= augment_scale < 1:
            raise UserError(f"augment_scale must be in [0, 1), got {augment_scale}: set --data.augment_scale.")
        if persistent_workers and num_workers < 1:
            raise UserError("persistent_workers needs num_workers >= 1: set --data.num_workers.")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.train_set: Split | None = None
        self.val_set: Split | None = None
        self.test_set: Split | None = None
        self._train_loader: DataLoader | ResidentLoader | None = None
        self._resume_at: dict[int, int] = {}  # from a checkpoint: {epoch: batches already trained}

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "MNIST" / "raw"

    @property
    def cache_path(self) -> Path:
        return self.data_dir / "MNIST" / "resident-uint8.pt"

    @property
    def augmentation(self) -> dict[str, float] | None:
        """The random affine moves of training images (`random_affine`'s arguments), or None without them."""
        if not self.hparams["augment"]:
            return None
        return {**AUGMENT, "scale": self.hparams["augment_scale"]}

    def transform(self, train: bool) -> v2.Transform:
        """Pixels to normalised float tensors; training images first get random small affine moves."""
        steps: list[v2.Transform] = [v2.ToImage()]
        if train and (moves := self.augmentation) is not None:
            translate, scale = (moves["translate"],) * 2, (1 - moves["scale"], 1 + moves["scale"])
            steps.append(v2.RandomAffine(degrees=moves["degrees"], translate=translate, scale=scale))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([MEAN], [STD])]
        return v2.Compose(steps)

    def check(self) -> list[str]:
        """Fail on a bad data_dir, bad files or a too large val_size; return the files still to download.

        Cheap (headers only), so the CLI runs it before a run writes anything.
        """
        if self.data_dir.is_file():
            raise UserError(f"data_dir {str(self.data_dir)!r} is a file; point --data.data_dir at a folder.")
        missing = [name for files in SPLIT_FILES.values() for name in files if not (self.raw_dir / name).is_file()]
        if missing and not self.hparams["download"]:
            raise self._not_found(missing, "downloading is off (--data.download false)")
        if not missing:
            train_count = self._check_files("train")
            self._check_files("test")
            if self.hparams["val_size"] >= train_count:
                raise self._val_size_error(train_count)
        return missing

    def prepare_data(self) -> None:
        """Download once per machine, before `setup` runs in every process."""
        if missing := self.check():
            try:
                for train in (True, False):
                    MNIST(self.data_dir, train=train, download=True)
            except (RuntimeError, OSError) as err:
                raise self._not_found(missing, f"the download failed ({str(err).splitlines()[0]})") from err
            self.check()
        if self.hparams["pipeline"] == "resident":
            self._decoded()  # build the cache once, here, rather than in every process's setup

    def _not_found(self, missing: list[str], reason: str) -> UserError:
        return UserError(
            f"MNIST not found: {self.raw_dir} lacks {', '.join(missing)}, and {reason}. "
            "Point --data.data_dir at a folder holding MNIST/raw/ with the four *-ubyte files, "
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

    def _val_size_error(self, count: int) -> UserError:
        return UserError(
            f"val_size {self.hparams['val_size']} leaves no training images out of {count}: lower --data.val_size."
        )

    def _load(self, split: str, train_transform: bool) -> MNIST:
        """torchvision's reader, after the header checks."""
        self._check_files(split)
        return MNIST(self.data_dir, train=split == "train", transform=self.transform(train_transform))

    def _decoded(self) -> dict[str, TensorSplit]:
        """Both splits as uint8 tensors, from the cache file when it matches the IDX files, else decoded.

        The cache is the "pre-transform": decoding happens once, not per run. It is rebuilt when a source
        file changes (size or modification time), written atomically, and skipped where the data folder
        is read-only.
        """
        sources = [self.raw_dir / name for files in SPLIT_FILES.values() for name in files]
        fingerprint = [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in sources if path.exists()]
        try:
            cached = torch.load(self.cache_path, weights_only=True)
            if cached["fingerprint"] == fingerprint:
                return cached["splits"]
        except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError):
            pass  # absent, stale or unreadable: decode again
        splits = {}
        for split in SPLIT_FILES:
            dataset = self._load(split, train_transform=False)
            splits[split] = (dataset.data, dataset.targets)
        partial = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.partial")
        try:
            torch.save({"fingerprint": fingerprint, "splits": splits}, partial)
            os.replace(partial, self.cache_path)  # readers see the old file or the whole new one
        except (OSError, RuntimeError):  # a read-only folder: torch.save raises RuntimeError
            partial.unlink(missing_ok=True)
        return splits

    def split_indices(self, count: int) -> tuple[Tensor, Tensor]:
        """Indices of the training and the validation images, seeded by `split_seed`."""
        val_size = self.hparams["val_size"]
        if val_size >= count:
            raise self._val_size_error(count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.hparams["split_seed"]))
        return order[val_size:], order[:val_size]

    def setup(self, stage: str) -> None:
        if self.hparams["pipeline"] == "resident":
            self._setup_resident(stage)
        else:
            self._setup_torchvision(stage)

    def _setup_resident(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        fit = stage in ("fit", "validate") and self.train_set is None
        test = stage in ("test", "predict") and self.test_set is None
        splits = self._decoded() if fit or test else {}
        if fit:
            images, labels = splits["train"]
            train, val = self.split_indices(len(images))
            self.train_set = (images[train].to(device), labels[train].to(device))
            self.val_set = (images[val].to(device), labels[val].to(device))
        if test:
            images, labels = splits["test"]
            self.test_set = (images.to(device), labels.to(device))

    def _setup_torchvision(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train_set is None:
            train_images = self._load("train", train_transform=True)
            val_images = copy.copy(train_images)  # shares the decoded tensors, without augmentation
            val_images.transform = self.transform(train=False)
            train, val = self.split_indices(len(train_images))
            self.train_set = Subset(train_images, train.tolist())
            self.val_set = Subset(val_images, val.tolist())
        if stage in ("test", "predict") and self.test_set is None:
            self.test_set = self._load("test", train_transform=False)

    def _loader(self, split: Split | None, train: bool = False, labels: bool = True) -> DataLoader | ResidentLoader:
        if split is None:
            raise RuntimeError("call setup() with the matching stage before asking for its loader")
        if isinstance(split, tuple):
            images, targets = split
            return ResidentLoader(
                images,
                targets if labels else None,
                batch_size=self.batch_size,
                mean=MEAN,
                std=STD,
                shuffle=train,
                augment=self.augmentation if train else None,
                seed=torch.initial_seed(),  # follows seed_everything
                rank=self.trainer.global_rank if self.trainer is not None else 0,
                world_size=self.trainer.world_size if self.trainer is not None else 1,
            )
        return DataLoader(
            split if labels else ImagesOnly(split),
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.hparams["num_workers"],
            pin_memory=self.hparams["pin_memory"],
            persistent_workers=self.hparams["persistent_workers"],
        )

    def train_dataloader(self) -> DataLoader | ResidentLoader:
        self._train_loader = self._loader(self.train_set, train=True)
        if isinstance(self._train_loader, ResidentLoader):
            self._train_loader.resume_at, self._resume_at = self._resume_at, {}
        return self._train_loader

    def state_dict(self) -> dict[str, int]:
        """Where the training epoch stands, saved in every checkpoint (resident pipeline).

        A fit resumed from a mid-epoch checkpoint (SIGTERM) then goes on with the batches that epoch had not
        trained on, as an uninterrupted run would; Lightning alone would replay the epoch from its start.
        """
        if not isinstance(self._train_loader, ResidentLoader):
            return {}
        return {"epoch": self._train_loader.epoch, "batches": self._train_loader.position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        # Lightning warns that a mid-epoch resume replays batches unless the *loader* is stateful; ours resumes.
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")
        self._resume_at = {state_dict["epoch"]: state_dict["batches"]}
        if isinstance(self._train_loader, ResidentLoader):  # built before the restore (some strategies)
            self._train_loader.resume_at = self._resume_at

    def val_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.test_set, labels=False)


class ImagesOnly(Dataset[Tensor]):
    """A labelled dataset with its labels dropped: what prediction sees."""

    def __init__(self, dataset: Dataset[tuple[Tensor, int]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset[index][0]
