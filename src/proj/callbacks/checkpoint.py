"""ModelCheckpoint whose last.ckpt is always the latest state: what `--ckpt_path last` resumes from."""

from __future__ import annotations

import os

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableCheckpoint(ModelCheckpoint):
    """Keeps the best checkpoints by the monitored metric, and rewrites `last.ckpt` after every epoch.

    Lightning 2.6's `save_last=True` writes last.ckpt only when a top-k checkpoint was written in the same
    step (before 2.6 it wrote it every epoch; the change is described in openclimatefix/pvnet#544): once the
    monitored metric stops improving, last.ckpt falls behind, and a resumed run silently repeats every epoch
    since the best one. No public hook writes last.ckpt alone, so this calls ModelCheckpoint's private
    methods: lightning is pinned below 2.7, and tests/test_upstream.py fails when the upstream behaviour
    changes (then this class can go).
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # In the run folder whatever the loggers (RunTrainer.log_dir): Lightning's own choice is the first logger's
        # save_dir/name/version, which for MLflow is <mlruns>/<experiment id>/<run id> or the working folder.
        if self.dirpath is None and trainer.loggers and (log_dir := trainer.log_dir) is not None:
            self.dirpath = os.path.join(log_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
