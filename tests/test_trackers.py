"""Any tracker, one run folder: config.yaml, run.yaml and checkpoints in logs/<data>/version_N whatever the loggers
(TensorBoard, CSV, MLflow's file and SQLite stores, W&B, several at once); what each tracker is given; a tracker
whose package is missing fails before the run writes anything."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from wandb.proto import wandb_internal_pb2

import proj.cli
import proj.fit
from conftest import CONFIGS, ROOT, run_fit, tiny_run_args, user_error

MLFLOW = "lightning.pytorch.loggers.MLFlowLogger"


def run_files(run: Path) -> set[str]:
    """What proj itself writes into a run folder."""
    return {name for name in ("config.yaml", "run.yaml", "checkpoints/last.ckpt") if (run / name).is_file()}


def mlflow_runs(uri: str, experiment: str = "proj") -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.parametrize(
    "logger",
    [
        ["--trainer.logger", "CSVLogger"],
        ["--trainer.logger", MLFLOW, "--trainer.logger.init_args.tracking_uri", "file:{tmp_path}/mlruns"],
    ],
    ids=["csv", "mlflow-file-store"],
)
def test_each_run_has_its_own_folder_whatever_the_logger(mnist_dir, tmp_path, monkeypatch, logger):
    """MLflow's file store: config.yaml went into mlruns/ itself and the second run died (Lightning #20184)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = [flag.format(tmp_path=tmp_path) for flag in logger]  # absolute: MLflow caches a store by its URI
    for _ in range(2):
        run_fit(mnist_dir, tmp_path / "logs", *logger)
    runs = tmp_path / "logs" / "mnist"
    assert sorted(path.name for path in runs.iterdir()) == ["version_0", "version_1"]
    for run in runs.iterdir():
        assert run_files(run) == {"config.yaml", "run.yaml", "checkpoints/last.ckpt"}
    if "CSVLogger" in logger:
        assert (runs / "version_1" / "metrics.csv").is_file()
    else:
        assert not (tmp_path / "mlruns" / "config.yaml").exists()
        assert [tracked.info.run_name for tracked in mlflow_runs(f"file:{tmp_path}/mlruns", "lightning_logs")] == [
            "mnist/version_0",
            "mnist/version_1",
        ]


