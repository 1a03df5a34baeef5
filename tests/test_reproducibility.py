"""Same config and seed, same numbers; a run folder holds what it takes to reproduce the run."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, build_cli, run_fit
from proj.cli import ProjCLI

METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {key: [(event.step, event.value) for event in events.Scalars(key)] for key in METRICS}


# Deterministic algorithms change nothing for the MLP's matrix products on the CPU: that case is left out.
@pytest.mark.parametrize(
    ("model", "deterministic"), [("MLPClassifier", "false"), ("CNNClassifier", "false"), ("CNNClassifier", "true")]
)
def test_same_seed_gives_identical_metrics_epoch_by_epoch(mnist_dir, tmp_path, model, deterministic):
    flags = ("--model", model, "--model.dropout", "0.3", "--data.augment", "true")
    flags += ("--trainer.deterministic", deterministic)
    first, second = tmp_path / "first", tmp_path / "second"
    run_fit(mnist_dir, first, *flags)
    run_fit(mnist_dir, second, *flags)
    a, b = scalars(first / "mnist" / "version_0"), scalars(second / "mnist" / "version_0")
    assert len(a["val/loss"]) == 2  # tiny runs have two epochs
    assert a == b
    other_seed = tmp_path / "other"
    run_fit(mnist_dir, other_seed, *flags, "--seed_everything", "7")
    assert scalars(other_seed / "mnist" / "version_0")["train/loss"] != a["train/loss"]  # the seed matters


def test_run_folder_records_seed_versions_and_commit(mnist_dir, tmp_path):
    run_fit(mnist_dir, tmp_path / "logs", "--model", "MLPClassifier", "--seed_everything", "123")
    run = tmp_path / "logs" / "mnist" / "version_0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed_everything"] == 123
    record = yaml.safe_load((run / "run.yaml").read_text())
    assert record["seed_everything"] == 123 and record["torch_initial_seed"] == 123
    assert record["versions"]["torch"] == version("torch")
    assert record["torch_build"] == torch.__version__
    assert {"python", "lightning", "torchvision", "torchmetrics", "proj"} <= record["versions"].keys()
    assert record["hardware"]["accelerator"] == "CPUAccelerator"
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        assert record["git"]["commit"] == head.stdout.strip()
        assert isinstance(record["git"]["dirty"], bool)


def test_random_seed_is_recorded(mnist_dir, tmp_path):
    """`--seed_everything true` draws a seed; the run folder says which, so the run can be repeated."""
    run_fit(mnist_dir, tmp_path / "logs", "--model", "MLPClassifier", "--seed_everything", "true")
    run = tmp_path / "logs" / "mnist" / "version_0"
    seed = yaml.safe_load((run / "config.yaml").read_text())["seed_everything"]
    assert isinstance(seed, int) and not isinstance(seed, bool)
    assert yaml.safe_load((run / "run.yaml").read_text())["torch_initial_seed"] == seed


def test_test_command_from_the_run_folder_reproduces_the_test_metrics(mnist_dir, tmp_path):
    run_fit(mnist_dir, tmp_path / "logs", "--model", "CNNClassifier", "--model.dropout", "0.2")
    run = tmp_path / "logs" / "mnist" / "version_0"
    logged = scalars(run)
    best = next(path for path in (run / "checkpoints").iterdir() if path.name.startswith("epoch"))
    cli = ProjCLI(args=["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best)])
    metrics = cli.trainer.callback_metrics
    assert metrics["test/acc"].item() == logged["test/acc"][-1][1]
    assert metrics["test/loss"].item() == logged["test/loss"][-1][1]


def test_deterministic_flag_reaches_torch(mnist_dir):
    try:
        build_cli(mnist_dir, "--trainer.deterministic", "true")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
