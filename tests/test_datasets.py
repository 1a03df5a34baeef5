"""Every data set the template reads, on tiny generated files in their real layouts: MNIST, Fashion-MNIST,
CIFAR-10 and folders of images. What each one is (shape, classes, normalisation), that both pipelines serve the
same normalised images, augmentation, the split, and whole runs of `proj.fit` and `proj test` on them."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor
from torchvision.datasets import FashionMNIST
from torchvision.transforms import v2

import proj.cli
import proj.fit
from conftest import info_lines, user_error
from proj.cli import ProjCLI
from proj.data import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from proj.data.synthetic import (
    CIFAR_CLASSES,
    write_image_folder,
    write_synthetic_cifar10,
    write_synthetic_fashion_mnist,
)
from proj.errors import UserError

CLASSES = ("cat", "dog", "owl")
COMMON = {"batch_size": 16, "num_workers": 0}
RANDOM_STEPS = (v2.RandomHorizontalFlip, v2.RandomCrop, v2.RandomAffine)


# The data, written once per module.


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_fashion_mnist(tmp_path_factory.mktemp("fashion"), num_train=200, num_test=50)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cifar10(tmp_path_factory.mktemp("cifar"), num_train=200, num_test=50)


@pytest.fixture(scope="module")
def train_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ alone: 3 classes of 10 colour images, 16x16, as PNG, JPEG and BMP."""
    return write_image_folder(
        tmp_path_factory.mktemp("train_only"), CLASSES, per_class=10, size=(16, 16), suffixes=(".png", ".jpg", ".bmp")
    )


@pytest.fixture(scope="module")
def all_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/, val/ and test/ of colour images of several sizes (most of them 32x32) and formats."""
    return write_image_folder(
        tmp_path_factory.mktemp("all_splits"),
        CLASSES,
        per_class={"train": 10, "val": 3, "test": 4},
        size=[(32, 32), (40, 48), (32, 32), (24, 30)],
        splits=("train", "val", "test"),
        suffixes=(".png", ".jpg", ".bmp"),
    )


@pytest.fixture(scope="module")
def gray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Grayscale images, 20x20: train/ and test/ of 2 classes."""
    return write_image_folder(
        tmp_path_factory.mktemp("gray"), ("zero", "one"), per_class=8, size=(20, 20), mode="L", splits=("train", "test")
    )


DATA_SETS = ["mnist", "fashion", "cifar", "train_only", "all_splits", "gray"]


def make(name: str, request: pytest.FixtureRequest, **kwargs: Any) -> ImageDataModule:
    """The data module of data set `name` (a fixture above, or conftest's MNIST), small val split, no workers."""
    if name in ("mnist", "fashion", "cifar"):
        data_dir = request.getfixturevalue(f"{name}_dir")
        cls = {"mnist": MNISTDataModule, "fashion": FashionMNISTDataModule, "cifar": CIFAR10DataModule}[name]
        return cls(data_dir, download=False, **{"val_size": 20, **COMMON, **kwargs})
    return ImageFolderDataModule(request.getfixturevalue(name), **{**COMMON, **kwargs})


def batches(loader: Any) -> tuple[Tensor, Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def hand_stats(files: list[Path], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the files' pixels in [0, 1], computed here with numpy."""
    pixels = np.stack([np.asarray(Image.open(path).convert(mode), dtype=np.float64) / 255 for path in files])
    pixels = pixels.reshape(-1, 1 if mode == "L" else 3)
    return pixels.mean(axis=0), pixels.std(axis=0)


def image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix in (".png", ".jpg", ".bmp"))


# What each data set is.


@pytest.mark.parametrize(
    ("name", "shape", "classes", "mean", "std", "digits"),
    [
        ("mnist", (1, 28, 28), tuple("0123456789"), (0.1307,), (0.3081,), True),
        ("fashion", (1, 28, 28), tuple(FashionMNIST.classes), (0.2860,), (0.3530,), False),
        ("cifar", (3, 32, 32), CIFAR_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), False),
    ],
)
def test_named_data_sets(request, name, shape, classes, mean, std, digits):
    data = make(name, request)
    data.check()
    assert data.input_shape == shape
    assert data.class_names == classes
    assert data.num_classes == 10
    assert data.mean == pytest.approx(mean) and data.std == pytest.approx(std)
    assert data.description() == {
        "class_path": f"{type(data).__module__}.{type(data).__name__}",
        "input_shape": list(shape),
        "class_names": list(classes),
        "mean": list(mean),
        "std": list(std),
        "digits": digits,
    }
    splits = data.decoded()
    assert set(splits) == {"train", "test"}  # val is split off train
    for split, count in (("train", 600 if name == "mnist" else 200), ("test", 200 if name == "mnist" else 50)):
        images, labels = splits[split]
        assert images.shape == (count, *shape) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))


