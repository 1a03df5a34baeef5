"""What proj relies on in its dependencies beyond their public APIs. Each dependency involved is pinned below its
next release in pyproject.toml; each test here fails when an upgrade changes the behaviour, naming what to revisit."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from proj.callbacks import HParamsMetrics
from proj.callbacks.checkpoint import ResumableCheckpoint


class StalledModel(BoringModel):
    """A validation accuracy that never improves after the first epoch, and nested hyperparameters."""

    def __init__(self, optimizer: dict | None = None, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.5)
        return super().validation_step(batch, batch_idx)


def fit(tmp_path: Path, callback, logger=False, epochs: int = 3) -> Trainer:
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[callback],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(StalledModel(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}))
    return trainer


def last_epoch(folder: Path) -> int:
    return torch.load(folder / "last.ckpt", weights_only=True)["epoch"]


def test_save_last_alone_falls_behind_a_stalled_metric_and_resumable_checkpoint_does_not(tmp_path):
    """Lightning 2.6 writes last.ckpt only in a step that also wrote a top-k checkpoint (before 2.6 it wrote it
    every epoch): once the metric stalls, `--ckpt_path last` would repeat epochs. When this test fails because
    the plain callback keeps last.ckpt current again, ResumableCheckpoint (callbacks/checkpoint.py) can go."""
    options = {"monitor": "val/acc", "mode": "max", "save_last": True}
    fit(tmp_path, ModelCheckpoint(dirpath=tmp_path / "plain", **options))
    fit(tmp_path, ResumableCheckpoint(dirpath=tmp_path / "resumable", **options))
    assert last_epoch(tmp_path / "plain") == 0  # the epoch of the one top-k write
    assert last_epoch(tmp_path / "resumable") == 2  # the latest


def test_hparams_metrics_writes_flattened_hyperparameters_and_declares_metrics_without_points(tmp_path):
    """HParamsMetrics uses Lightning's private `_flatten_dict`/`_sanitize_params` and torch's
    `SummaryWriter._get_file_writer` (callbacks/hparams_metrics.py); this is what they must produce."""
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    fit(tmp_path, HParamsMetrics(("val/acc_best", "test/acc")), logger=logger, epochs=1)
    events = EventAccumulator(str(logger.log_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == ["val/acc_best", "test/acc"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    params = dict(session.session_start_info.hparams)
    assert params["optimizer/class_path"].string_value == "torch.optim.SGD"
    assert params["optimizer/init_args/lr"].number_value == 0.1
    assert params["lr"].number_value == 0.1
    assert "val/acc_best" not in events.Tags()["scalars"]  # declared as columns, not logged as a point at step 0
