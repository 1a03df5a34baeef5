"""The torchvision pipeline's training loader, made as resumable as the resident one.

A plain shuffled DataLoader draws its order, and its transforms their randomness, from torch's global RNG: a run
resumed from a mid-epoch checkpoint can neither skip what the epoch had trained nor redraw its augmentations.
Here the order of an epoch is DistributedSampler's, a function of (seed, epoch) (each rank its own shard), and
each batch's transforms draw from a seed of (seed, epoch, rank, batch number), whichever worker loads it. So a
resumed run, even from the middle of an epoch, sees exactly the batches and augmentations an uninterrupted one
would, with any number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from proj.data.resident import stream_seed


class EpochSampler(DistributedSampler):
    """DistributedSampler's order, yielding (index, seed of its batch); from `resume_at`'s batch in that epoch.

    A DistributedSampler (of any world size), so Lightning leaves it in place and calls `set_epoch` on it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed % 2**63)
        self.batch_size = batch_size
        self.resume_at: dict[int, int] = {}  # {epoch: batches already trained}, for one mid-epoch restart

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.resume_at = self.resume_at.get(self.epoch, 0), {}
        order = list(super().__iter__())
        for number in range(start, -(-len(order) // self.batch_size)):
            seed = stream_seed(self.seed, self.epoch, self.rank, number)
            for index in order[number * self.batch_size : (number + 1) * self.batch_size]:
                yield index, seed


class SeededBatches(Dataset[Any]):
    """`dataset`'s items for EpochSampler's (index, seed) pairs, a batch fetched under its seed; torch's global
    RNG is left as it was (dropout's draws do not depend on the data)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(items[0][1])
            return [self.dataset[index] for index, _ in items]


class EpochLoader(DataLoader):
    """A DataLoader over an EpochSampler that knows, like ResidentLoader, which epoch it is in and how many of its
    batches it has handed out (what a mid-epoch checkpoint saves)."""

    sampler: EpochSampler

    def __init__(self, dataset: Dataset[Any], batch_size: int, seed: int, rank: int, world_size: int, **kwargs: Any):
        sampler = EpochSampler(dataset, batch_size, seed, rank, world_size)
        # Its own generator for the workers' base seed: a DataLoader would draw it from the global RNG each
        # epoch, and a resumed run draws at another moment than the run it continues.
        generator = torch.Generator().manual_seed(sampler.seed)
        super().__init__(SeededBatches(dataset), batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)
        self.position = 0  # batches of the current epoch handed out so far

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def resume_at(self) -> dict[int, int]:
        return self.sampler.resume_at

    @resume_at.setter
    def resume_at(self, value: dict[int, int]) -> None:
        self.sampler.resume_at = value

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self.position = self.resume_at.get(self.epoch, 0)
        for batch in super().__iter__():
            self.position += 1
            yield batch
