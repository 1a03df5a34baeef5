"""Faults on cue for the slow fault tests, imported by `python -m proj.fit` subprocesses (tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SignalAt(Callback):
    """Sends `signum` to this process `times` times after training batch `batch` of epoch `epoch` (mid-epoch, on
    purpose)."""

    def __init__(self, epoch: int, batch: int, signum: int, times: int = 1) -> None:
        self.epoch, self.batch, self.signum, self.times = epoch, batch, signum, times

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


class PoisonAt(Callback):
    """Sets a weight to NaN before training batch `batch` of epoch `epoch`: the next loss is NaN."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def die_while_writing(nth_last: int) -> None:
    """SIGKILL this process half-way through writing last.ckpt for the `nth_last` time.

    The checkpoint writer writes a partial file and renames it into place: the kill lands after half the
    bytes are on disk and before the rename, the moment a non-atomic writer would leave half a last.ckpt.
    """
    real_replace, count = os.replace, 0

    def replace(src: str | Path, dst: str | Path) -> None:
        nonlocal count
        if Path(dst).name == "last.ckpt":
            count += 1
            if count == nth_last:
                data = Path(src).read_bytes()
                Path(src).write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace  # type: ignore[assignment]


def slow_version_choice(seconds: float) -> None:
    """TensorBoardLogger picks the highest version_N plus one, then creates the folder: widen that gap, as a slow
    shared file system does, so that two runs started together would both pick the same N."""
    from lightning.pytorch.loggers import TensorBoardLogger

    choose = TensorBoardLogger._get_next_version

    def slowly(self: TensorBoardLogger) -> int:
        version = choose(self)
        time.sleep(seconds)
        return version

    TensorBoardLogger._get_next_version = slowly  # type: ignore[method-assign]


def first_trials_together(folder: Path, workers: int) -> None:
    """A sweep worker asks for its first trial only once `workers` workers have come that far (a file each in
    `folder`): however far apart the processes start, all of them open the study before any trial is in it."""
    from optuna import Study

    ask = Study.ask

    def together(self: Study, *args, **kwargs):
        if not (arrived := folder / str(os.getpid())).exists():
            arrived.touch()
            deadline = time.monotonic() + 120
            while len(list(folder.iterdir())) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
        return ask(self, *args, **kwargs)

    Study.ask = together  # type: ignore[method-assign]


if __name__ == "__main__":  # python fault_injection.py NTH_LAST|slow_versions [proj.fit flags...]
    if sys.argv[1] == "together":  # python fault_injection.py together FOLDER WORKERS [proj.sweep flags...]
        first_trials_together(Path(sys.argv[2]), int(sys.argv[3]))
        import proj.sweep

        proj.sweep.main(sys.argv[4:])
    else:
        if sys.argv[1] == "slow_versions":
            slow_version_choice(3.0)
        else:
            die_while_writing(int(sys.argv[1]))
        import proj.fit

        proj.fit.main(sys.argv[2:])


class KillAt(Callback):
    """Kills the process group `pgid` (a server and its workers) after validation epoch `epoch`, and waits until
    `port` refuses connections."""

    def __init__(self, epoch: int, pgid: int, port: int) -> None:
        self.epoch, self.pgid, self.port = epoch, pgid, port

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch != self.epoch or trainer.sanity_checking:
            return
        os.killpg(self.pgid, signal.SIGKILL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.1)
