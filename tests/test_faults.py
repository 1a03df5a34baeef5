"""Crash, preemption, NaN, DDP and bf16, each in real `python -m proj.fit` processes (slow; CI runs them)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import NUM_TRAIN, ROOT, VAL_SIZE, run_python

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 32  # 500 training images (600 - VAL_SIZE) in batches of 16
EPOCHS = 3


def proj(*args: str, module: str = "proj.fit") -> subprocess.CompletedProcess[str]:
    """A fresh `python -m proj.fit` (or another entry point, or a script when `module` is empty)."""
    return run_python(*(("-m", module) if module else ()), *args, timeout=600)


def fit_args(data_dir: Path, logs: Path, *extra: str, callbacks: list[dict] | None = None) -> list[str]:
    """A seconds-long fit of an MLP with dropout and augmentation (so that RNG state matters), without progress
    bars."""
    return [
        *("--data.data_dir", str(data_dir), "--data.val_size", str(VAL_SIZE), "--data.download", "false"),
        *("--data.batch_size", "16", "--data.num_workers", "0", "--data.augment", "true"),
        *("--model", "MLPClassifier", "--model.dropout", "0.3", "--trainer.accelerator", "cpu"),
        *("--trainer.max_epochs", str(EPOCHS), "--trainer.logger.init_args.save_dir", str(logs)),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        f"--trainer.callbacks={json.dumps(callbacks or [])}",
        *extra,
    ]


def callback(class_path: str, **init_args: object) -> dict:
    """A `--trainer.callbacks` entry for a callback of tests/ (fault_injection, observers)."""
    return {"class_path": class_path, "init_args": init_args}


def fault(name: str, **init_args: int) -> dict:
    return callback(f"fault_injection.{name}", **init_args)


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = checkpoint(a)["state_dict"], checkpoint(b)["state_dict"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def resume(run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """What the user types to resume (the fault callbacks are left out again)."""
    return proj("--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.callbacks=[]", *extra)


@pytest.fixture(scope="module", params=["resident", "torchvision"])
def uninterrupted(request, mnist_dir, tmp_path_factory) -> tuple[str, Path]:
    """(pipeline, last.ckpt) of a run that nothing interrupted."""
    logs = tmp_path_factory.mktemp("uninterrupted") / "logs"
    result = proj(*fit_args(mnist_dir, logs, "--data.pipeline", request.param))
    assert result.returncode == 0, result.stderr
    return request.param, logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(uninterrupted, mnist_dir, tmp_path):
    pipeline, reference = uninterrupted
    logs = tmp_path / "logs"
    kill = fault("SignalAt", epoch=1, batch=10, signum=signal.SIGKILL)
    killed = proj(*fit_args(mnist_dir, logs, "--data.pipeline", pipeline, callbacks=[kill]))
    assert killed.returncode == -signal.SIGKILL
    run = logs / "mnist" / "version_0"
    assert checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH  # epoch 0 ended

    resumed = resume(run)
    assert resumed.returncode == 0, resumed.stderr
    assert "Test accuracy:" in resumed.stdout
    assert sorted(path.name for path in (logs / "mnist").iterdir()) == ["version_0"]  # continued in its own run
    final = checkpoint(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert_same_weights(run / "checkpoints" / "last.ckpt", reference)
    assert (
        final["state_dict"]["val_acc_best.max_value"] == checkpoint(reference)["state_dict"]["val_acc_best.max_value"]
    )


def test_kill_while_writing_last_ckpt_leaves_a_resumable_run(uninterrupted, mnist_dir, tmp_path):
    pipeline, reference = uninterrupted
    if pipeline != "resident":
        pytest.skip("one pipeline is enough for the checkpoint writer")
    logs = tmp_path / "logs"
    killed = proj(str(TESTS / "fault_injection.py"), "2", *fit_args(mnist_dir, logs), module="")
    assert killed.returncode == -signal.SIGKILL
    checkpoints = logs / "mnist" / "version_0" / "checkpoints"
    assert checkpoint(checkpoints / "last.ckpt")["global_step"] == STEPS_PER_EPOCH  # the previous one, whole

    # An explicit path works as `last` does (and continues in the run's folder too).
    run = logs / "mnist" / "version_0"
    resumed = proj(
        "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoints / "last.ckpt"), "--trainer.callbacks=[]"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(path.name for path in (logs / "mnist").iterdir()) == ["version_0"]
    assert_same_weights(checkpoints / "last.ckpt", reference)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(uninterrupted, mnist_dir, tmp_path):
    pipeline, reference = uninterrupted
    logs = tmp_path / "logs"
    term = fault("SignalAt", epoch=1, batch=10, signum=signal.SIGTERM)
    stopped = proj(*fit_args(mnist_dir, logs, "--data.pipeline", pipeline, callbacks=[term]))
    assert stopped.returncode == 143, stopped.stderr
    assert "Traceback" not in stopped.stderr
    run = logs / "mnist" / "version_0"
    assert "Stopped by SIGTERM at epoch 1" in stopped.stdout
    assert f"Resume with: python -m proj.fit --config {run / 'config.yaml'} --ckpt_path last" in stopped.stdout
    saved = checkpoint(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == STEPS_PER_EPOCH + 11  # mid-epoch: the batches done before the signal

    resumed = resume(run)
    assert resumed.returncode == 0, resumed.stderr
    final = checkpoint(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert "Test accuracy:" in resumed.stdout
    # The data module saved where the epoch stood, so the rest of it follows, on either pipeline.
    assert saved["MNISTDataModule"] == {"epoch": 1, "batches": 11}
    assert "not resumable" not in resumed.stderr  # Lightning's warning about replayed batches
    assert_same_weights(run / "checkpoints" / "last.ckpt", reference)


def test_ctrl_c_finishes_the_batch_saves_and_resumes_bit_identical(uninterrupted, mnist_dir, tmp_path):
    """The first Ctrl-C (SIGINT) stops like SIGTERM: the batch finishes, last.ckpt holds the position within the
    epoch, the way to resume is printed, and the exit status is 130."""
    pipeline, reference = uninterrupted
    if pipeline != "resident":
        pytest.skip("SIGTERM's test covers the torchvision pipeline; Ctrl-C takes the same path")
    logs = tmp_path / "logs"
    interrupt = fault("SignalAt", epoch=1, batch=10, signum=signal.SIGINT)
    stopped = proj(*fit_args(mnist_dir, logs, callbacks=[interrupt]))
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    run = logs / "mnist" / "version_0"
    assert "Ctrl-C: stopping after this batch" in stopped.stdout
    assert "Stopped by Ctrl-C (SIGINT) at epoch 1" in stopped.stdout
    assert f"Resume with: python -m proj.fit --config {run / 'config.yaml'} --ckpt_path last" in stopped.stdout
    saved = checkpoint(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == STEPS_PER_EPOCH + 11
    assert saved["MNISTDataModule"] == {"epoch": 1, "batches": 11}

    resumed = resume(run)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(run / "checkpoints" / "last.ckpt", reference)


def test_second_ctrl_c_aborts_at_once_leaving_whole_checkpoints(mnist_dir, tmp_path):
    logs = tmp_path / "logs"
    twice = fault("SignalAt", epoch=1, batch=10, signum=signal.SIGINT, times=2)
    stopped = proj(*fit_args(mnist_dir, logs, callbacks=[twice]))
    assert stopped.returncode == 130, stopped.stderr
    checkpoints = logs / "mnist" / "version_0" / "checkpoints"
    assert checkpoint(checkpoints / "last.ckpt")["global_step"] == STEPS_PER_EPOCH  # the end of epoch 0, whole
    assert not list(checkpoints.glob("*.partial"))
    assert "Stopped by" not in stopped.stdout  # no checkpoint of the aborted epoch was attempted


def test_two_runs_started_together_get_their_own_folders(mnist_dir, tmp_path):
    """Each run claims its version_N folder by creating it; the logger's own choice (highest number + 1, then
    the folder; a slow file system widens the gap) would let both pick version_0 and write into one run."""
    logs = tmp_path / "logs"
    paths = [str(ROOT / "src"), str(TESTS), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    runs = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "fault_injection.py"), "slow_versions", *fit_args(mnist_dir, logs, *seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in (["--seed_everything", "1"], ["--seed_everything", "2"])
    ]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    folders = sorted((logs / "mnist").iterdir())
    assert [folder.name for folder in folders] == ["version_0", "version_1"]
    writers = [{name.split(".")[-2] for name in os.listdir(folder) if name.startswith("events.")} for folder in folders]
    assert all(len(pids) == 1 for pids in writers) and writers[0] != writers[1]  # one process per folder
    seeds = {yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"] for folder in folders}
    assert seeds == {1, 2}
    for folder in folders:
        assert checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"] == EPOCHS * STEPS_PER_EPOCH


def test_nan_loss_stops_with_the_step_and_the_fix_and_keeps_checkpoints(mnist_dir, tmp_path):
    logs = tmp_path / "logs"
    poisoned = proj(*fit_args(mnist_dir, logs, callbacks=[fault("PoisonAt", epoch=1, batch=3)]))
    assert poisoned.returncode == 2
    assert "Traceback" not in poisoned.stderr
    message = poisoned.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: the training loss is nan at step {STEPS_PER_EPOCH + 3} (epoch 1, batch 3)")
    assert "--model.optimizer.init_args.lr" in message
    assert "--trainer.gradient_clip_val" in message
    checkpoints = logs / "mnist" / "version_0" / "checkpoints"
    names = sorted(path.name for path in checkpoints.iterdir())
    assert len(names) == 2 and names[0].startswith("epoch00-") and names[1] == "last.ckpt"  # nothing after epoch 0
    for name in names:
        saved = checkpoint(checkpoints / name)
        assert saved["global_step"] == STEPS_PER_EPOCH
        assert all(torch.isfinite(value).all() for value in saved["state_dict"].values() if value.is_floating_point())


def test_ddp_on_two_cpu_processes(mnist_dir, tmp_path):
    """gloo DDP: two processes, each training its own half of every epoch (disjoint shards covering the split, half
    the steps), one run folder written by rank 0, and metrics synchronised over both ranks' shards."""
    ddp_logs, shards = tmp_path / "ddp", tmp_path / "shards"
    record = callback("observers.RankShards", folder=str(shards))
    ddp = proj(
        *fit_args(mnist_dir, ddp_logs, "--trainer.devices", "2", "--trainer.strategy", "ddp", callbacks=[record])
    )
    assert ddp.returncode == 0, ddp.stderr
    count = NUM_TRAIN - VAL_SIZE
    for epoch in range(EPOCHS):
        ranks = [json.loads((shards / f"{rank}-{epoch}.json").read_text()) for rank in (0, 1)]
        assert [(shard["rank"], shard["world_size"]) for shard in ranks] == [(0, 2), (1, 2)]
        assert ranks[0]["pid"] != ranks[1]["pid"]  # two processes
        first, second = (set(shard["indices"]) for shard in ranks)
        assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == count // 2
        assert not first & second and first | second == set(range(count))  # disjoint, covering
    assert sorted(path.name for path in (ddp_logs / "mnist").iterdir()) == ["version_0"]
    run = ddp_logs / "mnist" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "run.yaml").is_file()
    assert "devices: 2" in (run / "run.yaml").read_text()
    assert checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == EPOCHS * STEPS_PER_EPOCH // 2  # half
    assert ddp.stdout.count("Test accuracy:") == 1  # printed by rank 0 only

    # Synchronised: the 2-process test accuracy is the one a single process measures on the whole test set.
    best = next(path for path in (run / "checkpoints").iterdir() if path.name.startswith("epoch"))
    retest = proj(
        "test",
        "--config",
        str(run / "config.yaml"),
        "--ckpt_path",
        str(best),
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.callbacks=[]",
        module="proj",
    )
    assert retest.returncode == 0, retest.stderr
    ckpt_eval = float(re.search(r"test/acc\s+│?\s*([\d.]+)", retest.stdout).group(1))
    accuracy = float(re.search(r"Test accuracy: ([\d.]+)%", ddp.stdout).group(1)) / 100
    assert ckpt_eval == pytest.approx(accuracy, abs=5e-5)


def test_bf16_mixed_precision_on_cpu_computes_in_bf16(mnist_dir, tmp_path):
    """`--trainer.precision bf16-mixed` autocasts the CNN's convolutions and linear layers to bfloat16 (without
    the flag they compute in float32), and it still learns."""
    dtypes = tmp_path / "dtypes.json"
    result = proj(
        *fit_args(
            mnist_dir,
            tmp_path / "logs",
            *("--trainer.precision", "bf16-mixed", "--model", "CNNClassifier"),
            callbacks=[callback("observers.LayerDtypes", path=str(dtypes))],
        )
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(dtypes.read_text()) == {"Conv2d": ["torch.bfloat16"], "Linear": ["torch.bfloat16"]}
    accuracy = float(re.search(r"Test accuracy: ([\d.]+)%", result.stdout).group(1))
    assert accuracy > 80
