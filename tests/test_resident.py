"""The resident pipeline (issue #3): same data as torchvision's reader, per-sample augmentation, seeded
order, DistributedSampler-like shards, the decoded cache beside the data, and Lightning's epoch hook."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from lightning.pytorch import Callback, seed_everything
from torch.utils.data import DistributedSampler

import proj.outputs
from conftest import MNIST_SHAPE, NUM_TEST, NUM_TRAIN, VAL_SIZE, datamodule, quick_trainer, skip_or_fail_in_ci
from observers import RankShards
from proj.data import MNISTDataModule
from proj.data.mnist import AUGMENT, MEAN, STD
from proj.data.resident import ResidentLoader, random_affine
from proj.data.synthetic import write_synthetic_mnist
from proj.errors import UserError
from proj.models import MLPClassifier


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """(x/255 - 0.1307)/0.3081, as issue #3 states it: (N, 1, 28, 28) uint8 -> (N, 1, 28, 28) float."""
    assert pixels.shape[1:] == (1, 28, 28)
    return (pixels.float() / 255 - 0.1307) / 0.3081


def epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole epoch of a labelled loader, concatenated."""
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def loader(count: int = 10, **kwargs) -> ResidentLoader:
    """A loader over `count` distinct synthetic images whose labels are their indices."""
    generator = torch.Generator().manual_seed(count)
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    options = {"batch_size": 4, "mean": MEAN, "std": STD}
    return ResidentLoader(images, torch.arange(count), **{**options, **kwargs})


# Same images and labels as torchvision's reader.


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_full_epoch_matches_torchvision_reader(mnist_dir, stage):
    reader = torchvision.datasets.MNIST(mnist_dir, train=stage == "validate")
    dm = datamodule(mnist_dir, pipeline="resident", batch_size=48)  # 48 divides neither 100 nor 200
    dm.setup(stage)
    if stage == "validate":
        classic = datamodule(mnist_dir, pipeline="torchvision")
        classic.setup("fit")
        indices = torch.tensor(classic.val_set.indices)
        expected_images, expected_labels, loaded = reader.data[indices], reader.targets[indices], dm.val_dataloader()
    else:
        expected_images, expected_labels, loaded = reader.data, reader.targets, dm.test_dataloader()
    images, labels = epoch(loaded)
    assert len(loaded) == math.ceil(len(expected_labels) / 48)
    assert images.shape == (len(expected_labels), 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.equal(labels, expected_labels)
    torch.testing.assert_close(images, normalised(expected_images.unsqueeze(1)))


def test_val_split_matches_torchvision_pipeline_batch_for_batch(mnist_dir):
    resident, classic = datamodule(mnist_dir, pipeline="resident"), datamodule(mnist_dir, pipeline="torchvision")
    resident.setup("fit")
    classic.setup("fit")
    ours, theirs = list(resident.val_dataloader()), list(classic.val_dataloader())
    assert len(ours) == len(theirs) == len(resident.val_dataloader())
    for (images, labels), (their_images, their_labels) in zip(ours, theirs, strict=True):
        assert torch.equal(labels, their_labels)
        torch.testing.assert_close(images, their_images)


def test_split_indices_match_torchvision_pipeline(mnist_dir):
    reader = torchvision.datasets.MNIST(mnist_dir, train=True)
    resident, classic = datamodule(mnist_dir, pipeline="resident"), datamodule(mnist_dir, pipeline="torchvision")
    resident.setup("fit")
    classic.setup("fit")
    for ours, theirs in ((resident.train_set, classic.train_set), (resident.val_set, classic.val_set)):
        indices = torch.tensor(theirs.indices)
        assert torch.equal(ours[0], reader.data[indices].unsqueeze(1))
        assert torch.equal(ours[1], reader.targets[indices])


def test_shuffled_train_epoch_is_a_permutation_of_the_split(mnist_dir):
    torch.manual_seed(0)
    dm = datamodule(mnist_dir, pipeline="resident")
    dm.setup("fit")
    train = dm.train_dataloader()
    images, labels = epoch(train)
    order = train.indices()
    assert sorted(order.tolist()) == list(range(NUM_TRAIN - VAL_SIZE))
    assert order.tolist() != sorted(order.tolist())
    assert torch.equal(labels, dm.train_set[1][order])
    torch.testing.assert_close(images, normalised(dm.train_set[0][order]))


def test_predict_through_trainer_sees_bare_images(mnist_dir):
    seen = []

    class Model(MLPClassifier):
        def predict_step(self, batch, batch_idx):
            seen.append(batch)
            return super().predict_step(batch, batch_idx)

    model = Model(**MNIST_SHAPE, hidden_sizes=(8,))
    predictions = quick_trainer().predict(model, datamodule=datamodule(mnist_dir, batch_size=64))
    assert all(isinstance(batch, torch.Tensor) for batch in seen)
    assert [len(batch) for batch in seen] == [64] * (NUM_TEST // 64) + [NUM_TEST % 64]
    assert torch.cat(predictions).shape == (NUM_TEST, 10)


# random_affine: independent parameters per sample.


def bar_image() -> torch.Tensor:
    """One (1, 1, 28, 28) float image: a horizontal bar off-centre, so every rotation and shift shows."""
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 12:16, 6:20] = 1.0
    return image


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) pixel coordinates (row, column) of the intensity centre of (B, 1, H, W) images."""
    weights = images[:, 0].clamp(min=0)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    total = weights.sum(dim=(1, 2))
    return torch.stack([(weights * rows).sum(dim=(1, 2)) / total, (weights * cols).sum(dim=(1, 2)) / total], dim=1)