def test_fashion_mnist_reads_its_own_folder(fashion_dir, tmp_path):
    assert FashionMNISTDataModule(fashion_dir).raw_dir == fashion_dir / "FashionMNIST" / "raw"
    with pytest.raises(UserError, match=r"FashionMNIST not found: .*FashionMNIST/raw lacks"):
        FashionMNISTDataModule(tmp_path, download=False).check()


def test_cifar_batches_decode_to_the_pickled_rows(cifar_dir):
    """Rows of R, G and B planes become (3, 32, 32) images; the five training batches in order, then test_batch."""
    folder = cifar_dir / "cifar-10-batches-py"
    rows, labels = [], []
    for name in [*(f"data_batch_{number}" for number in range(1, 6)), "test_batch"]:
        batch = pickle.loads((folder / name).read_bytes(), encoding="latin1")  # a plain unpickler, for reference
        rows.append(batch["data"])
        labels += batch["labels"]
    data = CIFAR10DataModule(cifar_dir, download=False).decoded()
    images = torch.cat([data["train"][0], data["test"][0]])
    assert torch.equal(images, torch.from_numpy(np.concatenate(rows)).reshape(-1, 3, 32, 32))
    assert torch.cat([data["train"][1], data["test"][1]]).tolist() == labels
    red, green = images[0, 0].float(), images[0, 1].float()  # the class's patch is brightest in its own colour
    assert not torch.equal(red, green)


def test_cifar_refuses_pickles_of_anything_but_arrays(tmp_path):
    """A batch file is a pickle: one naming any other global (code that loading would run) is refused, not run."""
    folder = write_synthetic_cifar10(tmp_path, num_train=10, num_test=5) / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": Path("x"), "labels": []}))
    with pytest.raises(UserError, match=r"data_batch_2 is truncated or not a CIFAR-10 batch .*refusing to load"):
        CIFAR10DataModule(tmp_path, download=False).read_split("train")


# Folders of images.


def test_image_folder_infers_classes_size_and_channels(all_splits):
    data = ImageFolderDataModule(all_splits, **COMMON)
    data.check()
    assert data.class_names == CLASSES and data.num_classes == 3
    assert data.input_shape == (3, 32, 32)  # the most common size in the folder; RGB
    assert data.has_test_split()
    assert len(data.mean) == len(data.std) == 3
    assert data.description()["class_path"] == "proj.data.folder.ImageFolderDataModule"
    assert {path.suffix for path in image_files(all_splits / "train")} == {".png", ".jpg", ".bmp"}
    sizes = {Image.open(path).size for path in image_files(all_splits)}
    assert sizes == {(32, 32), (48, 40), (30, 24)}


