"""What every image data set shares: the train/val split, both pipelines, normalisation, augmentation, the
resume position and the input checks. A data set is a subclass that says where its images come from and what
they are (`mnist.py` is the model to copy; `folder.py` reads any folder of images).

A subclass provides:
- `CLASS_NAMES`, `INPUT_SHAPE` (C, H, W), `MEAN`/`STD` (per channel, of pixels scaled to [0, 1]), or properties
  `class_names`, `input_shape` and a method `statistics()` that find them out (see folder.py);
- `check()`: cheap checks of the files (run before anything is written), `prepare_data()` to download;
- `read_split(split)`: a split as uint8 images (N, C, H, W) and int64 labels, for the resident pipeline;
- optionally `dataset(split, transform)`: a per-sample Dataset for the streaming pipeline (the default wraps
  `read_split`'s tensors), and `AUGMENT`: the random moves that keep its images' classes.
"""

from __future__ import annotations

import copy
import errno
import math
import pickle
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.parsing import AttributeDict
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from proj.data.resident import ResidentLoader
from proj.data.streaming import EpochLoader
from proj.errors import UserError
from proj.outputs import atomic_write

Split = Literal["train", "val", "test"]
TensorSplit = tuple[Tensor, Tensor]  # uint8 images (N, C, H, W) and int64 labels (N,)
Pipeline = Literal["auto", "resident", "torchvision"]
CACHE_FORMAT = 3  # bump when the cached tensors change layout: older caches are then rebuilt
# `normalization`: {"mean": [...], "std": [...]} per channel, or a name: the data set's own statistics, ImageNet's.
# (Names as a plain str, checked here: jsonargparse's error for a union with a Literal names no choice.)
Normalization = dict[str, list[float]] | str
NORMALIZATION_NAMES = ("data", "imagenet")
# ImageNet's per-channel statistics, which models pretrained on it expect (timm.data.IMAGENET_DEFAULT_MEAN/STD; not
# imported from there: importing timm takes seconds, and every data module would pay them).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SAME_STATISTICS = 1e-3  # statistics this close are the same normalisation (a folder's are measured, on samples)


