"""The torchvision pipeline's training loader: order and augmentation from (seed, epoch, batch), whatever the workers,
resumable mid-epoch, sharded under DDP, and left in place by Lightning."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from conftest import MNIST_SHAPE, NUM_TRAIN, VAL_SIZE, datamodule, quick_trainer
from proj.data.streaming import EpochLoader
from proj.models import MLPClassifier


def train_loader(
    data_dir, epoch: int = 0, rank: int = 0, world_size: int = 1, augment: bool = True, **kwargs
) -> EpochLoader:
    """The (augmented) training loader of the synthetic MNIST on the torchvision pipeline, set to `epoch`."""
    data = datamodule(data_dir, pipeline="torchvision", augment=augment, **kwargs)
    if world_size > 1:
        data.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader, EpochLoader)
    loader.sampler.set_epoch(epoch)
    return loader


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]


def assert_same(first, second) -> None:
    assert len(first) == len(second)
    for (images, labels), (their_images, their_labels) in zip(first, second, strict=True):
        assert torch.equal(labels, their_labels)
        assert torch.equal(images, their_images)


def test_an_epoch_is_a_function_of_seed_and_epoch_whatever_the_workers_and_the_global_rng(mnist_dir):
    seed_everything(3, verbose=False)
    alone, workers = train_loader(mnist_dir, epoch=1), train_loader(mnist_dir, epoch=1, num_workers=2)
    unaugmented = batches(train_loader(mnist_dir, epoch=1, augment=False))
    first = batches(alone)
    torch.manual_seed(12345)  # dropout's stream, elsewhere in the fit: it has no say in the data
    state = torch.get_rng_state()
    assert_same(first, batches(workers))
    assert torch.equal(torch.get_rng_state(), state)  # and the loader drew nothing from it
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, unaugmented, strict=True))  # the same order
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(first, unaugmented, strict=True))  # augmented
    seed_everything(3, verbose=False)
    labels, next_labels = (torch.cat([y for _, y in batches(train_loader(mnist_dir, epoch=e))]) for e in (1, 2))
    assert sorted(next_labels.tolist()) == sorted(labels.tolist())
    assert not torch.equal(next_labels, labels)  # a new order every epoch


def test_resume_at_goes_on_mid_epoch_with_the_batches_and_augmentations_not_yet_seen(mnist_dir):
    seed_everything(3, verbose=False)
    uninterrupted = train_loader(mnist_dir, epoch=2)
    whole = batches(uninterrupted)
    assert uninterrupted.position == len(whole) == len(uninterrupted) == 16  # 500 images in batches of 32
    resumed = train_loader(mnist_dir, epoch=2)
    resumed.resume_at = {2: 5}
    assert resumed.position == 0
    assert_same(batches(resumed), whole[5:])
    assert resumed.position == 16
    assert len(batches(resumed)) == 16  # once only: iterating again gives the whole epoch
    elsewhere = train_loader(mnist_dir, epoch=3)
    elsewhere.resume_at = {2: 5}  # an end-of-epoch checkpoint: Lightning goes on with the next epoch
    assert len(batches(elsewhere)) == 16


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_covering_shards(mnist_dir, world_size):
    seed_everything(3, verbose=False)
    count = NUM_TRAIN - VAL_SIZE
    shards = [
        list(train_loader(mnist_dir, epoch=1, rank=rank, world_size=world_size).sampler) for rank in range(world_size)
    ]
    indices = [[index for index, _ in shard] for shard in shards]
    per_rank = -(-count // world_size)
    assert [len(shard) for shard in indices] == [per_rank] * world_size
    every = sorted(index for shard in indices for index in shard)
    assert set(every) == set(range(count))  # covering; padded by wrapping, as DistributedSampler does
    assert len(every) - count == per_rank * world_size - count
    seeds = {seed for shard in shards for _, seed in shard}
    assert len(seeds) == world_size * -(-per_rank // 32)  # a seed per batch of each rank


def test_lightning_keeps_the_loader_and_sets_its_epoch(mnist_dir):
    epochs = []

    class Record(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            epochs.append((type(trainer.train_dataloader).__name__, trainer.train_dataloader.sampler.epoch))

    seed_everything(3, verbose=False)
    trainer = quick_trainer(max_epochs=2, limit_train_batches=2, callbacks=[Record()])
    trainer.fit(
        MLPClassifier(**MNIST_SHAPE, hidden_sizes=(8,)), datamodule=datamodule(mnist_dir, pipeline="torchvision")
    )
    assert epochs == [("EpochLoader", 0), ("EpochLoader", 1)]