@pytest.mark.parametrize(("image_size", "shape"), [(None, (32, 32)), (20, (20, 20)), ((16, 24), (16, 24))])
def test_images_of_any_size_and_format_are_resized_to_image_size(all_splits, image_size, shape):
    data = ImageFolderDataModule(all_splits, image_size=image_size, **COMMON)
    assert data.input_shape == (3, *shape)
    splits = data.decoded()
    assert {split: len(labels) for split, (_, labels) in splits.items()} == {"train": 30, "val": 9, "test": 12}
    for images, labels in splits.values():
        assert images.shape[1:] == (3, *shape) and images.dtype == torch.uint8
        assert torch.bincount(labels).tolist() == [len(labels) // 3] * 3
    images = splits["train"][0].float()
    assert (images[:, 0] != images[:, 1]).any()  # colour kept


def test_grayscale_folder_has_one_channel_unless_told(gray, tmp_path):
    data = ImageFolderDataModule(gray, **COMMON)
    assert data.input_shape == (1, 20, 20)
    assert len(data.mean) == len(data.std) == 1
    colour = ImageFolderDataModule(gray, channels=3, **COMMON)
    assert colour.input_shape == (3, 20, 20) and len(colour.mean) == 3
    images = colour.decoded()["train"][0]
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    assert torch.equal(images[:, :1], data.decoded()["train"][0])
    # One colour image (here RGBA) among grayscale ones makes the folder RGB.
    mixed = write_image_folder(tmp_path / "mixed", ("zero", "one"), per_class=3, size=(20, 20), mode="L")
    Image.new("RGBA", (20, 20), (200, 10, 10, 255)).save(mixed / "train" / "one" / "rgba.png")
    assert ImageFolderDataModule(mixed, **COMMON).input_shape == (3, 20, 20)


def test_every_format_imagefolder_takes_is_read_and_other_files_are_counted_once(tmp_path, lightning_info):
    """WebP, TIFF, PPM and PGM beside PNG, read pixel for pixel (16-bit grayscale scaled from 65535, not clipped at
    255); a GIF and a text file skipped and said once; hidden files passed over silently."""
    rng = np.random.default_rng(0)
    colour = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(4)]
    gray = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    deep = np.linspace(0, 40000, 12 * 16).round().astype(np.uint16).reshape(12, 16)  # of 65535: a mid gray at most
    files = {
        "train/cat/a.webp": (Image.fromarray(colour[0]), colour[0]),
        "train/cat/b.tif": (Image.fromarray(colour[1]), colour[1]),
        "train/cat/c.PPM": (Image.fromarray(colour[2]), colour[2]),
        "train/cat/d.png": (Image.fromarray(colour[3]), colour[3]),
        "train/dog/e.pgm": (Image.fromarray(gray), gray),
        "train/dog/f.tiff": (Image.fromarray(deep), (deep / 65535 * 255).round()),
        "train/dog/g.pgm": (Image.fromarray(deep), (deep / 65535 * 255).round()),
    }
    for name, (image, _) in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
    assert [Image.open(tmp_path / name).mode for name in ("train/dog/f.tiff", "train/dog/g.pgm")] == ["I;16", "I"]
    Image.fromarray(gray).save(tmp_path / "train/cat/moving.gif")
    Image.fromarray(gray).save(tmp_path / "train/dog/h.GIF")
    (tmp_path / "train/dog/notes.txt").write_text("taken in 2024")
    (tmp_path / "train/dog/.DS_Store").write_bytes(b"")
    Image.fromarray(gray).save(tmp_path / "train/dog/._e.pgm")

    data = ImageFolderDataModule(tmp_path, pipeline="resident", **COMMON)
    data.check()
    assert data.input_shape == (3, 12, 16)
    images, labels = data.read_split("train")
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    for (name, (_, pixels)), image in zip(files.items(), images, strict=True):
        expected = torch.from_numpy(np.asarray(pixels, dtype=np.uint8)).reshape(12, 16, -1).permute(2, 0, 1)
        assert torch.equal(image, expected.expand(3, 12, 16)), name
    assert images[-2].max() == images[-1].max() == 156  # 40000 / 65535: not clipped to white, nor stretched to it
    data.setup("fit")
    assert info_lines(lightning_info) == [
        "Skipped 3 files that are not images proj reads: 2 .gif, 1 .txt (readable suffixes: "
        ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)."
    ]