def principal_angle(images: torch.Tensor) -> torch.Tensor:
    """(B,) angle in degrees of the main axis of each image's intensity, 0 for a horizontal bar."""
    weights = images[:, 0].clamp(min=0)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre = centre_of_mass(images)
    dr, dc = rows - centre[:, 0, None, None], cols - centre[:, 1, None, None]
    mrr, mcc, mrc = ((weights * a * b).sum(dim=(1, 2)) for a, b in ((dr, dr), (dc, dc), (dr, dc)))
    return torch.rad2deg(0.5 * torch.atan2(2 * mrc, mcc - mrr))


def test_random_affine_differs_across_the_samples_of_a_batch():
    images = bar_image().repeat(16, 1, 1, 1)
    moved = random_affine(images, generator=torch.Generator().manual_seed(0), **AUGMENT)
    assert moved.shape == images.shape
    assert moved.dtype == images.dtype
    for first, second in itertools.combinations(range(16), 2):
        assert not torch.allclose(moved[first], moved[second], atol=1e-3), (first, second)
    assert not any(torch.allclose(image, images[0], atol=1e-3) for image in moved)


def test_random_affine_is_seeded():
    images = bar_image().repeat(8, 1, 1, 1)
    first = random_affine(images, generator=torch.Generator().manual_seed(3), **AUGMENT)
    again = random_affine(images, generator=torch.Generator().manual_seed(3), **AUGMENT)
    other = random_affine(images, generator=torch.Generator().manual_seed(4), **AUGMENT)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)


def test_random_affine_without_rotation_or_shift_keeps_the_image():
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 4 - 1
    kept = random_affine(images, degrees=0.0, translate=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kept, images, atol=1e-5, rtol=1e-5)


def test_random_affine_shifts_up_to_translate_of_the_size():
    images = bar_image().repeat(256, 1, 1, 1)
    moved = random_affine(images, degrees=0.0, translate=0.1, generator=torch.Generator().manual_seed(0))
    shift = centre_of_mass(moved) - centre_of_mass(images)
    assert shift.abs().max() <= 0.1 * 28 + 0.05  # ±10% of 28 pixels
    assert (shift.abs().amax(dim=0) > 0.8 * 0.1 * 28).all()  # the whole range is used, along both axes
    assert (shift > 0).any(dim=0).all() and (shift < 0).any(dim=0).all()
    torch.testing.assert_close(principal_angle(moved), torch.zeros(256), atol=0.1, rtol=0)  # no rotation


