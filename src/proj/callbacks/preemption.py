"""SIGTERM (preemption, `kill`, a scheduler's time limit) ends a fit with a checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class Preemption(Callback):
    """Saves `last.ckpt` when Lightning stops a fit on SIGTERM, and says how to resume.

    Lightning already turns SIGTERM into a stop after the current batch, but saves nothing. The checkpoint
    goes where `--ckpt_path last` looks, so resuming takes the run's own config and that flag.
    """

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException) or not isinstance(checkpoint, ModelCheckpoint):
            return
        if checkpoint.dirpath is None:
            return  # stopped before the run folder existed: nothing to save
        path = Path(checkpoint.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        config = Path(trainer.log_dir or ".") / "config.yaml"  # on every rank: log_dir broadcasts
        if trainer.is_global_zero:
            print(
                f"\nStopped by SIGTERM at epoch {trainer.current_epoch}, step {trainer.global_step}; saved {path}.\n"
                f"Resume with: python -m proj.fit --config {config} --ckpt_path last",
                flush=True,
            )
