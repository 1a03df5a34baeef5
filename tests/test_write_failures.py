"""A disk that fills up (or refuses a file) while a run writes: one `error:` line naming the path and the reason,
exit 2, no partial file left, the previous file intact. With a failing writer injected, and on a real small tmpfs
where this machine lets the tests mount one (CI must: there a machine that cannot fails the tests)."""

from __future__ import annotations

import builtins
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import proj.checkpoints
import proj.export
import proj.fit
import proj.predict
from conftest import VAL_SIZE, skip_or_fail_in_ci, user_error

pytestmark = pytest.mark.slow


def fit_flags(data_dir: Path, logs: Path, *extra: str) -> list[str]:
    return [
        *("--model", "MLPClassifier", "--model.hidden_sizes", "[32]", "--data.data_dir", str(data_dir)),
        *("--data.val_size", str(VAL_SIZE), "--data.batch_size", "32", "--data.num_workers", "0"),
        *("--trainer.accelerator", "cpu", "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "3"),
        *("--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--trainer.callbacks=[]"),
        *("--trainer.enable_model_summary", "false", "--test_after_fit", "false"),
        *("--trainer.logger.init_args.save_dir", str(logs)),
        *extra,
    ]


class FullDisk:
    """A file whose writes put half the bytes on disk and then fail as a full disk does."""

    def __init__(self, file) -> None:
        self.file = file

    def write(self, data) -> int:
        self.file.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_last_ckpt(mnist_dir, tmp_path, capsys, monkeypatch):
    writes = 0

    def open_filling_up(path, mode="r", *args, **kwargs):
        nonlocal writes
        file = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        if Path(path).name == ".last.ckpt.partial":
            writes += 1
            if writes == 2:  # last.ckpt of epoch 1; that of epoch 0 is on disk
                return FullDisk(file)
        return file

    monkeypatch.setattr(proj.checkpoints, "open", open_filling_up, raising=False)
    logs = tmp_path / "logs"
    err = user_error(capsys, proj.fit.main, *fit_flags(mnist_dir, logs))
    last = logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    (line,) = err.splitlines()
    assert line.startswith(f"error: cannot write checkpoint '{last}': No space left on device"), line
    assert "--ckpt_path last" in line
    assert not list(logs.rglob("*.partial"))
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the end of epoch 0, whole


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at tmp_path/small (unmounted afterwards); skipped where mounting is not allowed (CI: fails)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None:
        skip_or_fail_in_ci("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        skip_or_fail_in_ci(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int = 0) -> None:
    """Fills `folder`'s file system up to `leave` bytes."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as file:
        file.write(b"\0" * max(0, free - leave))


def test_fit_with_logs_on_a_full_disk_stops_with_one_line(mnist_dir, small_disk, capsys):
    """The MLP's checkpoint (~1.5 MB with Adam's state) cannot fit on the 1 MiB disk."""
    err = user_error(capsys, proj.fit.main, *fit_flags(mnist_dir, small_disk, "--model.hidden_sizes", "[128]"))
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "cannot write checkpoint" in line and str(small_disk) in line and "No space left on device" in line
    assert "Traceback" not in err
    assert not list(small_disk.rglob("*.partial"))


def test_predictions_and_exports_on_a_full_disk(mnist_dir, small_disk, tmp_path, capsys):
    logs = tmp_path / "logs"
    proj.fit.main(fit_flags(mnist_dir, logs, "--trainer.max_epochs", "1"))
    checkpoint = str(logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for index in range(5):
        Image.new("L", (28, 28), color=index * 40).save(pngs / f"{index}.png")
    (small_disk / "predictions.csv").write_text("previous\n")
    (small_disk / "model.onnx").write_bytes(b"previous")
    fill(small_disk)
    csv = small_disk / "predictions.csv"
    err = user_error(capsys, proj.predict.main, "--ckpt_path", checkpoint, "--input", str(pngs), "--output", str(csv))
    assert err.startswith(f"error: cannot write '{csv}': No space left on device"), err
    assert csv.read_text() == "previous\n"
    onnx = small_disk / "model.onnx"
    err = user_error(capsys, proj.export.main, "--ckpt_path", checkpoint, "--format", "onnx", "--output", str(onnx))
    assert err.startswith(f"error: cannot write '{onnx}': No space left on device"), err
    assert onnx.read_bytes() == b"previous"
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "model.onnx", "predictions.csv"]


def test_tensorboard_files_that_cannot_be_written_cost_the_curves_not_the_run(mnist_dir, tmp_path, capsys, monkeypatch):
    """The event writer's thread fails (injected after 20 records); the fit and its test still end, with one line."""
    from tensorboard.summary.writer import record_writer

    real_write, records = record_writer.RecordWriter.write, 0

    def write(self, data):
        nonlocal records
        records += 1
        if records > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    logs = tmp_path / "logs"
    proj.fit.main([*fit_flags(mnist_dir, logs, "--trainer.log_every_n_steps", "1"), "--test_after_fit", "true"])
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "TensorBoard cannot write" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "the run goes on" in warnings[0]
    assert "Traceback" not in captured.err and "Exception in thread" not in captured.err
    assert "Test accuracy:" in captured.out
    assert torch.load(logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_logs_on_a_full_disk_with_checkpoints_elsewhere_finish_the_run(mnist_dir, small_disk, tmp_path, capsys):
    fill(small_disk, leave=20_000)
    checkpoints = tmp_path / "checkpoints"
    flags = fit_flags(
        mnist_dir, small_disk, "--checkpoint.dirpath", str(checkpoints), "--trainer.log_every_n_steps", "1"
    )
    proj.fit.main([*flags, "--trainer.max_epochs", "10", "--test_after_fit", "true"])
    captured = capsys.readouterr()
    assert sum("TensorBoard cannot write" in line for line in captured.err.splitlines()) == 1
    assert "Traceback" not in captured.err
    assert "Test accuracy:" in captured.out


@pytest.mark.parametrize(
    "code, reason",
    [
        (errno.ENOSPC, "No space left on device"),
        (errno.EDQUOT, "Disk quota exceeded"),
        (errno.EROFS, "Read-only file system"),
        (errno.EACCES, "Permission denied"),
    ],
)
def test_result_files_keep_the_previous_version_on_any_write_failure(tmp_path, code, reason):
    """What predictions, exports and the sweep's best.yaml are written through (`outputs.atomic_output`)."""
    from proj.errors import UserError
    from proj.outputs import atomic_output

    path = tmp_path / "best.yaml"
    path.write_text("previous\n")
    with pytest.raises(UserError, match=rf"^cannot write '{path}': {reason}$"), atomic_output(path) as partial:
        partial.write_text("half of the new")
        raise OSError(code, reason)
    assert path.read_text() == "previous\n"
    assert sorted(tmp_path.iterdir()) == [path]
