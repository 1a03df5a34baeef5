"""Going on from a checkpoint (`--ckpt_path`), perhaps for longer: one rule for every learning-rate schedule.

A resumed run restores its scheduler's state, settings included, so the schedule stays the one the run
started with. Schedules that extend by themselves (StepLR, ExponentialLR, ReduceLROnPlateau, WarmupDecay,
none) simply go on. Two are sized to their run and have no sensible "longer": OneCycleLR (torch fails one
step past its end) and CosineAnnealingLR (past T_max the rate climbs back up). Continuing those beyond
their end is refused before the run writes anything (Lightning opens the TensorBoard file as a fit starts),
with the command that trains longer instead: a new run that starts from the checkpoint's weights with a
schedule of its own (`--weights_from`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR

from proj.errors import UserError
from proj.models.base import RUN_LENGTH_KEY


def past_its_end(scheduler: Any, saved: dict[str, Any], length: float, saved_length: float | None) -> str | None:
    """Why a schedule restored from `saved` cannot run for `length` scheduler steps; None when it can.

    `saved_length` is the length of the run that wrote the checkpoint.
    """
    if isinstance(scheduler, OneCycleLR) and length > (planned := int(saved["total_steps"])):
        return f"its OneCycleLR schedule is one cycle over the {planned} steps of the run it was made for"
    if isinstance(scheduler, CosineAnnealingLR):
        t_max = int(saved["T_max"])
        if length > max(t_max, saved_length or t_max):
            return f"its CosineAnnealingLR anneals the rate over T_max={t_max} steps, and past them it climbs back up"
    return None


def new_length(run: dict[str, Any], trainer: Trainer, interval: str) -> float:
    """The continued run's length in scheduler steps, from the Trainer's limits and the run that wrote the
    checkpoint (`run`: its length, max_epochs and max_steps): epochs, or optimizer steps at that run's rate
    per epoch (a continuation reads the same data with the same batch size)."""
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
    if interval == "epoch":
        return epochs
    length = epochs * run["length"] / run["max_epochs"] if run["max_steps"] < 0 else math.inf
    return min(length, trainer.max_steps) if trainer.max_steps >= 0 else length


def check_continuation(checkpoint: dict[str, Any], path: str | Path, trainer: Trainer, config: Any) -> None:
    """Refuse, before the fit starts, to continue a schedule past its end (see the module's docstring); `config`
    is what the model's `configure_optimizers` returns for this run."""
    run = checkpoint.get(RUN_LENGTH_KEY)
    saved_schedulers = checkpoint.get("lr_schedulers") or []
    if not isinstance(run, dict) or not saved_schedulers:
        return  # no schedule, or a checkpoint older than this check: Lightning restores what there is
    if not isinstance(config, dict):
        return
    scheduler, interval = config["lr_scheduler"]["scheduler"], config["lr_scheduler"]["interval"]
    length = new_length(run, trainer, interval)
    if (reason := past_its_end(scheduler, saved_schedulers[0], length, run["length"])) is None:
        return
    unit = "epochs" if interval == "epoch" else "optimizer steps"
    config_file = Path(path).parent.parent / "config.yaml"
    config_flag = f"--config {config_file} " if config_file.is_file() else ""
    raise UserError(
        f"cannot continue {str(path)!r} to {trainer.max_epochs} epochs: {reason.replace('steps', unit)}. The run "
        "is left as it was. To train longer, start a new run from its weights with a fresh schedule: python -m "
        f"proj.fit {config_flag}--weights_from {path} --trainer.max_epochs N (or resume with the run's own "
        "--trainer.max_epochs)."
    )