def test_a_folder_of_images_only_says_nothing(tmp_path, lightning_info):
    folder = write_image_folder(tmp_path, ("a", "b"), per_class=2, size=(8, 8), suffixes=(".webp", ".tif"))
    (folder / "train" / "a" / ".DS_Store").write_bytes(b"")
    data = ImageFolderDataModule(folder, **COMMON)
    data.check()
    assert len(data.files()["train"]) == 4
    assert info_lines(lightning_info) == []


@pytest.mark.parametrize(
    ("sizes", "expected", "line"),
    [
        ([(20, 30)], (20, 30), None),  # one size
        ([(20, 30), (20, 30), (40, 10)], (20, 30), None),  # most images' size (4 of 6)
        # Every size different, aspect ratios too: sides sqrt(h * w) 20, 20, 19, 20, 24, 12: their median is 20.
        (
            [(10, 40), (20, 20), (30, 12), (16, 25), (24, 24), (9, 16)],
            (20, 20),
            "using --data.image_size 20 20, their median side, square as their aspect ratios vary.",
        ),
        # Squares of every size but one: sides 10, 12, 14, 16, 18, 17.3: median 15.
        (
            [(10, 10), (12, 12), (14, 14), (16, 16), (18, 18), (30, 10)],
            (15, 15),
            "using --data.image_size 15 15, their median side, square as most of them are.",
        ),
        # All 2:1 (width:height), of every size: median side sqrt(h * w) 21.2, i.e. 15 x 30.
        (
            [(10, 20), (12, 24), (14, 28), (16, 32), (18, 36), (20, 40)],
            (15, 30),
            "using --data.image_size 15 30, their median size, at the aspect ratio most of them share "
            "(width:height 2.00).",
        ),
    ],
    ids=["one size", "most share one", "every size", "squares", "all 2 to 1"],
)
def test_default_image_size(tmp_path, lightning_info, sizes, expected, line):
    """The size most images have; when no size is that common, the median side, square unless most of the images
    share an aspect ratio, said in one line."""
    folder = write_image_folder(tmp_path, ("a", "b"), per_class=3, size=sizes)
    data = ImageFolderDataModule(folder, **COMMON)
    data.check()
    assert data.input_shape == (3, *expected)
    assert data.decoded()["train"][0].shape == (6, 3, *expected)
    said = info_lines(lightning_info)
    if line is None:
        assert said == []
    else:
        assert said == [
            "ImageFolderDataModule: image sizes vary (no size is shared by more than half of the 6 images): "
            f"{line} Pass --data.image_size H W to choose another."
        ]


@pytest.mark.parametrize("pipeline", ["resident", "torchvision"])
@pytest.mark.parametrize("name", ["train_only", "all_splits", "gray"])
def test_image_folder_mean_and_std_are_those_of_the_training_split(request, name, pipeline):
    """Measured on the training images alone (not val's, nor test's), as computed here by hand."""
    folder = request.getfixturevalue(name)
    data = ImageFolderDataModule(folder, pipeline=pipeline, val_size=6, **COMMON)
    data.setup("fit")
    files = [path for path, _ in data.files()["train"]]
    assert len(files) == len(image_files(folder / "train"))
    if not (folder / "val").is_dir():  # val is split off train/: the rest is the training split
        files = [files[index] for index in data.split_indices(len(files))[0].tolist()]
        assert len(files) == len(image_files(folder / "train")) - 6
    mode = "L" if name == "gray" else "RGB"
    if name == "all_splits":  # images of other sizes are resized first: only the 32x32 ones are read as they are
        images = data.decoded()["train"][0].double() / 255
        mean = images.mean(dim=(0, 2, 3)).numpy()
        std = images.transpose(0, 1).flatten(1).std(dim=1, unbiased=False).numpy()
    else:
        mean, std = hand_stats(files, mode)
    assert data.mean == pytest.approx(tuple(mean), abs=1e-6)
    assert data.std == pytest.approx(tuple(std), abs=1e-6)
    if name == "all_splits":
        everything = torch.cat([images for images, _ in data.decoded().values()]).double().mean(dim=(0, 2, 3)) / 255
    else:
        everything, _ = hand_stats(image_files(folder), mode)
    assert not np.allclose(everything, mean, rtol=0, atol=1e-6)  # the other images would have shifted it


