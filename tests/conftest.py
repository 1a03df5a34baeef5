"""Shared fixtures: a tiny synthetic MNIST, runs in a temporary folder, no network, quick Trainers and CLI runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import huggingface_hub.constants
import pytest
import torch
import torchvision
from lightning.pytorch import Trainer

import proj.fit
from proj.cli import ProjCLI
from proj.data import MNISTDataModule
from proj.data.synthetic import write_synthetic_mnist

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MODEL_CONFIGS = {name: CONFIGS / f"{name}.yaml" for name in ("mlp", "cnn")}
SCHEDULER_CONFIGS = {
    name: CONFIGS / "scheduler" / f"{name}.yaml" for name in ("step", "exponential", "cosine", "plateau", "warmup")
}
NUM_TRAIN, NUM_TEST, VAL_SIZE = 600, 200, 100

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: a process per core, each of one thread (fits it starts too)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
MNIST_SHAPE: dict[str, Any] = {"input_shape": (1, 28, 28), "num_classes": 10}  # a model for MNISTDataModule


def skip_or_fail_in_ci(reason: str) -> NoReturn:
    """Skips a test whose part (a PostgreSQL server, a tmpfs mount...) this machine lacks; under CI (`CI=true`,
    which .ci/run sets) fails it instead: CI provides every such part, so a green CI means the test ran."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data_dir of a synthetic MNIST: 600 training and 200 test images in the real file layout."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"), NUM_TRAIN, NUM_TEST)


UNREACHABLE = "http://127.0.0.1:9"  # a port nothing listens on: a connection is refused at once


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder (no logs/ in the repo), any MNIST download fails at once, and pretrained
    weights come from an empty hub cache of its own (the user's is never read), the hub being unreachable: here, and
    in the subprocesses tests start."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"{UNREACHABLE}/"])
    hub = {"HF_HUB_CACHE": tmp_path / "hf-hub", "HF_ENDPOINT": UNREACHABLE, "TORCH_HOME": tmp_path / "torch"}
    for name, value in hub.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    url = f"{UNREACHABLE}/{{repo_id}}/resolve/{{revision}}/{{filename}}"  # huggingface_hub's, made from HF_ENDPOINT
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", url)


def datamodule(data_dir: Path, **kwargs: Any) -> MNISTDataModule:
    options: dict[str, Any] = {"batch_size": 32, "val_size": VAL_SIZE, "num_workers": 0, "download": False}
    return MNISTDataModule(data_dir, **{**options, **kwargs})


def quick_trainer(**kwargs: Any) -> Trainer:
    """A Trainer without logger, checkpoints, progress bar or summary, on the CPU."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(**{**options, **kwargs})


def tiny_run_args(data_dir: Path, logs: Path, *extra: str) -> list[str]:
    """Flags for a seconds-long fit on the synthetic data, logging under `logs`."""
    return [
        *extra,
        "--data.data_dir",
        str(data_dir),
        "--data.val_size",
        str(VAL_SIZE),
        "--data.batch_size",
        "32",
        "--data.num_workers",
        "0",
        "--data.download",
        "false",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.logger.init_args.save_dir",
        str(logs),
    ]


def run_fit(data_dir: Path, logs: Path, *extra: str) -> None:
    """`python -m proj.fit` in-process: a tiny fit, then the test."""
    proj.fit.main(tiny_run_args(data_dir, logs, *extra))


def build_cli(data_dir: Path, *args: str) -> ProjCLI:
    """Parse and instantiate (model, data, trainer) without running anything."""
    return ProjCLI(args=[*args, "--data.data_dir", str(data_dir), "--data.num_workers", "0"], run=False)


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter with src/ and tests/ (fault injection) importable, in the current (temporary) folder."""
    paths = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def user_error(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], None], *args: str) -> str:
    """stderr of an entry point that must exit 2, without a traceback, on a problem the user can fix."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def lightning_info(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Lightning's info lines (rank_zero_info): its logger does not propagate to the root logger caplog listens on."""
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    yield caplog
    logger.removeHandler(caplog.handler)


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages `lightning_info` caught, each once (a record can meet its handler twice, directly and through the
    root logger, when Lightning's logger propagates)."""
    return [record.getMessage() for record in {id(record): record for record in caplog.records}.values()]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP threads waiting on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