class WeightsNormalization(NamedTuple):
    """The normalisation a model's initial weights were trained with: `mean` and `std` per channel (of their training
    images), `source` in words ("resnet18's pretrained weights (timm/resnet18.a1_in1k)"), and whether they are only
    `assumed` (a weights file that does not record them): then any normalisation the user chose is accepted."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    assumed: bool = False


def per_channel(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    """Statistics for `channels` channels: as given when they are that many, one value repeated, or three (RGB)
    averaged for grayscale images (a network pretrained on colour images, its first convolution summed over the
    channels by timm, sees a gray image as equal R, G and B)."""
    if len(values) == channels:
        return tuple(float(value) for value in values)
    if len(values) == 1:
        return (float(values[0]),) * channels
    if channels == 1 and len(values) == 3:
        return (sum(float(value) for value in values) / 3,)
    wanted = "1 value" if channels == 1 else f"{channels} values (one per channel) or 1"
    raise UserError(f"{what}: {len(values)} values per statistic, for {channels}-channel images: give {wanted}.")


class ImageDataModule(LightningDataModule):
    """Train/val split (seeded, disjoint) of the training images, unless the data set has its own val split; the
    data set's test split for test.

    Two pipelines, same images, labels and normalisation:
    - "resident": each split is one uint8 tensor on the training device (decoded once into a cache file);
      batches are index slices, augmented and normalised whole on the device, in an order drawn from (seed,
      epoch). Epochs are then bound by the model's compute.
    - "torchvision": per-sample transforms v2 in a DataLoader (workers decode while the model trains), the
      classic pipeline, and the one for data that does not fit in memory.
    - "auto" (default): resident when the decoded images fit `resident_budget_mb`, else torchvision.

    Args:
        batch_size: images per optimizer step (and per evaluation batch).
        val_size: training images held out for validation: a count, or a fraction of the training images;
            default: the data set's own (`VAL_SIZE`).
        augment: random moves of training images that keep their class (the data set's own: rotations and
            shifts for digits, flips and padded crops for clothing and photos), drawn anew every epoch.
        augment_scale: when augmenting, also zoom each image by a random factor in [1 - s, 1 + s].
        pipeline: "auto", "resident" or "torchvision", see above.
        resident_budget_mb: the most memory (MiB) the resident pipeline's decoded images may take under "auto".
        num_workers: loader subprocesses decoding images while the model trains (torchvision pipeline).
        pin_memory: page-locked batches, for faster copies to a GPU (torchvision pipeline).
        persistent_workers: keep loader workers alive between epochs (torchvision pipeline).
        split_seed: seed of the train/val split, independent of the training seed.
        normalization: the per-channel mean and std images are standardised with, (x - mean) / std: "data" the
            data set's own (its known values; measured on the training split for a folder), "imagenet" ImageNet's
            (what models pretrained on it expect), or {"mean": [...], "std": [...]}; 3 values are averaged for
            grayscale images, 1 serves every channel. Left out (None), the data's own, unless the model's
            initial weights were trained with others: `proj.fit` then sets theirs and says so in one line. A model
            whose weights expect other statistics refuses to train on data normalised otherwise.
    """

    CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
    INPUT_SHAPE: ClassVar[tuple[int, int, int]] = (0, 0, 0)  # (C, H, W)
    MEAN: ClassVar[tuple[float, ...]] = ()  # per channel, of pixels scaled to [0, 1]
    STD: ClassVar[tuple[float, ...]] = ()
    AUGMENT: ClassVar[dict[str, Any]] = {}  # `random_affine`'s arguments for this data set's augmentation
    # None as the flag's default, the data set's own here: jsonargparse keeps a value given for one class when
    # `--data` picks another, so a per-class default in the signature would leak into the next class.
    VAL_SIZE: ClassVar[int | float] = 5000
    DIGITS: ClassVar[bool] = False  # handwritten digits: `proj.predict` then prepares images the way MNIST was made

    def __init__(
        self,
        batch_size: int = 128,
        val_size: int | float | None = None,
        augment: bool = False,
        augment_scale: float = 0.0,
        pipeline: Pipeline = "auto",
        resident_budget_mb: int = 2048,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        split_seed: int = 42,
        normalization: Normalization | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}: set --data.batch_size.")
        val_size = self.VAL_SIZE if val_size is None else val_size
        if not (0 < val_size < 1 if isinstance(val_size, float) else val_size >= 1):
            raise UserError(
                f"val_size must be a count of at least 1 or a fraction in (0, 1), got {val_size}: set --data.val_size."
            )
        if not 0 <= augment_scale < 1:
            raise UserError(f"augment_scale must be in [0, 1), got {augment_scale}: set --data.augment_scale.")
        if persistent_workers and num_workers < 1:
            raise UserError("persistent_workers needs num_workers >= 1: set --data.num_workers.")
        if resident_budget_mb < 0:
            raise UserError(
                f"resident_budget_mb must be >= 0, got {resident_budget_mb}: set --data.resident_budget_mb."
            )
        if isinstance(normalization, dict):
            normalization = check_statistics(normalization)
        elif normalization is not None and normalization not in NORMALIZATION_NAMES:
            raise UserError(
                f"--data.normalization {normalization!r}: use 'data' (the data set's own statistics), 'imagenet', or "
                "{mean: [...], std: [...]} (one value per channel)."
            )
        self.save_hyperparameters()
        self.batch_size, self.val_size = batch_size, val_size
        self.train_set: Dataset | TensorSplit | None = None
        self.val_set: Dataset | TensorSplit | None = None
        self.test_set: Dataset | TensorSplit | None = None
        self._train_loader: EpochLoader | ResidentLoader | None = None
        self._resume_at: dict[int, int] = {}  # from a checkpoint: {epoch: batches already trained}
        self._resident: bool | None = None  # the pipeline chosen, once decided

    # What a data set is: a subclass says, by these constants or by overriding the properties below.

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.CLASS_NAMES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.INPUT_SHAPE

    def statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The data set's own per-channel mean and std, of pixels scaled to [0, 1]."""
        return self.MEAN, self.STD

    # What the images are standardised with: `normalization`'s choice, the data set's own by default.

    @property
    def mean(self) -> tuple[float, ...]:
        return (self.chosen_statistics() or self.statistics())[0]

    @property
    def std(self) -> tuple[float, ...]:
        return (self.chosen_statistics() or self.statistics())[1]

    def chosen_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The statistics `normalization` names, one per channel of the images; None for the data set's own (which
        a folder measures: not done here)."""
        choice = self.hparams["normalization"]
        if choice is None or choice == "data":
            return None
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if choice == "imagenet" else (choice["mean"], choice["std"])
        channels, what = self.input_shape[0], f"--data.normalization {choice}"
        return per_channel(mean, channels, what), per_channel(std, channels, what)

    def check_normalization(self, expected: WeightsNormalization) -> None:
        """Refuse (UserError) to feed a model whose initial weights expect inputs normalised otherwise.

        Assumed statistics (a weights file that records none) give way to any normalisation chosen explicitly.
        """
        choice = self.hparams["normalization"]
        if expected.assumed and choice is not None:
            return
        channels = self.input_shape[0]
        mean, std = (per_channel(values, channels, expected.source) for values in (expected.mean, expected.std))
        if _same(mean, self.mean) and _same(std, self.std):
            return
        how = (
            "ImageNet's"
            if choice == "imagenet"
            else "the statistics given"
            if isinstance(choice, dict)
            else "its own statistics"
        )
        wanted = f"{{mean: {_rounded(mean)}, std: {_rounded(std)}}}"
        raise UserError(
            f"{expected.source} expect inputs normalised with mean {_rounded(mean)} and std {_rounded(std)}, but "
            f"{type(self).__name__} normalises with {how}, mean {_rounded(self.mean)} and std {_rounded(self.std)}: "
            f"set the data's normalization to {wanted} (--data.normalization; proj.fit sets it when the flag is left "
            "out)."
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check(self) -> None:
        """Fail with a UserError on missing or bad files, before a run writes anything. Cheap: headers only."""

    def has_test_split(self) -> bool:
        """Whether there are test images (`proj.fit` skips its test without them)."""
        return True

    def read_split(self, split: Split) -> TensorSplit | None:
        """A split as uint8 images (N, C, H, W) and int64 labels; None when the data set has no such split."""
        raise NotImplementedError

    @property
    def cache_path(self) -> Path | None:
        """Where the decoded splits are cached; None: decode every time."""
        return None

    def sources(self) -> list[Path]:
        """The files the splits are read from: the cache is rebuilt when one changes."""
        return []

    def dataset(self, split: Split, transform: v2.Transform) -> Dataset | None:
        """A split for the torchvision pipeline, transformed per sample by its `transform` attribute (torchvision's
        convention). The default serves decoded tensors."""
        decoded = self.read_split(split)
        return None if decoded is None else TensorImages(*decoded, transform=transform)

    def resident_bytes(self) -> int:
        """The memory the decoded images of every split take (for `pipeline: auto`)."""
        return 0

    @property
    def hparams_initial(self) -> AttributeDict:
        """The settings as logged beside the model's (TensorBoard's HPARAMS tab), as data.* like their flags: a data
        setting then never collides with a model setting of the same name (ImageFolder's and the CNN's channels)."""
        initial = super().hparams_initial
        logged = {key: value for key, value in initial.items() if not key.startswith("_") or key == "_class_path"}
        return AttributeDict({f"data.{key.removeprefix('_')}": value for key, value in logged.items()})

    def identity(self) -> dict[str, Any]:
        """Which data this is: a checkpoint trained on other data does not fit it."""
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
        }

    def description(self) -> dict[str, Any]:
        """What a trained model needs to know of its data, stored in its checkpoints (plain data only)."""
        return {**self.identity(), "mean": list(self.mean), "std": list(self.std), "digits": self.DIGITS}

    # What they share.

    @property
    def augmentation(self) -> dict[str, Any] | None:
        """The random moves of training images (`random_affine`'s arguments), or None without them."""
        if not self.hparams["augment"]:
            return None
        return {**self.AUGMENT, "scale": self.hparams["augment_scale"]}

    def transform(self, train: bool) -> v2.Transform:
        """Pixels to normalised float tensors; training images first get the random moves."""
        steps: list[v2.Transform] = [v2.ToImage()]
        if train and (moves := self.augmentation) is not None:
            if moves.get("flip"):
                steps.append(v2.RandomHorizontalFlip())
            if padding := moves.get("crop", 0):
                steps.append(v2.RandomCrop(list(self.input_shape[1:]), padding=padding))
            degrees, translate, scale = moves.get("degrees", 0.0), moves.get("translate", 0.0), moves["scale"]
            if degrees or translate or scale:
                zoom = (1 - scale, 1 + scale)
                steps.append(v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=zoom))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        return v2.Compose(steps)

    def val_count(self, count: int) -> int:
        """How many of `count` training images validation takes (`val_size` as a count or a fraction)."""
        val_size = self.val_size
        held_out = round(count * val_size) if isinstance(val_size, float) else val_size
        if held_out >= count:
            raise UserError(f"val_size {val_size} leaves no training images out of {count}: lower --data.val_size.")
        return max(1, held_out)

    def split_indices(self, count: int) -> tuple[Tensor, Tensor]:
        """Indices of the training and the validation images, seeded by `split_seed`."""
        val_size = self.val_count(count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.hparams["split_seed"]))
        return order[val_size:], order[:val_size]

    @property
    def resident(self) -> bool:
        """Whether the resident pipeline serves this run; "auto" decides by `resident_budget_mb`, once."""
        if self._resident is None:
            pipeline = self.hparams["pipeline"]
            self._resident = pipeline == "resident"
            if pipeline == "auto":
                size, budget = self.resident_bytes(), self.hparams["resident_budget_mb"] * 2**20
                self._resident = size <= budget
                if not self._resident:
                    rank_zero_info(
                        f"{type(self).__name__}: the decoded images take {size / 2**20:.0f} MiB, over "
                        f"--data.resident_budget_mb {self.hparams['resident_budget_mb']}: using the torchvision "
                        "(streaming) pipeline."
                    )
        return self._resident

    def prepare_data(self) -> None:
        """Download (a subclass's part) once per machine, then build the resident cache once, here, rather than in
        every process's setup."""
        if self.resident:
            self.decoded()

    def decoded(self) -> dict[str, TensorSplit]:
        """Every split the data set has, as uint8 tensors: from the cache file when it matches the sources, else
        read (and cached).

        The cache is the "pre-transform": decoding happens once, not per run. It is rebuilt when a source
        file changes (size or modification time), written atomically, and skipped where the folder is read-only.
        """
        path = self.cache_path
        # A source's last three path parts: the class folder of an image too, not only the file name.
        fingerprint = [CACHE_FORMAT, *(["/".join(file.parts[-3:]), *_stat(file)] for file in self.sources())]
        if path is not None and path.is_file():
            try:
                cached = torch.load(path, weights_only=True)
                if cached["fingerprint"] == fingerprint:
                    if cached["checksum"] == _checksum(cached["splits"]):
                        return cached["splits"]
                    print(f"The cache {path} is damaged (its checksum does not match): rebuilding it.")
            except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError):
                print(f"The cache {path} cannot be read: rebuilding it.")
        splits = {split: decoded for split in ("train", "val", "test") if (decoded := self.read_split(split))}
        if path is not None:
            self._write_cache(path, {"fingerprint": fingerprint, "checksum": _checksum(splits), "splits": splits})
        return splits

    @staticmethod
    def _write_cache(path: Path, content: dict[str, Any]) -> None:
        """Atomically: readers see the old file or the whole new one. A read-only data folder is no error (the
        cache is only saved time); a full disk is, as for any file a run writes."""
        try:  # not synced: a cache torn by a power cut fails its checksum and is rebuilt
            with atomic_write(path, sync=False) as partial:
                torch.save(content, partial)
        except (OSError, RuntimeError) as err:  # torch.save raises RuntimeError for an unwritable file
            if _disk_full(err):
                raise UserError(
                    f"cannot write the data cache {str(path)!r}: no space left on the device; free space, or "
                    "point --data.data_dir at a folder with room."
                ) from err
            print(f"Cannot write the data cache {path} ({err}): decoding again in every run.")

    def setup(self, stage: str) -> None:
        fit = stage in ("fit", "validate") and self.train_set is None
        test = stage in ("test", "predict") and self.test_set is None
        if fit or test:
            if self.resident:
                self._setup_resident(fit, test)
            else:
                self._setup_streaming(fit, test)

    def _setup_resident(self, fit: bool, test: bool) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        splits = self.decoded()
        if fit:
            images, labels = splits["train"]
            if "val" in splits:
                val_images, val_labels = splits["val"]
                self.val_set = (val_images.to(device), val_labels.to(device))
            else:
                train, val = self.split_indices(len(images))
                self.val_set = (images[val].to(device), labels[val].to(device))
                images, labels = images[train], labels[train]
            self.train_set = (images.to(device), labels.to(device))
        if test and "test" in splits:
            test_images, test_labels = splits["test"]
            self.test_set = (test_images.to(device), test_labels.to(device))

    def _setup_streaming(self, fit: bool, test: bool) -> None:
        if fit:
            train = self.dataset("train", self.transform(train=True))
            val = self.dataset("val", self.transform(train=False))
            assert train is not None, "every data set has a training split"
            if val is None:  # held out of train: the same decoded images, without augmentation
                held_out: Any = copy.copy(train)
                held_out.transform = self.transform(train=False)
                train_indices, val_indices = self.split_indices(len(held_out))
                train, val = Subset(train, train_indices.tolist()), Subset(held_out, val_indices.tolist())
            self.train_set, self.val_set = train, val
        if test:
            self.test_set = self.dataset("test", self.transform(train=False))

    def _loader(
        self, split: Dataset | TensorSplit | None, train: bool = False, labels: bool = True
    ) -> DataLoader | ResidentLoader:
        if split is None:
            raise RuntimeError("call setup() with the matching stage before asking for its loader")
        shard = {"rank": 0, "world_size": 1}  # this process's part of the data under DDP: all of it otherwise
        if self.trainer is not None:
            shard = {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}
        seed = torch.initial_seed()  # follows seed_everything
        if isinstance(split, tuple):
            images, targets = split
            return ResidentLoader(
                images,
                targets if labels else None,
                batch_size=self.batch_size,
                mean=self.mean,
                std=self.std,
                shuffle=train,
                augment=self.augmentation if train else None,
                seed=seed,
                **shard,
            )
        workers = {
            "num_workers": self.hparams["num_workers"],
            "pin_memory": self.hparams["pin_memory"],
            "persistent_workers": self.hparams["persistent_workers"],
        }
        if train:
            return EpochLoader(split, self.batch_size, seed, **shard, **workers)
        return DataLoader(split if labels else ImagesOnly(split), batch_size=self.batch_size, **workers)

    def train_dataloader(self) -> EpochLoader | ResidentLoader:
        loader = self._loader(self.train_set, train=True)
        assert isinstance(loader, EpochLoader | ResidentLoader)
        loader.resume_at, self._resume_at = self._resume_at, {}
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, int]:
        """Where the training epoch stands, saved in every checkpoint.

        A fit resumed from a mid-epoch checkpoint (SIGTERM) then goes on with the batches that epoch had not
        trained on, as an uninterrupted run would; Lightning alone would replay the epoch from its start.
        """
        if self._train_loader is None:
            return {}
        return {"epoch": self._train_loader.epoch, "batches": self._train_loader.position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not state_dict:
            return
        # Lightning warns that a mid-epoch resume replays batches unless the *loader* is stateful; ours resumes.
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")
        self._resume_at = {state_dict["epoch"]: state_dict["batches"]}
        if self._train_loader is not None:  # built before the restore (some strategies)
            self._train_loader.resume_at = self._resume_at

    def val_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader | ResidentLoader:
        if self.test_set is None:
            raise UserError(f"{type(self).__name__} has no test split: there is nothing to test on.")
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.test_set, labels=False)