@pytest.mark.parametrize("name", DATA_SETS)
def test_both_pipelines_serve_the_same_val_and_test_images(request, name):
    """The resident pipeline (uint8 tensors, normalised a batch at a time) and the torchvision one (per-sample
    transforms) give the same normalised images and labels, in the same order, augmentation on for training."""
    moves = {"augment": True, "flip": True} if name in ("train_only", "all_splits", "gray") else {"augment": True}
    served: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
    train_counts = []
    for pipeline in ("resident", "torchvision"):
        data = make(name, request, pipeline=pipeline, **moves)
        data.prepare_data()
        data.setup("fit")
        data.setup("test")
        assert data.resident == (pipeline == "resident")
        train_counts.append(len(data.train_set[0]) if isinstance(data.train_set, tuple) else len(data.train_set))
        served[pipeline] = {"val": batches(data.val_dataloader())}
        if data.has_test_split():
            served[pipeline]["test"] = batches(data.test_dataloader())
    resident, streaming = served["resident"], served["torchvision"]
    assert resident.keys() == streaming.keys()
    assert train_counts[0] == train_counts[1]
    for split in resident:
        (images, labels), (expected, expected_labels) = resident[split], streaming[split]
        assert images.shape == expected.shape and images.dtype == torch.float32
        assert torch.equal(labels, expected_labels)
        torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    mean = resident["val"][0].mean().item()
    assert abs(mean) < 1.5  # normalised, not raw pixels


# Augmentation.


def random_steps(transform: v2.Transform) -> list[type]:
    return [type(step) for step in transform.transforms if isinstance(step, RANDOM_STEPS)]


@pytest.mark.parametrize(
    ("name", "options", "moves", "steps"),
    [
        ("mnist", {}, None, []),
        ("mnist", {"augment": True}, {"degrees": 10.0, "translate": 0.1, "scale": 0.0}, [v2.RandomAffine]),
        ("mnist", {"augment": True, "augment_scale": 0.1}, {"degrees": 10.0, "translate": 0.1, "scale": 0.1}, None),
        ("fashion", {}, None, []),
        (
            "fashion",
            {"augment": True},
            {"flip": True, "crop": 2, "scale": 0.0},
            [v2.RandomHorizontalFlip, v2.RandomCrop],
        ),
        ("cifar", {}, None, []),
        ("cifar", {"augment": True}, {"flip": True, "crop": 4, "scale": 0.0}, [v2.RandomHorizontalFlip, v2.RandomCrop]),
        ("all_splits", {}, None, []),
        ("all_splits", {"augment": True}, {"crop": 4, "scale": 0.0}, [v2.RandomCrop]),
        ("all_splits", {"flip": True}, {"flip": True, "scale": 0.0}, [v2.RandomHorizontalFlip]),
        ("all_splits", {"augment": True, "flip": True}, {"flip": True, "crop": 4, "scale": 0.0}, None),
        ("gray", {"augment": True, "image_size": 16}, {"crop": 2, "scale": 0.0}, [v2.RandomCrop]),
    ],
)
def test_augmentation_of_each_data_set(request, name, options, moves, steps):
    """Digits are never mirrored (a mirrored 2 is no 2); clothing and photos are mirrored and shifted by padded
    crops; a folder of images gets nothing unless asked (--data.augment, --data.flip). Never for val and test."""
    data = make(name, request, **options)
    assert data.augmentation == moves  # what the resident pipeline applies
    if steps is not None:  # ... and the torchvision pipeline's transform
        assert random_steps(data.transform(train=True)) == steps
    assert random_steps(data.transform(train=False)) == []
    if moves and "crop" in moves:
        crop = next(step for step in data.transform(train=True).transforms if isinstance(step, v2.RandomCrop))
        assert crop.padding == [moves["crop"]] * 4 and list(crop.size) == list(data.input_shape[1:])


