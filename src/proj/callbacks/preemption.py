"""SIGTERM (preemption, `kill`, a scheduler's time limit) and Ctrl-C end a fit with a checkpoint to resume from."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

NAMES: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}


class Preemption(Callback):
    """Saves `last.ckpt` when Lightning stops a fit on SIGTERM or Ctrl-C, and says how to resume.

    Lightning turns SIGTERM into a stop after the current batch, but saves nothing; Ctrl-C it turns into an
    exit at whatever point the KeyboardInterrupt lands. Here the first Ctrl-C of a fit is a SIGTERM (the batch
    finishes, the position within the epoch is saved); a second one aborts at once (checkpoints are written
    atomically, so nothing is left half-written). The checkpoint goes where `--ckpt_path last` looks, so
    resuming takes the run's own config and that flag. The exit status is 128 + the signal: 143 or 130.
    """

    def __init__(self) -> None:
        self.stop_signal: int | None = None  # the signal that stopped the last fit, if one did
        self._previous_handler: Any = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop_signal = None
        if threading.current_thread() is threading.main_thread():  # only it may set signal handlers
            self._previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is not None:  # the second Ctrl-C: abort now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.stop_signal = signal.SIGINT
        print("\nCtrl-C: stopping after this batch and saving last.ckpt (Ctrl-C again aborts at once).", flush=True)
        signal.raise_signal(signal.SIGTERM)  # Lightning's own handler then stops the fit after this batch

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException) or not isinstance(checkpoint, ModelCheckpoint):
            return
        self.stop_signal = self.stop_signal or signal.SIGTERM
        exception.code = 128 + self.stop_signal  # SIGTERMException is a SystemExit: the status the shell sees
        if checkpoint.dirpath is None:
            return  # stopped before the run folder existed: nothing to save
        path = Path(checkpoint.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        config = Path(trainer.log_dir or ".") / "config.yaml"  # on every rank: log_dir broadcasts
        if trainer.is_global_zero:
            print(
                f"\nStopped by {NAMES[self.stop_signal]} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; saved {path}.\n"
                f"Resume with: python -m proj.fit --config {config} --ckpt_path last",
                flush=True,
            )