def test_random_affine_rotates_up_to_degrees():
    images = bar_image().repeat(256, 1, 1, 1)
    moved = random_affine(images, degrees=10.0, translate=0.0, generator=torch.Generator().manual_seed(0))
    angle = principal_angle(moved)
    assert angle.abs().max() <= 10.5
    assert angle.max() > 8 and angle.min() < -8
    assert moved.sum(dim=(1, 2, 3)).sub(images[0].sum()).abs().max() < 0.5  # the bar stays inside the frame


def test_random_affine_zooms_up_to_scale():
    images = bar_image().repeat(256, 1, 1, 1)
    moved = random_affine(images, degrees=0.0, translate=0.0, scale=0.2, generator=torch.Generator().manual_seed(0))
    area = moved.sum(dim=(1, 2, 3)) / images[0].sum()  # a zoom by z multiplies the bar's area by z**2
    assert area.min() >= 0.8**2 - 0.02 and area.max() <= 1.2**2 + 0.02
    assert area.min() < 0.7 and area.max() > 1.3  # the whole range is used, shrinking and enlarging
    torch.testing.assert_close(principal_angle(moved), torch.zeros(256), atol=0.1, rtol=0)  # no rotation


def test_datamodule_passes_augment_scale_to_both_pipelines(mnist_dir):
    resident = datamodule(mnist_dir, augment=True, augment_scale=0.15)
    assert resident.augmentation == {**AUGMENT, "scale": 0.15}
    resident.setup("fit")
    assert resident.train_dataloader().augment == resident.augmentation
    assert resident.val_dataloader().augment is None
    affine = resident.transform(train=True).transforms[1]
    assert affine.scale == (0.85, 1.15) and affine.degrees == [-AUGMENT["degrees"], AUGMENT["degrees"]]
    assert datamodule(mnist_dir, augment_scale=0.15).augmentation is None  # only when augmenting


# The loader: seeded order and augmentation, shards, length, bare images.


@pytest.mark.parametrize("augment", [None, AUGMENT])
def test_same_seed_and_epoch_give_identical_batches(augment):
    first, again = loader(50, shuffle=True, augment=augment, seed=7), loader(50, shuffle=True, augment=augment, seed=7)
    for loaded in (first, again):
        loaded.set_epoch(2)
    for (images, labels), (their_images, their_labels) in zip(first, again, strict=True):
        assert torch.equal(labels, their_labels)
        assert torch.equal(images, their_images)


def test_set_epoch_changes_order_and_augmentation():
    loaded = loader(50, shuffle=True, augment=AUGMENT, seed=7)
    assert loaded.sampler is loaded  # where Lightning looks for set_epoch
    images0, labels0 = epoch(loaded)
    assert torch.equal(epoch(loaded)[1], labels0)  # iterating again without set_epoch: the same epoch
    loaded.set_epoch(1)
    images1, labels1 = epoch(loaded)
    assert sorted(labels1.tolist()) == sorted(labels0.tolist()) == list(range(50))
    assert labels1.tolist() != labels0.tolist()
    same_image = labels1.argsort()[labels0]  # where each image of epoch 0 is in epoch 1
    assert not torch.allclose(images1[same_image], images0, atol=1e-3)  # drawn anew
    loaded.set_epoch(0)
    images, labels = epoch(loaded)
    assert torch.equal(labels, labels0)
    assert torch.equal(images, images0)


def test_different_seed_gives_a_different_order():
    assert not torch.equal(loader(50, shuffle=True, seed=1).indices(), loader(50, shuffle=True, seed=2).indices())


def test_unshuffled_order_ignores_seed_and_epoch():
    loaded = loader(10, seed=5)
    loaded.set_epoch(3)
    assert loaded.indices().tolist() == list(range(10))


def test_resumed_run_replays_the_epoch():
    """A loader built fresh at epoch 3 yields what one that went through epochs 0-2 yields at epoch 3."""
    through = loader(30, shuffle=True, augment=AUGMENT, seed=11)
    for number in range(3):
        through.set_epoch(number)
        epoch(through)
    through.set_epoch(3)
    fresh = loader(30, shuffle=True, augment=AUGMENT, seed=11)
    fresh.set_epoch(3)
    for mine, theirs in zip(epoch(through), epoch(fresh), strict=True):
        assert torch.equal(mine, theirs)