def test_mlflow_sqlite_gets_the_run_its_params_and_config_and_resumes_in_the_folder(mnist_dir, tmp_path):
    """MLflow's default store (SQLite) had no folder for Lightning (`assert log_dir is not None`, Lightning #19441)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # absolute: MLflow caches a store by its URI, across the tests' folders
    preset = ["--config", str(CONFIGS / "logger" / "mlflow.yaml"), "--model", "MLPClassifier"]
    preset += ["--trainer.logger.init_args.tracking_uri", uri]
    run_fit(mnist_dir, tmp_path / "logs", *preset, "--model.batch_norm", "true")
    run = tmp_path / "logs" / "mnist" / "version_0"
    assert run_files(run) == {"config.yaml", "run.yaml", "checkpoints/last.ckpt"}
    (tracked,) = mlflow_runs(uri)
    assert tracked.info.run_name == "mnist/version_0" and tracked.info.status == "FINISHED"
    params = tracked.data.params
    assert params["batch_norm"] == "True" and params["hidden_sizes"] == "[512, 256]"  # MLPClassifier's default
    assert "_instantiator" not in params
    client = MlflowClient(uri)
    config = Path(client.download_artifacts(tracked.info.run_id, "config.yaml", str(tmp_path)))
    assert config.read_text() == (run / "config.yaml").read_text()
    images = {artifact.path.split("+")[0] for artifact in client.list_artifacts(tracked.info.run_id, "images")}
    assert images == {"images/val~confusion_matrix", "images/val~predictions"}
    # --ckpt_path last finds the run under logs/mnist and goes on in its folder: a second MLflow run of that name
    longer = ["--trainer.max_epochs", "3", "--ckpt_path", "last"]
    proj.fit.main([*tiny_run_args(mnist_dir, tmp_path / "logs", *preset), *longer])
    assert sorted(path.name for path in run.parent.iterdir()) == ["version_0"]
    (continued,) = yaml.safe_load((run / "run.yaml").read_text())["continued"]  # once, though a test followed
    assert continued["changed"] == {"trainer.max_epochs": {"before": 2, "after": 3}}
    assert [tracked.info.run_name for tracked in mlflow_runs(uri)] == ["mnist/version_0"] * 2


def test_several_loggers_share_the_run_folder_and_hparams_drop_the_instantiator(mnist_dir, tmp_path):
    """configs/logger/many.yaml: TensorBoard, CSV and MLflow, one folder; HPARAMS shows settings (booleans as
    booleans), not LightningCLI's `_instantiator`."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # absolute: MLflow caches a store by its URI, across the tests' folders
    many = tmp_path / "many.yaml"
    many.write_text((CONFIGS / "logger" / "many.yaml").read_text().replace("sqlite:///mlflow.db", uri))
    preset = ["--config", str(many), "--model", "MLPClassifier"]
    run_fit(mnist_dir, tmp_path / "logs", *preset, "--model.batch_norm", "true")
    run = tmp_path / "logs" / "mnist" / "version_0"
    assert sorted(path.name for path in run.parent.iterdir()) == ["version_0"]
    assert run_files(run) == {"config.yaml", "run.yaml", "checkpoints/last.ckpt"}
    assert (run / "metrics.csv").is_file() and list(run.glob("events.out.tfevents.*"))
    assert [tracked.info.run_name for tracked in mlflow_runs(uri)] == ["mnist/version_0"]
    events = EventAccumulator(str(run))
    events.Reload()
    session = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    )
    params = dict(session.session_start_info.hparams)
    assert "_instantiator" not in params
    assert params["batch_norm"].WhichOneof("kind") == "bool_value" and params["batch_norm"].bool_value
    assert set(events.Tags()["images"]) == {"val/confusion_matrix", "val/predictions"}
    # the config names no run: rerun with it, it makes a new one
    logger = yaml.safe_load((run / "config.yaml").read_text())["trainer"]["logger"]
    assert [entry["init_args"].get("version", entry["init_args"].get("run_name")) for entry in logger] == [None] * 3


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_is_one_line_naming_the_extra(mnist_dir, tmp_path, capsys, monkeypatch, extra):
    monkeypatch.setitem(sys.modules, extra, None)  # what `import mlflow` does where it is not installed
    logger = {"mlflow": "MLFlowLogger", "wandb": "WandbLogger"}[extra]
    flags = ["fit", "--trainer.logger", logger, "--data.data_dir", str(mnist_dir), "--data.download", "false"]
    err = user_error(capsys, proj.cli.main, *flags)
    assert err.splitlines() == [
        f"error: --trainer.logger {logger} needs the {extra} package, which is not installed: "
        f"pip install -e '.[{extra}]'"
    ]
    assert list(tmp_path.iterdir()) == []


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of a W&B run file (run-<id>.wandb): a LevelDB-style log of 32 KiB blocks, each record in chunks
    with a 7-byte header (checksum, length, type), after the file's own 7-byte header."""
    data, block, position, chunk = path.read_bytes(), 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        chunk += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            yield wandb_internal_pb2.Record.FromString(chunk)
            chunk = b""


@pytest.mark.slow
def test_wandb_offline_keeps_history_and_config_in_the_run_folder_without_a_login(mnist_dir, tmp_path):
    preset = ["--config", str(CONFIGS / "logger" / "wandb.yaml"), "--model", "MLPClassifier"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", HOME=str(tmp_path), PYTHONPATH=str(ROOT / "src"))  # no account, no network
    result = subprocess.run(
        [sys.executable, "-m", "proj.fit", *tiny_run_args(mnist_dir, tmp_path / "logs", *preset)],
        stdin=subprocess.DEVNULL,  # a login prompt would fail to read it
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not re.search(r"login|api key", result.stdout + result.stderr, re.IGNORECASE)
    run = tmp_path / "logs" / "mnist" / "version_0"
    assert run_files(run) == {"config.yaml", "run.yaml", "checkpoints/last.ckpt"}
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")  # W&B's files in the run folder
    history, config = [], {}
    for record in wandb_records(run_file):
        if record.HasField("history"):
            history.append({item.key or item.nested_key[0]: item.value_json for item in record.history.item})
        elif record.HasField("config"):
            config.update({item.key or item.nested_key[0]: item.value_json for item in record.config.update})
        elif record.HasField("run"):
            assert record.run.display_name == "mnist/version_0"
    assert len([row["val/acc"] for row in history if "val/acc" in row]) == 2  # one a epoch
    assert len([row["test/acc"] for row in history if "test/acc" in row]) == 1
    assert {"val/predictions", "val/confusion_matrix"} <= {key for row in history for key in row}
    assert isinstance(json.loads(config["batch_norm"]), bool) and "_instantiator" not in config  # a boolean stays one
    assert json.loads(config["config"]) == yaml.safe_load((run / "config.yaml").read_text())
