"""Learning-rate schedules beyond torch's own, and the type the models accept for one.

torch ships StepLR, ExponentialLR, CosineAnnealingLR, ReduceLROnPlateau and more; any of them, or a class
defined here, is chosen with `--model.scheduler NAME`. Add a schedule as a class in this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


class WarmupDecay(LambdaLR):
    """Linear warmup, then exponential decay: lr * (t + 1) / warmup for t < warmup, else lr * gamma ** (t + 1 - warmup).

    Warmup keeps the first, largest updates of a freshly initialised network small (they are the ones most
    likely to diverge at a high learning rate); the decay then anneals like ExponentialLR. `t` counts
    scheduler steps: epochs by default, optimizer steps with `--model.scheduler_interval step`.
    """

    def __init__(self, optimizer: Optimizer, warmup: int = 1, gamma: float = 0.7, last_epoch: int = -1) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 step, got {warmup}")
        self.warmup, self.gamma = warmup, gamma
        super().__init__(optimizer, self.factor, last_epoch=last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return float(self.gamma ** (step + 1 - self.warmup))


def spans_the_run(arguments: Mapping[str, Any]) -> bool:
    """Whether a scheduler given these arguments needs the run's length: OneCycleLR without `total_steps` or
    `epochs` (a scheduler without a `total_steps` argument never does)."""
    return arguments.get("total_steps", 0) is None and arguments.get("epochs") is None


SchedulerCallable = Callable[[Optimizer], LRScheduler]  # ReduceLROnPlateau is an LRScheduler too
