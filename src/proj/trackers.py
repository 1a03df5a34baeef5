"""The experiment trackers a run logs to besides its folder (MLflow, W&B; TensorBoard and CSV write into it): the
checks that make a tracker that cannot work fail before the run starts, and what each is sent in its own form
(the config file, images)."""

from __future__ import annotations

import importlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import Namespace
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from proj.errors import UserError
from proj.runs import is_logger, logger_configs

# A tracker's package is proj's extra of the same name: `pip install -e '.[mlflow]'`.
EXTRAS: dict[type, str] = {MLFlowLogger: "mlflow", WandbLogger: "wandb"}
URI_FLAG = "--trainer.logger.init_args.tracking_uri"


def check_loggers(config: Namespace) -> None:
    """Before anything is written: every tracker's package is installed, an MLflow server answers and takes the
    experiment's name, a W&B project name is one W&B accepts."""
    for entry in logger_configs(config):
        for logger_type, extra in EXTRAS.items():
            if is_logger(entry, logger_type):
                try:
                    importlib.import_module(extra)
                except ImportError as err:
                    raise UserError(
                        f"--trainer.logger {logger_type.__name__} needs the {extra} package, which is not installed: "
                        f"pip install -e '.[{extra}]'"
                    ) from err
        if is_logger(entry, MLFlowLogger):
            check_mlflow(entry.init_args)
        elif is_logger(entry, WandbLogger):
            check_wandb_project(entry.init_args.get("project"))


def mlflow_uri(init_args: Namespace) -> str:
    """Where MLFlowLogger logs: its tracking_uri, else MLFLOW_TRACKING_URI, else the file store in save_dir."""
    return str(
        init_args.get("tracking_uri")
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"file:{init_args.get('save_dir') or './mlruns'}"
    )


def check_mlflow(init_args: Namespace) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri, name = mlflow_uri(init_args), init_args.get("experiment_name")
    if uri.startswith(("http://", "https://")):
        # MLflow's client retries a refused connection for minutes: one quick request says whether anyone answers.
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
        except urllib.error.HTTPError:
            pass  # it answers (a proxy or an authenticating server may refuse /health itself)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UserError(
                f"the MLflow server {uri} cannot be reached ({getattr(reason, 'strerror', None) or reason}): start "
                f"it (make mlflow-server) or point {URI_FLAG} at a running one."
            ) from err
    try:
        experiment = MlflowClient(uri).get_experiment_by_name(name)
    except MlflowException as err:
        reason = err.message.split(". ")[0]
        raise UserError(f"MLflow cannot use {URI_FLAG} {uri}: {reason}. Use sqlite:///mlflow.db or a server.") from err
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"the MLflow experiment {name!r} was deleted, and MLflow keeps deleted experiments and refuses their name: "
            f"restore it (mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another "
            "--trainer.logger.init_args.experiment_name."
        )


def check_wandb_project(project: str | None) -> None:
    """W&B's own validation of a project name (it would refuse it only when the run starts)."""
    import wandb

    try:
        wandb.Settings(project=project)
    except Exception as err:  # pydantic's ValidationError around W&B's UsageError: its message is the last line
        reason = str(err).strip().splitlines()[-1].strip()
        reason = reason.removeprefix("Value error, ").split(" [type=")[0]
        raise UserError(f"--trainer.logger.init_args.project: {reason}; choose another name.") from err


IMAGE_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)  # the loggers that show images


def log_image(loggers: Sequence[Logger], tag: str, pixels: np.ndarray, step: int) -> None:
    """An (H, W, 3) uint8 image to each logger that takes images (IMAGE_LOGGERS); the others skip it."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, pixels, global_step=step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, pixels, key=tag, step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(tag, [pixels], step=step)


def log_config(loggers: Sequence[Logger], config_file: Path, config: dict[str, Any]) -> None:
    """The run's config.yaml to each tracker that keeps one: an MLflow artifact, W&B's run config (`config`)."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(config_file))
        elif isinstance(logger, WandbLogger):
            logger.experiment.config.update({"config": config}, allow_val_change=True)
