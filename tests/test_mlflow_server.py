"""MLflow for real: a tracking server as `make mlflow-server` starts it (SQLite backend, local artifacts), fits
against it read back through MlflowClient, and a server that dies mid-run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import proj.fit
from conftest import CONFIGS, ROOT, run_fit, tiny_run_args

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int]]:
    """`make mlflow-server` on a free port (one worker: it starts in seconds): its URI, port and process group."""
    folder, port = tmp_path_factory.mktemp("mlflow-server"), free_port()
    command = ["make", "-f", str(ROOT / "Makefile"), "mlflow-server", f"MLFLOW_PORT={port}", f"PYTHON={sys.executable}"]
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [*command, "MLFLOW_WORKERS=1"], cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()
            time.sleep(0.5)
    yield uri, port, server.pid
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    log.close()
    assert (folder / "mlflow.db").is_file()  # the runs in SQLite where the server was started


def preset(uri: str, experiment: str) -> list[str]:
    config = ["--config", str(CONFIGS / "logger" / "mlflow.yaml"), "--model", "MLPClassifier"]
    return [
        *config,
        "--trainer.logger.init_args.tracking_uri",
        uri,
        "--trainer.logger.init_args.experiment_name",
        experiment,
    ]


def test_each_fit_is_one_mlflow_run_with_params_curves_figures_and_config(mlflow_server, mnist_dir, tmp_path):
    uri, _, _ = mlflow_server
    for _ in range(2):
        run_fit(mnist_dir, tmp_path / "logs", *preset(uri, "fits"))  # 2 epochs, then the test
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fits")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.info.run_name for run in runs] == ["mnist/version_0", "mnist/version_1"]
    for run in runs:
        folder = tmp_path / "logs" / run.info.run_name
        assert run.info.status == "FINISHED"
        assert run.data.params["hidden_sizes"] == "[512, 256]" and "_instantiator" not in run.data.params
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2  # one per epoch
        (test,) = client.get_metric_history(run.info.run_id, "test/acc")
        assert 0.0 <= test.value <= 1.0
        config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
        assert config.read_text() == (folder / "config.yaml").read_text()
        images = {artifact.path.split("+")[0] for artifact in client.list_artifacts(run.info.run_id, "images")}
        assert images == {"images/val~confusion_matrix", "images/val~predictions"}


def test_a_server_that_dies_mid_run_costs_the_curves_not_the_run(mlflow_server, mnist_dir, tmp_path, capsys):
    """Last in this module: it kills the server (after the first epoch's validation)."""
    uri, port, pgid = mlflow_server
    kill = f'{{"class_path": "fault_injection.KillAt", "init_args": {{"epoch": 0, "pgid": {pgid}, "port": {port}}}}}'
    start = time.monotonic()
    flags = tiny_run_args(mnist_dir, tmp_path / "logs", *preset(uri, "dies"))
    proj.fit.main([*flags, "--trainer.max_epochs", "3", "--trainer.callbacks+", kill])
    assert time.monotonic() - start < 60  # MLflow's client alone would retry for minutes
    run = tmp_path / "logs" / "mnist" / "version_0"
    assert {path.name for path in run.iterdir()} >= {"config.yaml", "run.yaml", "checkpoints"}
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 9)  # every epoch trained (3 batches each)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and uri in warnings[0] and "the run goes on" in warnings[0], warnings
