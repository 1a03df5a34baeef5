from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MNIST_SHAPE, NUM_TEST, NUM_TRAIN, VAL_SIZE, datamodule, quick_trainer
from proj.data.idx import write_idx
from proj.data.mnist import MEAN, STD
from proj.data.synthetic import write_synthetic_mnist
from proj.errors import UserError
from proj.models import MLPClassifier


def raw_images(data_dir: Path, prefix: str) -> np.ndarray:
    data = (data_dir / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte").read_bytes()
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(-1, 28, 28)


def raw_labels(data_dir: Path, prefix: str) -> np.ndarray:
    return np.frombuffer((data_dir / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte").read_bytes()[8:], np.uint8)


def normalised(pixels: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(pixels.copy()).float() / 255 - 0.1307) / 0.3081


def num_samples(split) -> int:
    """Length of a split of either pipeline: a torchvision dataset, or a resident (images, labels) tuple."""
    if isinstance(split, tuple):
        images, labels = split
        assert images.shape[1:] == (1, 28, 28)
        assert images.dtype == torch.uint8
        assert labels.dtype == torch.int64
        assert labels.shape == (len(images),)
        return len(images)
    return len(split)


def raw_indices(data_dir: Path, images: torch.Tensor) -> list[int]:
    """Which training image each of `images` is (synthetic images are random noise: every one is unique)."""
    where = {image.tobytes(): index for index, image in enumerate(raw_images(data_dir, "train"))}
    assert len(where) == NUM_TRAIN
    return [where[image.numpy().tobytes()] for image in images]


PIPELINES = ["resident", "torchvision"]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_split_sizes(mnist_dir, pipeline):
    dm = datamodule(mnist_dir, pipeline=pipeline)
    dm.setup("fit")
    assert num_samples(dm.train_set) == NUM_TRAIN - VAL_SIZE
    assert num_samples(dm.val_set) == VAL_SIZE


def test_split_disjoint_and_covering(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="torchvision")
    dm.setup("fit")
    train, val = set(dm.train_set.indices), set(dm.val_set.indices)
    assert not train & val
    assert train | val == set(range(NUM_TRAIN))


def test_resident_split_disjoint_and_covering(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="resident")
    dm.setup("fit")
    (train_images, train_labels), (val_images, val_labels) = dm.train_set, dm.val_set
    train, val = raw_indices(mnist_dir, train_images), raw_indices(mnist_dir, val_images)
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(range(NUM_TRAIN))
    labels = raw_labels(mnist_dir, "train")
    assert train_labels.tolist() == labels[train].tolist()
    assert val_labels.tolist() == labels[val].tolist()


def test_split_depends_on_split_seed_only(mnist_dir):
    first, again, other = (
        datamodule(mnist_dir, pipeline="torchvision"),
        datamodule(mnist_dir, pipeline="torchvision"),
        datamodule(mnist_dir, pipeline="torchvision", split_seed=7),
    )
    for seed, dm in enumerate((first, again, other)):
        torch.manual_seed(seed)  # the global seed must not matter
        dm.setup("fit")
    assert first.val_set.indices == again.val_set.indices
    assert first.train_set.indices == again.train_set.indices
    assert set(first.val_set.indices) != set(other.val_set.indices)


def test_resident_split_depends_on_split_seed_only(mnist_dir):
    first, again, other = datamodule(mnist_dir), datamodule(mnist_dir), datamodule(mnist_dir, split_seed=7)
    for seed, dm in enumerate((first, again, other)):
        torch.manual_seed(seed)  # the global seed must not matter
        dm.setup("fit")
    for split in ("train_set", "val_set"):
        for mine, theirs in zip(getattr(first, split), getattr(again, split), strict=True):
            assert torch.equal(mine, theirs)
    assert set(raw_indices(mnist_dir, first.val_set[0])) != set(raw_indices(mnist_dir, other.val_set[0]))


def test_test_set_is_t10k(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="torchvision")
    dm.setup("test")
    assert len(dm.test_set) == NUM_TEST
    labels = [dm.test_set[i][1] for i in range(NUM_TEST)]
    assert labels == raw_labels(mnist_dir, "t10k").tolist()
    torch.testing.assert_close(dm.test_set[5][0][0], normalised(raw_images(mnist_dir, "t10k")[5]))


def test_resident_test_set_is_t10k(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="resident")
    dm.setup("test")
    assert num_samples(dm.test_set) == NUM_TEST
    images, labels = dm.test_set
    assert labels.tolist() == raw_labels(mnist_dir, "t10k").tolist()
    assert torch.equal(images, torch.from_numpy(raw_images(mnist_dir, "t10k").copy()).unsqueeze(1))
    batch_images, batch_labels = next(iter(dm.test_dataloader()))  # not shuffled: the first 32 in file order
    assert batch_labels.tolist() == raw_labels(mnist_dir, "t10k")[:32].tolist()
    torch.testing.assert_close(batch_images[5][0], normalised(raw_images(mnist_dir, "t10k")[5]))


def test_normalisation_of_raw_pixels(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="torchvision")
    dm.setup("fit")
    image, label = dm.train_set[3]
    index = dm.train_set.indices[3]
    assert image.shape == (1, 28, 28)
    assert image.dtype == torch.float32
    assert label == raw_labels(mnist_dir, "train")[index]
    torch.testing.assert_close(image[0], normalised(raw_images(mnist_dir, "train")[index]))
    assert image.min().item() == pytest.approx(-MEAN / STD, abs=1e-6)  # pixel 0
    assert image.max().item() == pytest.approx((1 - MEAN) / STD, abs=1e-6)  # pixel 255, the class patch


@pytest.mark.parametrize("stage", ["fit", "test"])
def test_resident_normalisation_of_raw_pixels(mnist_dir, stage):
    torch.manual_seed(0)  # as seed_everything does (unseeded: see test_resident.py::test_unseeded_process)
    dm = datamodule(mnist_dir, pipeline="resident", batch_size=64)
    dm.setup(stage)
    loader = dm.train_dataloader() if stage == "fit" else dm.test_dataloader()
    split = dm.train_set if stage == "fit" else dm.test_set
    order = loader.indices()
    images, labels = next(iter(loader))
    assert images.shape == (64, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.equal(labels, split[1][order[:64]])
    torch.testing.assert_close(images, normalised(split[0][order[:64]].numpy()))
    assert images.min().item() == pytest.approx(-MEAN / STD, abs=1e-6)  # pixel 0
    assert images.max().item() == pytest.approx((1 - MEAN) / STD, abs=1e-6)  # pixel 255, the class patch


def test_no_augmentation_by_default(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="torchvision")
    dm.setup("fit")
    assert torch.equal(dm.train_set[0][0], dm.train_set[0][0])


def test_resident_no_augmentation_by_default(mnist_dir):
    torch.manual_seed(0)  # as seed_everything does (unseeded: see test_resident.py::test_unseeded_process)
    dm = datamodule(mnist_dir, pipeline="resident")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.augment is None
    images, order = torch.cat([batch for batch, _ in loader]), loader.indices()
    torch.testing.assert_close(images, normalised(dm.train_set[0][order].numpy()))


def test_augmentation_changes_train_images_only(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="torchvision", augment=True)
    dm.setup("fit")
    torch.manual_seed(0)
    reads = [dm.train_set[0] for _ in range(3)]
    assert all(label == reads[0][1] for _, label in reads)
    assert not all(torch.equal(image, reads[0][0]) for image, _ in reads[1:])
    assert reads[0][0].shape == (1, 28, 28)
    val_image = dm.val_set[0][0]
    assert torch.equal(val_image, dm.val_set[0][0])
    torch.testing.assert_close(val_image[0], normalised(raw_images(mnist_dir, "train")[dm.val_set.indices[0]]))


def test_resident_augmentation_changes_train_images_only(mnist_dir):
    torch.manual_seed(0)  # as seed_everything does (unseeded: see test_resident.py::test_unseeded_process)
    dm = datamodule(mnist_dir, pipeline="resident", augment=True)
    dm.setup("fit")
    train = dm.train_dataloader()
    order = train.indices()
    images, labels = next(iter(train))
    assert images.shape == (32, 1, 28, 28)
    assert torch.equal(labels, dm.train_set[1][order[:32]])  # labels unchanged
    plain = normalised(dm.train_set[0][order[:32]].numpy())
    for image, original in zip(images, plain, strict=True):  # every image moved, none left as is
        assert not torch.allclose(image, original, atol=1e-3)
    train.set_epoch(1)  # drawn anew every epoch
    again = next(iter(train))[0]
    assert not torch.allclose(again, images, atol=1e-3)
    val = dm.val_dataloader()
    assert val.augment is None
    val_images = torch.cat([batch for batch, _ in val])
    torch.testing.assert_close(val_images, normalised(dm.val_set[0].numpy()))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_predict_loader_yields_bare_images(mnist_dir, pipeline):
    dm = datamodule(mnist_dir, batch_size=64, pipeline=pipeline)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert all(isinstance(batch, torch.Tensor) for batch in batches)
    assert batches[0].shape == (64, 1, 28, 28)
    assert sum(len(batch) for batch in batches) == NUM_TEST
    images = torch.cat(batches)
    torch.testing.assert_close(images[:, 0], normalised(raw_images(mnist_dir, "t10k")))  # in file order


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_loaders_need_setup(mnist_dir, pipeline):
    with pytest.raises(RuntimeError, match="setup"):
        datamodule(mnist_dir, pipeline=pipeline).train_dataloader()


# Errors: a UserError whose message names what is wrong and how to fix it.


def raw_path(root: Path, name: str) -> Path:
    return root / "MNIST" / "raw" / name


@pytest.fixture
def small_mnist(tmp_path: Path) -> Path:
    """A throwaway copy to corrupt."""
    return write_synthetic_mnist(tmp_path / "small", num_train=40, num_test=10)


def test_missing_files_without_download(tmp_path):
    dm = datamodule(tmp_path / "empty", download=False)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message
    assert "--data.data_dir" in message
    assert "--data.download false" in message


def test_missing_files_when_download_fails(tmp_path):
    """The autouse fixture points torchvision's mirrors at a closed local port: the download fails at once."""
    dm = datamodule(tmp_path / "offline", download=True)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "offline" / "MNIST" / "raw") in message
    assert "download failed" in message
    assert "--data.data_dir" in message
    assert "\n" not in message  # only the first line of torchvision's per-mirror report


def test_setup_without_prepare_data(tmp_path):
    with pytest.raises(UserError, match=re.escape("--data.data_dir")):
        datamodule(tmp_path / "empty").setup("fit")


def test_data_dir_is_a_file(tmp_path):
    path = tmp_path / "mnist.tar"
    path.write_bytes(b"not a folder")
    with pytest.raises(UserError) as err:
        datamodule(path).prepare_data()
    assert str(path) in str(err.value)
    assert "--data.data_dir" in str(err.value)


@pytest.mark.parametrize(("keep_bytes", "problem"), [(-100, "corrupt"), (10, "truncated")])
def test_truncated_images_file(small_mnist, keep_bytes, problem):
    path = raw_path(small_mnist, "train-images-idx3-ubyte")
    path.write_bytes(path.read_bytes()[:keep_bytes])
    dm = datamodule(small_mnist, val_size=5, pipeline="torchvision")
    for step in (dm.prepare_data, lambda: dm.setup("fit")):  # caught before a run starts, and by setup alone
        with pytest.raises(UserError) as err:
            step()
        assert str(path) in str(err.value)
        assert problem in str(err.value)
        assert "replace it with the original file" in str(err.value)


@pytest.mark.parametrize(("keep_bytes", "problem"), [(-100, "corrupt"), (10, "truncated")])
@pytest.mark.parametrize("step", ["prepare_data", "setup"])
def test_resident_truncated_images_file(small_mnist, keep_bytes, problem, step):
    """The resident pipeline decodes in prepare_data (to build its cache once), and in setup without it."""
    path = raw_path(small_mnist, "train-images-idx3-ubyte")
    path.write_bytes(path.read_bytes()[:keep_bytes])
    dm = datamodule(small_mnist, val_size=5, pipeline="resident")
    with pytest.raises(UserError) as err:
        dm.prepare_data() if step == "prepare_data" else dm.setup("fit")
    assert str(path) in str(err.value)
    assert problem in str(err.value)
    assert "replace it with the original file" in str(err.value)
    assert not (small_mnist / "MNIST" / "resident-uint8.pt").exists()


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_wrong_magic_number(small_mnist, pipeline):
    path = raw_path(small_mnist, "t10k-labels-idx1-ubyte")
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])  # an images magic on a labels file
    with pytest.raises(UserError) as err:
        datamodule(small_mnist, pipeline=pipeline).setup("test")
    assert str(path) in str(err.value)
    assert "magic number 0x00000803, expected 0x00000801" in str(err.value)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_images_labels_count_mismatch(small_mnist, pipeline):
    labels = raw_path(small_mnist, "train-labels-idx1-ubyte")
    write_idx(labels, torch.zeros(39, dtype=torch.uint8))
    with pytest.raises(UserError) as err:
        datamodule(small_mnist, val_size=5, pipeline=pipeline).setup("fit")
    message = str(err.value)
    assert str(raw_path(small_mnist, "train-images-idx3-ubyte")) in message
    assert str(labels) in message
    assert "40 images" in message
    assert "39 labels" in message


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("val_size", [NUM_TRAIN, NUM_TRAIN + 1])
def test_val_size_too_large(mnist_dir, val_size, pipeline):
    with pytest.raises(UserError) as err:
        datamodule(mnist_dir, val_size=val_size, pipeline=pipeline).setup("fit")
    assert f"val_size {val_size}" in str(err.value)
    assert "--data.val_size" in str(err.value)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_largest_val_size_leaves_one_training_image(mnist_dir, pipeline):
    torch.manual_seed(0)  # as seed_everything does (unseeded: see test_resident.py::test_unseeded_process)
    dm = datamodule(mnist_dir, val_size=NUM_TRAIN - 1, pipeline=pipeline)
    dm.setup("fit")
    assert num_samples(dm.train_set) == 1
    assert len(list(dm.train_dataloader())) == 1


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"batch_size": 0}, "--data.batch_size"),
        ({"val_size": 0}, "--data.val_size"),
        ({"persistent_workers": True, "num_workers": 0}, "--data.num_workers"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, flag):
    with pytest.raises(UserError, match=re.escape(flag)):
        datamodule(tmp_path, **kwargs)


def test_checkpoint_with_path_data_dir_loads_weights_only(mnist_dir, tmp_path):
    """torch.load defaults to weights_only=True: the data module's hparams in a checkpoint must be plain data."""
    assert isinstance(mnist_dir, Path)  # what write_synthetic_mnist returns; data_dir is typed str | Path
    trainer = quick_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(MLPClassifier(**MNIST_SHAPE, hidden_sizes=(8,)), datamodule=datamodule(mnist_dir))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert Path(checkpoint["datamodule_hyper_parameters"]["data_dir"]) == mnist_dir
    assert isinstance(MLPClassifier.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True), MLPClassifier)