def test_resume_at_goes_on_mid_epoch_with_the_batches_not_yet_seen():
    """After a mid-epoch checkpoint (SIGTERM): the rest of that epoch, augmentation included, then whole epochs."""
    uninterrupted = loader(30, shuffle=True, augment=AUGMENT, seed=11)
    uninterrupted.set_epoch(2)
    batches = list(uninterrupted)
    assert uninterrupted.position == len(batches) == 8
    resumed = loader(30, shuffle=True, augment=AUGMENT, seed=11)
    resumed.set_epoch(2)
    resumed.resume_at = {2: 3}
    rest = list(resumed)
    assert len(rest) == 5
    for (images, labels), (their_images, their_labels) in zip(rest, batches[3:], strict=True):
        assert torch.equal(labels, their_labels)
        assert torch.equal(images, their_images)
    assert resumed.position == 8
    assert len(list(resumed)) == 8  # once only: iterating again gives the whole epoch


def test_resume_at_another_epoch_is_ignored():
    resumed = loader(30, shuffle=True, seed=11)
    resumed.resume_at = {0: 8}  # an end-of-epoch checkpoint of epoch 0; Lightning goes on with epoch 1
    resumed.set_epoch(1)
    assert len(list(resumed)) == 8


@pytest.mark.parametrize("pipeline", ["resident", "torchvision"])
def test_datamodule_checkpoints_the_train_position(mnist_dir, pipeline):
    """state_dict() is what Lightning saves in a checkpoint, load_state_dict() what it hands back on resume."""
    assert datamodule(mnist_dir, pipeline=pipeline).state_dict() == {}  # no training loader yet
    data = datamodule(mnist_dir, pipeline=pipeline)
    data.setup("fit")
    train = data.train_dataloader()
    train.sampler.set_epoch(1)
    batches = iter(train)
    for _ in range(4):
        next(batches)
    state = data.state_dict()
    assert state == {"epoch": 1, "batches": 4}
    fresh = datamodule(mnist_dir, pipeline=pipeline)
    fresh.load_state_dict(state)
    fresh.setup("fit")
    rest = fresh.train_dataloader()
    rest.sampler.set_epoch(1)  # what Lightning calls
    assert len(list(rest)) == len(train) - 4