def test_augmentation_moves_training_images_only(cifar_dir):
    """Resident pipeline, same seed: the augmented epoch has the same images in the same order, moved."""
    plain, moved = (
        CIFAR10DataModule(cifar_dir, download=False, pipeline="resident", val_size=20, augment=augment, **COMMON)
        for augment in (False, True)
    )
    for data in (plain, moved):
        data.setup("fit")
    (images, labels), (augmented, same_labels) = (next(iter(data.train_dataloader())) for data in (plain, moved))
    assert torch.equal(labels, same_labels)
    assert not torch.allclose(images, augmented)
    torch.testing.assert_close(batches(plain.val_dataloader()), batches(moved.val_dataloader()))


# The split.


@pytest.mark.parametrize("pipeline", ["resident", "torchvision"])
@pytest.mark.parametrize(
    ("name", "val_size", "train", "val"),
    [
        ("train_only", None, 27, 3),  # a folder's default: 10% of train/
        ("train_only", 5, 25, 5),
        ("train_only", 0.2, 24, 6),
        ("all_splits", 5, 30, 9),  # val/ is the validation set: val_size is not used
        ("cifar", 30, 170, 30),
        ("cifar", 0.25, 150, 50),
        ("fashion", 0.1, 180, 20),
    ],
)
def test_val_size_as_count_or_fraction(request, name, val_size, train, val, pipeline):
    data = make(name, request, val_size=val_size, pipeline=pipeline)
    data.check()
    data.prepare_data()
    data.setup("fit")
    sizes = [len(split[0]) if isinstance(split, tuple) else len(split) for split in (data.train_set, data.val_set)]
    assert sizes == [train, val]


@pytest.mark.parametrize("pipeline", ["resident", "torchvision"])
def test_folder_without_test_split(train_only, pipeline):
    data = ImageFolderDataModule(train_only, pipeline=pipeline, **COMMON)
    assert not data.has_test_split()
    data.setup("fit")
    data.setup("test")
    with pytest.raises(UserError, match="ImageFolderDataModule has no test split"):
        data.test_dataloader()


def test_folder_with_val_but_no_test(tmp_path):
    root = write_image_folder(tmp_path / "images", CLASSES, per_class={"train": 4, "val": 2}, splits=("train", "val"))
    data = ImageFolderDataModule(root, val_size=0.5, **COMMON)
    data.setup("fit")
    assert not data.has_test_split()
    assert len(data.train_set[0]) == 12 and len(data.val_set[0]) == 6  # type: ignore[index]


# The pipeline "auto" chooses.


@pytest.mark.parametrize("name", ["mnist", "cifar", "all_splits"])
def test_auto_pipeline_streams_over_the_resident_budget(request, lightning_info, name):
    within = make(name, request)  # pipeline "auto", a budget of 2 GiB
    assert within.resident
    assert not lightning_info.records
    over = make(name, request, resident_budget_mb=0)
    assert not over.resident
    assert not over.resident  # decided once, said once
    lines = info_lines(lightning_info)
    assert len(lines) == 1, lines
    assert f"{type(over).__name__}: the decoded images take" in lines[0]
    assert "--data.resident_budget_mb 0: using the torchvision (streaming) pipeline" in lines[0]
    over.prepare_data()
    over.setup("fit")
    assert not isinstance(over.train_set, tuple)


# Whole runs.


def fit_args(logs: Path, *flags: str) -> list[str]:
    """Flags for a seconds-long proj.fit run, logging under `logs`."""
    return [
        *flags,
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "0",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(logs),
    ]


