"""The Trainer of proj's runs: its `log_dir` is the run's folder, whatever the loggers."""

from __future__ import annotations

from lightning.pytorch import Trainer


class RunTrainer(Trainer):
    """A Trainer whose `log_dir` is the run folder (logs/<data>/version_N) that proj.runs.RunFolder chose.

    Lightning's `log_dir` is the first logger's `save_dir` unless that is a TensorBoard or CSV logger: None for an
    MLflow server or SQLite store, the mlruns/ root for MLflow's file store, `.` for W&B (Lightning #19441, #20184,
    #17168). What is written there (config.yaml, run.yaml, checkpoints) would then be lost or collide, run after
    run. `run_dir` is set by the CLI; without one (no logger) Lightning's answer stands.
    """

    run_dir: str | None = None

    @property
    def log_dir(self) -> str | None:
        run_dir = self.strategy.broadcast(self.run_dir)  # rank 0's choice, on every rank (it must run on all)
        return run_dir if run_dir is not None else super().log_dir