def check_statistics(normalization: dict[str, list[float]]) -> dict[str, list[float]]:
    """`normalization` given as numbers: {"mean": [...], "std": [...]}, as many of each, the std positive."""
    shape = "give it as {mean: [m1, m2, m3], std: [s1, s2, s3]} (per channel), or 'data' or 'imagenet'"
    if set(normalization) != {"mean", "std"}:
        raise UserError(f"--data.normalization {normalization}: {shape}.")
    mean, std = [float(value) for value in normalization["mean"]], [float(value) for value in normalization["std"]]
    if not mean or len(mean) != len(std):
        raise UserError(f"--data.normalization {normalization}: as many mean as std values, at least one; {shape}.")
    if not all(value > 0 and math.isfinite(value) for value in std) or not all(map(math.isfinite, mean)):
        raise UserError(f"--data.normalization {normalization}: every std must be > 0 and every value finite.")
    return {"mean": mean, "std": std}


def _same(first: Sequence[float], second: Sequence[float]) -> bool:
    if len(first) != len(second):
        return False
    return all(math.isclose(a, b, abs_tol=SAME_STATISTICS) for a, b in zip(first, second, strict=True))


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(value, 4) for value in values]


def _stat(path: Path) -> list[int]:
    try:
        stat = path.stat()
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