@pytest.mark.parametrize(("model", "test_split"), [("MLPClassifier", True), ("CNNClassifier", False)])
def test_fit_on_a_folder_of_colour_images(tmp_path, capsys, one_thread, model, test_split):
    """Any model on 3x32x32 colour images with no model flag but its name: shape and classes come from the data."""
    splits = ("train", "test") if test_split else ("train",)
    root = write_image_folder(tmp_path / "images", CLASSES, per_class={"train": 12, "test": 4}, splits=splits)
    proj.fit.main(
        fit_args(tmp_path / "logs", "--data", "ImageFolderDataModule", "--data.root", str(root), "--model", model)
    )
    stdout = capsys.readouterr().out
    run = tmp_path / "logs" / "imagefolder" / "version_0"
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["input_shape"] == [3, 32, 32] and hparams["num_classes"] == 3
    assert hparams["data.root"] == str(root)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["_class_path"] == f"proj.models.{model}"
    assert list(checkpoint["hyper_parameters"]["input_shape"]) == [3, 32, 32]
    assert checkpoint["data"]["class_path"] == "proj.data.folder.ImageFolderDataModule"
    assert checkpoint["data"]["input_shape"] == [3, 32, 32]
    assert checkpoint["data"]["class_names"] == list(CLASSES)
    assert len(checkpoint["data"]["mean"]) == 3
    if test_split:
        assert "Test accuracy: " in stdout and "No test set" not in stdout
    else:
        assert "No test set: ImageFolderDataModule has no test split, so the test is skipped." in stdout
        assert "Test accuracy" not in stdout


def test_fit_on_cifar10_files(cifar_dir, tmp_path, capsys, one_thread):
    flags = ["--data", "CIFAR10DataModule", "--data.data_dir", str(cifar_dir), "--data.download", "false"]
    flags += ["--data.val_size", "20", "--model", "MLPClassifier", "--model.hidden_sizes", "[16]"]
    proj.fit.main(fit_args(tmp_path / "logs", *flags))
    assert "Test accuracy: " in capsys.readouterr().out
    checkpoint = torch.load(
        tmp_path / "logs" / "cifar10" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert checkpoint["data"]["class_names"] == list(CIFAR_CLASSES)
    assert list(checkpoint["hyper_parameters"]["input_shape"]) == [3, 32, 32]


def test_test_of_an_mnist_model_on_fashion_mnist_is_one_error(mnist_dir, fashion_dir, tmp_path, capsys, one_thread):
    logs = tmp_path / "logs"
    flags = ["--data.data_dir", str(mnist_dir), "--data.download", "false", "--data.val_size", "100"]
    proj.fit.main(
        fit_args(logs, *flags, "--model", "MLPClassifier", "--model.hidden_sizes", "[16]", "--test_after_fit", "false")
    )
    checkpoint = logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    before = sorted(logs.rglob("*"))
    err = user_error(
        capsys,
        proj.cli.main,
        "test",
        "--ckpt_path",
        str(checkpoint),
        "--data",
        "FashionMNISTDataModule",
        "--data.data_dir",
        str(fashion_dir),
        "--data.download",
        "false",
        "--data.val_size",
        "10",
        "--trainer.logger.init_args.save_dir",
        str(logs),
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "trained on MNISTDataModule (1x28x28, 10 classes)" in errors[0]
    assert "this run's data is FashionMNISTDataModule (1x28x28, 10 classes)" in errors[0]
    assert "--data proj.data.mnist.MNISTDataModule" in errors[0]
    assert sorted(logs.rglob("*")) == before


def test_flat_data_config_of_old_selects_mnist(mnist_dir, tmp_path):
    """A config written before `--data CLASS` (data: keys without class_path) still means MNIST with its values."""
    config = tmp_path / "old.yaml"
    config.write_text(f"data:\n  data_dir: {mnist_dir}\n  batch_size: 16\n  val_size: 50\n  download: false\n")
    cli = ProjCLI(args=["--config", str(config), "--data.num_workers", "0"], run=False)
    data = cli.datamodule
    assert type(data) is MNISTDataModule
    assert (data.data_dir, data.batch_size, data.val_size, data.hparams["download"]) == (mnist_dir, 16, 50, False)
    assert list(cli.model.hparams["input_shape"]) == [1, 28, 28] and cli.model.hparams["num_classes"] == 10
