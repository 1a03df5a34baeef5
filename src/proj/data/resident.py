"""Batches sliced from tensors held in memory (on the GPU when training there), transformed a batch at a time.

The classic pipeline turns every image into a PIL image, converts, normalises and collates it alone: on a
2-core CPU that is most of an MLP's epoch. Here a split is one uint8 tensor (N, C, H, W) on the training device; a
batch is an index slice, augmented and normalised as a whole, with per-sample random parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def random_affine(
    images: Tensor,
    degrees: float = 0.0,
    translate: float = 0.0,
    generator: torch.Generator | None = None,
    scale: float = 0.0,
    flip: bool = False,
    crop: int = 0,
) -> Tensor:
    """Rotate each image by up to ±`degrees`, shift it by up to ±`translate` of its size, zoom it by a factor in
    [1 - `scale`, 1 + `scale`], mirror it left-right with probability 1/2 (`flip`) and shift it by a whole number
    of pixels in [-`crop`, `crop`] (a random crop of the image padded by `crop`), independently per image.

    `images` is (B, C, H, W) float; the uncovered border is filled with 0 (black). One resampling does it all.
    """
    count, width, height = images.shape[0], images.shape[-1], images.shape[-2]
    uniform = torch.rand(count, 4, generator=generator, device=images.device) * 2 - 1  # in [-1, 1)
    angle = uniform[:, 0] * math.radians(degrees)
    shift = uniform[:, 1:3] * translate * 2  # affine_grid spans [-1, 1]: a fraction f of the size is 2f
    zoom = 1 + uniform[:, 3] * scale  # the grid maps output to input pixels: dividing by it enlarges
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    mirror = torch.ones_like(cos)
    if flip or crop:  # drawn after the others, so that digits' augmentation stays the stream it always was
        extra = torch.rand(count, 3, generator=generator, device=images.device)
        if flip:
            mirror = torch.where(extra[:, 0] < 0.5, -1.0, 1.0)
        if crop:
            pixels = (extra[:, 1:] * (2 * crop + 1)).floor() - crop  # whole pixels in [-crop, crop]
            shift = shift + pixels * 2 / torch.tensor([width, height], device=images.device)
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1), torch.stack([sin * mirror, cos, shift[:, 1]], dim=1)],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def stream_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The seed of a batch's random draws, a function of (seed, epoch, rank, batch number) alone; < 2**63, as
    manual_seed takes. Rank -1 is the stream all ranks share."""
    return (((seed * 1_000_003 + epoch) * 1_009 + rank + 1) * 1_000_003 + batch) % 2**63


class ResidentLoader:
    """An iterable of normalised (images, labels) batches, or images alone when `labels` is None.

    The order of an epoch is a function of (seed, epoch), a batch's augmentation of (seed, epoch, rank,
    batch number), so a resumed run replays exactly the batches an uninterrupted one would see, from the
    start of an epoch or, after `resume_at`, from the middle. With `world_size` > 1 each rank iterates a
    disjoint shard covering the split, padded by wrapping around as DistributedSampler does.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        batch_size: int,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        shuffle: bool = False,
        augment: dict[str, Any] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        # Per channel, shaped to broadcast over (B, C, H, W): x / 255 * scale - shift == (x / 255 - mean) / std.
        mean_, std_ = (
            torch.tensor(value, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1) for value in (mean, std)
        )
        self.scale, self.shift = 1 / (255 * std_), mean_ / std_
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0  # batches of the current epoch handed out so far
        self.resume_at: dict[int, int] = {}  # {epoch: batches already trained}, for one mid-epoch restart
        # Lightning reads these two as on a DataLoader, and calls `sampler.set_epoch(epoch)` every epoch.
        self.sampler, self.batch_sampler = self, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self, device: torch.device | str, rank: int, batch: int = 0) -> torch.Generator:
        """A reproducible stream per (seed, epoch, rank, batch); rank -1 is the one all ranks share."""
        return torch.Generator(device=device).manual_seed(stream_seed(self.seed, self.epoch, rank, batch))

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in order."""
        count = len(self.images)
        if self.shuffle:
            # Every rank draws the same permutation and takes its own slice of it.
            order = torch.randperm(count, generator=self._generator("cpu", rank=-1))
        else:
            order = torch.arange(count)
        per_rank = math.ceil(count / self.world_size)
        padded = order.repeat(math.ceil(per_rank * self.world_size / count))[: per_rank * self.world_size]
        return padded[self.rank :: self.world_size]

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.images) / self.world_size) / self.batch_size)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        start, self.resume_at = self.resume_at.get(self.epoch, 0), {}
        batches = self.indices().to(self.images.device).split(self.batch_size)
        self.position = start
        for number, batch in enumerate(batches[start:], start):
            images = self.images.index_select(0, batch).float()  # half the time of images[batch]
            if self.augment:
                generator = self._generator(self.images.device, self.rank, number)
                images = random_affine(images, generator=generator, **self.augment)
            images = images.mul_(self.scale).sub_(self.shift)
            self.position = number + 1
            yield images if self.labels is None else (images, self.labels.index_select(0, batch))