@pytest.mark.parametrize("count", [7, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_unshuffled_shards_follow_distributed_sampler(count, world_size):
    for rank in range(world_size):
        shard = loader(count, rank=rank, world_size=world_size)
        sampler = DistributedSampler(range(count), num_replicas=world_size, rank=rank, shuffle=False)
        assert shard.indices().tolist() == list(sampler)
        assert epoch(shard)[1].tolist() == list(sampler)  # the batches hold exactly those samples


@pytest.mark.parametrize("count", [7, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_are_disjoint_covering_and_equal(count, world_size, shuffle):
    """The DistributedSampler contract: equal lengths, disjoint except the padding, covering every index."""
    for number in range(2):
        shards = []
        for rank in range(world_size):
            shard = loader(count, shuffle=shuffle, seed=3, rank=rank, world_size=world_size)
            shard.set_epoch(number)
            shards.append(epoch(shard)[1].tolist())
        per_rank = math.ceil(count / world_size)
        assert [len(shard) for shard in shards] == [per_rank] * world_size
        everything = [index for shard in shards for index in shard]
        assert set(everything) == set(range(count))
        padding = per_rank * world_size - count
        assert len(everything) - len(set(everything)) == padding  # repeats only to pad
        assert max(everything.count(index) for index in range(count)) <= 2


@pytest.mark.parametrize(
    ("count", "batch_size", "world_size"), [(10, 4, 1), (12, 4, 1), (1, 4, 1), (10, 3, 3), (11, 2, 2), (5, 8, 3)]
)
def test_len_is_the_number_of_batches(count, batch_size, world_size):
    for rank in range(world_size):
        loaded = loader(count, batch_size=batch_size, rank=rank, world_size=world_size, shuffle=True)
        batches = list(loaded)
        assert len(loaded) == len(batches)
        assert all(len(labels) <= batch_size for _, labels in batches)


def test_without_labels_yields_bare_images():
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    loaded = ResidentLoader(images, None, batch_size=4, mean=MEAN, std=STD)
    batches = list(loaded)
    assert all(isinstance(batch, torch.Tensor) for batch in batches)
    assert [batch.shape for batch in batches] == [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)]
    torch.testing.assert_close(torch.cat(batches), normalised(images))


def test_data_module_passes_rank_and_world_size(mnist_dir):
    dm = datamodule(mnist_dir, pipeline="resident", augment=True)
    shards = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3, strategy=SimpleNamespace(root_device="cpu"))
        dm.train_set = None
        dm.setup("fit")
        train = dm.train_dataloader()
        assert (train.rank, train.world_size, train.augment) == (rank, 3, {**AUGMENT, "scale": 0.0})
        shards.append(epoch(train)[0])
    assert sum(len(shard) for shard in shards) == 3 * math.ceil((NUM_TRAIN - VAL_SIZE) / 3)


def test_unseeded_process(mnist_dir):
    """Without seed_everything torch's initial seed is any 64-bit number; the shuffled loader must still work."""
    torch.manual_seed(2**64 - 1)  # the largest there is; a fresh process draws one at random (torch.seed())
    dm = datamodule(mnist_dir, pipeline="resident", augment=True)
    dm.setup("fit")
    train = dm.train_dataloader()
    images, labels = epoch(train)
    assert sorted(labels.tolist()) == sorted(dm.train_set[1].tolist())
    again = dm.train_dataloader()
    assert torch.equal(epoch(again)[0], images)  # still a function of the seed


# The decoded cache beside the data.


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A small synthetic MNIST of its own, for each cache test."""
    return write_synthetic_mnist(tmp_path / "data", num_train=60, num_test=20)


def cache_of(root: Path) -> Path:
    return root / "MNIST" / "resident-uint8.pt"


def leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob("*.partial"))


def fresh_setup(root: Path, stage: str = "fit"):
    dm = datamodule(root, pipeline="resident", val_size=10)
    dm.setup(stage)
    return dm


def assert_matches_files(dm, root: Path) -> None:
    """The data module's splits are what torchvision reads from the IDX files now."""
    reader = torchvision.datasets.MNIST(root, train=True)
    classic = datamodule(root, pipeline="torchvision", val_size=dm.hparams["val_size"])
    classic.setup("fit")
    for ours, theirs in ((dm.train_set, classic.train_set), (dm.val_set, classic.val_set)):
        indices = torch.tensor(theirs.indices)
        assert torch.equal(ours[0], reader.data[indices].unsqueeze(1))
        assert torch.equal(ours[1], reader.targets[indices])


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's reader fails when called: whatever still works used the cache."""

    class MNIST(torchvision.datasets.MNIST):  # the same name: the data module's folder is named after it
        def __init__(self, *args, **kwargs):
            raise AssertionError("decoded the IDX files again instead of using the cache")

    monkeypatch.setattr(MNISTDataModule, "dataset_class", MNIST)


def test_first_setup_writes_the_cache(data_dir):
    assert not cache_of(data_dir).exists()
    dm = fresh_setup(data_dir)
    assert cache_of(data_dir).is_file()
    assert leftovers(data_dir) == []
    assert_matches_files(dm, data_dir)
    cached = torch.load(cache_of(data_dir), weights_only=True)
    reader = torchvision.datasets.MNIST(data_dir, train=False)
    assert torch.equal(cached["splits"]["test"][0], reader.data.unsqueeze(1))
    assert torch.equal(cached["splits"]["test"][1], reader.targets)


def test_prepare_data_writes_the_cache(data_dir):
    datamodule(data_dir, pipeline="resident", val_size=10).prepare_data()
    assert cache_of(data_dir).is_file()
    assert leftovers(data_dir) == []


def test_second_setup_reuses_the_cache(data_dir, request):
    first = fresh_setup(data_dir)
    written = cache_of(data_dir).stat().st_mtime_ns
    request.getfixturevalue("no_decoding")
    for stage in ("fit", "test"):
        dm = fresh_setup(data_dir, stage)
        if stage == "fit":
            for ours, theirs in zip((*dm.train_set, *dm.val_set), (*first.train_set, *first.val_set), strict=True):
                assert torch.equal(ours, theirs)
        else:
            assert dm.test_set[0].shape == (20, 1, 28, 28)
    datamodule(data_dir, pipeline="resident", val_size=10).prepare_data()
    assert cache_of(data_dir).stat().st_mtime_ns == written  # not rewritten
    assert leftovers(data_dir) == []


def test_torchvision_pipeline_writes_no_cache(data_dir):
    dm = datamodule(data_dir, pipeline="torchvision", val_size=10)
    dm.prepare_data()
    dm.setup("fit")
    assert not cache_of(data_dir).exists()


@pytest.mark.parametrize("same_size", [False, True])
def test_rewritten_source_file_rebuilds_the_cache(data_dir, same_size):
    fresh_setup(data_dir)
    if same_size:  # new content of the same size: only the modification time tells
        write_synthetic_mnist(data_dir, num_train=60, num_test=20, seed=1)
        for path in (data_dir / "MNIST" / "raw").iterdir():
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    else:
        write_synthetic_mnist(data_dir, num_train=70, num_test=30, seed=1)
    dm = fresh_setup(data_dir)
    assert len(dm.train_set[0]) + len(dm.val_set[0]) == (60 if same_size else 70)
    assert_matches_files(dm, data_dir)
    assert torch.load(cache_of(data_dir), weights_only=True)["splits"]["test"][0].shape[0] == (20 if same_size else 30)
    assert leftovers(data_dir) == []


def corrupt(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a torch file\n" * 100)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "wrong_structure":
        torch.save([1, 2, 3], path)
    elif how == "missing_keys":
        torch.save({"splits": {}}, path)


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "wrong_structure", "missing_keys"])
def test_corrupt_cache_is_ignored_and_rebuilt(data_dir, how):
    fresh_setup(data_dir)
    corrupt(cache_of(data_dir), how)
    dm = fresh_setup(data_dir)
    assert_matches_files(dm, data_dir)
    cached = torch.load(cache_of(data_dir), weights_only=True)  # rebuilt whole
    assert torch.equal(cached["splits"]["train"][1], torchvision.datasets.MNIST(data_dir, train=True).targets)
    assert leftovers(data_dir) == []


def test_cache_of_the_previous_format_is_rebuilt(data_dir):
    """Caches written before images had a channel axis held (N, 28, 28) splits under a fingerprint of the same
    files: they must be decoded again, not served with the old layout."""
    reader = {split: torchvision.datasets.MNIST(data_dir, train=split == "train") for split in ("train", "test")}
    raw = data_dir / "MNIST" / "raw"
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    fingerprint = [[name, (raw / name).stat().st_size, (raw / name).stat().st_mtime_ns] for name in names]
    splits = {split: (dataset.data, dataset.targets) for split, dataset in reader.items()}
    torch.save({"fingerprint": fingerprint, "splits": splits}, cache_of(data_dir))
    dm = fresh_setup(data_dir)
    assert dm.train_set[0].shape[1:] == (1, 28, 28)
    assert_matches_files(dm, data_dir)
    cached = torch.load(cache_of(data_dir), weights_only=True)
    assert cached["splits"]["test"][0].shape == (20, 1, 28, 28)
    assert leftovers(data_dir) == []


def test_cache_write_on_a_full_disk_stops_with_the_path_and_leaves_the_old_cache(data_dir, monkeypatch):
    """A full disk is a UserError naming the cache (exit 2 on the command line); the partial file is removed
    and the previous cache stays whole."""
    fresh_setup(data_dir)
    before = cache_of(data_dir).read_bytes()
    os.utime(data_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte", ns=(1, 1))  # a source changed: rebuild

    def fail(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(proj.outputs.os, "replace", fail)  # the rename of every file written whole
    with pytest.raises(UserError, match=r"cannot write the data cache '.*resident-uint8\.pt': no space left"):
        fresh_setup(data_dir)
    assert cache_of(data_dir).read_bytes() == before
    assert leftovers(data_dir) == []


def test_cache_write_refused_by_the_folder_is_skipped_with_one_line(data_dir, monkeypatch, capsys):
    """A data folder that takes no new files (permissions) is no error: the cache only saves time."""

    def fail(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(proj.outputs.os, "replace", fail)
    dm = fresh_setup(data_dir)
    assert_matches_files(dm, data_dir)
    assert not cache_of(data_dir).exists()
    assert leftovers(data_dir) == []
    assert "Cannot write the data cache" in capsys.readouterr().out


def test_bit_flipped_cache_of_the_right_size_is_detected_and_rebuilt(data_dir, capsys):
    fresh_setup(data_dir)
    cached = torch.load(cache_of(data_dir), weights_only=True)
    cached["splits"]["train"][0].view(-1)[7] ^= 1  # one bit of one pixel, saved under the same fingerprint
    torch.save(cached, cache_of(data_dir))
    capsys.readouterr()
    dm = fresh_setup(data_dir)
    assert "is damaged (its checksum does not match): rebuilding it" in capsys.readouterr().out
    assert_matches_files(dm, data_dir)
    fresh_setup(data_dir)  # rebuilt whole: no message the second time
    assert "damaged" not in capsys.readouterr().out


def writable(folder: Path) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.fixture
def read_only(data_dir: Path):
    """Makes data_dir/MNIST read-only: chmod 0o555, or for root (whom chmod does not stop) `chattr +i`."""
    folder = data_dir / "MNIST"
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0
    try:
        if writable(folder):
            skip_or_fail_in_ci("cannot make a folder read-only here (root without chattr +i)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_data_dir_works_without_cache(data_dir, read_only):
    dm = fresh_setup(data_dir)
    assert_matches_files(dm, data_dir)
    datamodule(data_dir, pipeline="resident", val_size=10).prepare_data()
    assert not cache_of(data_dir).exists()
    assert leftovers(data_dir) == []


def test_read_only_data_dir_uses_an_existing_cache(data_dir, request):
    first = fresh_setup(data_dir)
    request.getfixturevalue("read_only")
    request.getfixturevalue("no_decoding")
    dm = fresh_setup(data_dir)
    assert torch.equal(dm.val_set[0], first.val_set[0])


# Under Lightning.


class Record(Callback):
    """The labels of every training batch, per epoch, and the epochs set on the training loader."""

    def __init__(self) -> None:
        self.labels: dict[int, list[list[int]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.labels.setdefault(trainer.current_epoch, []).append(batch[1].tolist())


def fit(data_dir: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Record, list[tuple[bool, int]]]:
    calls: list[tuple[bool, int]] = []
    set_epoch = ResidentLoader.set_epoch

    def spy(self: ResidentLoader, number: int) -> None:
        calls.append((self.shuffle, number))
        set_epoch(self, number)

    monkeypatch.setattr(ResidentLoader, "set_epoch", spy)
    seed_everything(seed, verbose=False)
    record = Record()
    model = MLPClassifier(**MNIST_SHAPE, hidden_sizes=(16,))
    trainer = quick_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[record])
    trainer.fit(model, datamodule=datamodule(data_dir, pipeline="resident", augment=True, batch_size=16))
    assert isinstance(trainer.train_dataloader, ResidentLoader)  # not replaced or wrapped by Lightning
    return {name: value.clone() for name, value in model.state_dict().items()}, record, calls


def test_fit_sets_the_epoch_and_is_reproducible(mnist_dir, monkeypatch):
    weights, record, calls = fit(mnist_dir, 123, monkeypatch)
    assert [number for shuffle, number in calls if shuffle] == [0, 1]  # the training loader, once per epoch
    assert sorted(record.labels) == [0, 1]
    assert [len(batches) for batches in record.labels.values()] == [4, 4]
    assert record.labels[0] != record.labels[1]  # a new order every epoch
    again, record_again, _ = fit(mnist_dir, 123, monkeypatch)
    assert record_again.labels == record.labels
    assert weights.keys() == again.keys()
    for name, value in weights.items():
        assert torch.equal(value, again[name]), name
    other, record_other, _ = fit(mnist_dir, 124, monkeypatch)
    assert record_other.labels != record.labels
    assert any(not torch.equal(value, other[name]) for name, value in weights.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu_batches():
    cpu = loader(50, shuffle=True, seed=5)
    gpu = ResidentLoader(cpu.images.cuda(), cpu.labels.cuda(), batch_size=4, mean=MEAN, std=STD, shuffle=True, seed=5)
    for (images, labels), (gpu_images, gpu_labels) in zip(cpu, gpu, strict=True):
        assert gpu_images.is_cuda and gpu_labels.is_cuda
        assert torch.equal(labels, gpu_labels.cpu())
        torch.testing.assert_close(images, gpu_images.cpu())
    augmented = [
        epoch(ResidentLoader(gpu.images, gpu.labels, 4, MEAN, STD, shuffle=True, augment=AUGMENT, seed=5))[0]
        for _ in range(2)
    ]
    assert torch.equal(*augmented)


@pytest.mark.slow
def test_ddp_ranks_get_disjoint_covering_shards(mnist_dir, tmp_path):
    """Two CPU processes under Lightning's DDP: each sees its own half of the training split, anew every epoch."""
    seed_everything(5, verbose=False)
    trainer = quick_trainer(
        strategy="ddp_spawn", devices=2, max_epochs=2, limit_train_batches=2, callbacks=[RankShards(tmp_path)]
    )
    trainer.fit(MLPClassifier(**MNIST_SHAPE, hidden_sizes=(8,)), datamodule=datamodule(mnist_dir, pipeline="resident"))
    count = NUM_TRAIN - VAL_SIZE
    for number in range(2):
        shards = [json.loads((tmp_path / f"{rank}-{number}.json").read_text()) for rank in range(2)]
        assert [(shard["rank"], shard["world_size"]) for shard in shards] == [(0, 2), (1, 2)]
        assert [len(shard["indices"]) for shard in shards] == [count // 2] * 2
        assert [shard["len"] for shard in shards] == [math.ceil(count / 2 / 32)] * 2
        assert sorted(shards[0]["indices"] + shards[1]["indices"]) == list(range(count))
    first, second = (json.loads((tmp_path / f"0-{number}.json").read_text())["indices"] for number in range(2))
    assert first != second


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["resident", "torchvision"])
def test_resume_from_checkpoint_continues_exactly(mnist_dir, tmp_path, pipeline):
    """Two epochs in one go equal one epoch, a checkpoint, and a resumed second epoch, bit for bit, with dropout
    and augmentation drawing: epoch 1's order and augmentation come from (seed, epoch), and the checkpoint's RNG
    state (RNGState) gives dropout its stream back. The resumed fit is seeded otherwise, so nothing but the
    checkpoint can make it equal."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from proj.callbacks.rng_state import RNGState

    def fit(seed: int, max_epochs: int, ckpt_path: str | None = None, checkpoint_dir: Path | None = None):
        seed_everything(seed, verbose=False)
        model = MLPClassifier(**MNIST_SHAPE, hidden_sizes=(32,), dropout=0.3)
        callbacks: list[Callback] = [RNGState()]
        if checkpoint_dir:
            callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True))
        trainer = quick_trainer(
            max_epochs=max_epochs, limit_train_batches=6, enable_checkpointing=bool(checkpoint_dir), callbacks=callbacks
        )
        data = datamodule(mnist_dir, pipeline=pipeline, augment=True)
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model

    straight = fit(7, 2)
    fit(7, 1, checkpoint_dir=tmp_path / "ckpt")
    resumed = fit(8, 2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    other = fit(8, 2)
    for (name, expected), actual in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(actual, expected), name
    assert not torch.equal(other.net[1].weight, straight.net[1].weight)  # the seed matters: equality is no accident