class TensorImages(Dataset[tuple[Any, int]]):
    """uint8 images (N, C, H, W) and labels held in memory, transformed one sample at a time."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class ImagesOnly(Dataset[Tensor]):
    """A labelled dataset with its labels dropped: what prediction sees."""

    def __init__(self, dataset: Dataset[tuple[Tensor, int]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset[index][0]


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), as fractions of 255, in chunks to bound memory."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].to(torch.float64).transpose(0, 1).flatten(1) / 255
        total += pixels.sum(dim=1)
        squares += pixels.square().sum(dim=1)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _checksum(splits: dict[str, TensorSplit]) -> int:
    """CRC-32 of every cached tensor's bytes: a bit flipped on disk makes the cache rebuild itself."""
    crc = 0
    for split in sorted(splits):
        for tensor in splits[split]:
            crc = zlib.crc32(tensor.contiguous().numpy().data, crc)
    return crc


def _disk_full(err: BaseException) -> bool:
    """Whether a write failed for want of space (ENOSPC, EDQUOT), also when torch.save wraps the OSError."""
    codes = {errno.ENOSPC, errno.EDQUOT}
    chain = [err, err.__cause__, err.__context__]
    return any(isinstance(e, OSError) and e.errno in codes for e in chain) or "No space left" in str(err)
