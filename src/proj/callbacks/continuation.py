"""Going on from a checkpoint (`--ckpt_path`), perhaps for longer: one rule for every learning-rate schedule.

A resumed run restores its scheduler's state, settings included, so the schedule stays the one the run
started with. Schedules that extend by themselves (StepLR, ExponentialLR, ReduceLROnPlateau, WarmupDecay,
none) simply go on. Two are sized to their run and have no sensible "longer": OneCycleLR (torch fails one
step past its end) and CosineAnnealingLR (past T_max the rate climbs back up). Continuing those beyond
their end is refused before anything is written, with the command that trains longer instead: a new run
that starts from the checkpoint's weights with a schedule of its own (`--weights_from`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR

from proj.checkpoints import read_checkpoint
from proj.errors import UserError
from proj.models import ImageClassifier
from proj.models.base import SCHEDULE_KEY


def past_its_end(scheduler: Any, saved: dict[str, Any], length: float, saved_length: int | None) -> str | None:
    """Why a schedule restored from `saved` cannot run for `length` scheduler steps; None when it can.

    `saved_length` is the length of the run that wrote the checkpoint (absent in older checkpoints).
    """
    if isinstance(scheduler, OneCycleLR) and length > (planned := int(saved["total_steps"])):
        return f"its OneCycleLR schedule is one cycle over the {planned} steps of the run it was made for"
    if isinstance(scheduler, CosineAnnealingLR):
        t_max = int(saved["T_max"])
        if length > max(t_max, saved_length or t_max):
            return f"its CosineAnnealingLR anneals the rate over T_max={t_max} steps, and past them it climbs back up"
    return None


class Continuation(Callback):
    """Refuses, before the run writes anything, to continue a schedule past its end (see the module's docstring).

    It runs at the start of the fit, once the scheduler for the new run exists and before the checkpoint's
    state is restored into it; the run's record (RunRecord, a later callback) is written only after it.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None or not isinstance(pl_module, ImageClassifier):
            return
        path = Path(trainer.ckpt_path)
        checkpoint = read_checkpoint(path)
        length = pl_module.schedule_length()
        for config, saved in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers") or [], strict=False):
            if (reason := past_its_end(config.scheduler, saved, length, checkpoint.get(SCHEDULE_KEY))) is None:
                continue
            unit = "epochs" if config.interval == "epoch" else "optimizer steps"
            config_file = path.resolve().parent.parent / "config.yaml"
            config_flag = f"--config {config_file} " if config_file.is_file() else ""
            raise UserError(
                f"cannot continue {str(path)!r} to {length:g} {unit}: {reason.replace('steps', unit)}. The run is "
                "left as it was. To train longer, start a new run from its weights with a fresh schedule: python -m "
                f"proj.fit {config_flag}--weights_from {path} --trainer.max_epochs N (or resume with the run's own "
                "--trainer.max_epochs)."
            )
