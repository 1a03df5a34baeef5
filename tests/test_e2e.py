"""Whole runs of `proj.fit` on the synthetic data: checkpoints, the saved config, TensorBoard logs, the test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import MODEL_CONFIGS, SCHEDULER_CONFIGS, run_fit, run_python, tiny_run_args

pytestmark = pytest.mark.slow

SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"}
IMAGES = {"val/predictions", "val/confusion_matrix"}


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


@pytest.mark.parametrize("scheduler", [None, *SCHEDULER_CONFIGS])
@pytest.mark.parametrize("model", sorted(MODEL_CONFIGS))
def test_fit_writes_checkpoints_config_and_logs(mnist_dir, tmp_path, capsys, model, scheduler):
    extra = ["--config", str(MODEL_CONFIGS[model])]
    if scheduler:
        extra += ["--config", str(SCHEDULER_CONFIGS[scheduler])]
    run_fit(mnist_dir, tmp_path / "logs", *extra)
    stdout = capsys.readouterr().out

    run_dir = only(list((tmp_path / "logs" / model).glob("version_*")))
    checkpoints = run_dir / "checkpoints"
    torch.load(checkpoints / "last.ckpt", weights_only=True)  # plain data only: loads without trusting pickles
    best = only(list(checkpoints.glob("epoch*-val_acc*.ckpt")))
    assert re.fullmatch(r"epoch0[01]-val_acc[01]\.\d{4}\.ckpt", best.name)

    model_config = yaml.safe_load(MODEL_CONFIGS[model].read_text())["model"]
    model_class = model_config["class_path"]
    stacked = yaml.safe_load(SCHEDULER_CONFIGS[scheduler].read_text())["model"] if scheduler else model_config
    scheduler_class = (stacked["init_args"].get("scheduler") or {}).get("class_path")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    assert saved["class_path"] == model_class
    assert (saved["init_args"]["scheduler"] or {}).get("class_path") == scheduler_class

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) >= SCALARS
    assert any(tag.startswith("lr-") for tag in tags["scalars"])
    assert set(tags["images"]) >= IMAGES
    assert len(events.Scalars("val/acc")) == 2  # one point per epoch, none from the sanity check

    match = re.search(r"Test accuracy: \d+\.\d\d% \(best checkpoint (.+\.ckpt)\)", stdout)
    assert match, stdout[-2000:]
    assert Path(match[1]).resolve() == best.resolve()


def test_entry_point_subprocess(mnist_dir, tmp_path):
    args = tiny_run_args(mnist_dir, tmp_path / "logs", "--config", str(MODEL_CONFIGS["mlp"]))
    result = run_python("-m", "proj.fit", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"Test accuracy: \d+\.\d\d%", result.stdout)
    assert (tmp_path / "logs" / "mlp" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_test_after_fit_false_skips_test(mnist_dir, tmp_path, capsys):
    extra = ["--config", str(MODEL_CONFIGS["mlp"]), "--trainer.max_epochs", "1", "--test_after_fit", "false"]
    run_fit(mnist_dir, tmp_path / "logs", *extra)
    assert "Test accuracy" not in capsys.readouterr().out
    run_dir = tmp_path / "logs" / "mlp" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "val/acc" in events.Tags()["scalars"]
    assert not any(tag.startswith("test/") for tag in events.Tags()["scalars"])
