"""proj.tune: Lightning's learning-rate and batch-size finders from the command line."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import pytest

import proj.commands
import proj.tune
from conftest import MODEL_CONFIGS, build_cli, tiny_run_args
from proj.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def fit_args(mnist_dir: Path, tmp_path: Path, model: str = "mlp") -> list[str]:
    return [
        *tiny_run_args(mnist_dir, tmp_path / "logs", "--config", str(MODEL_CONFIGS[model])),
        "--trainer.callbacks=[]",
    ]


def test_lr_finder_prints_a_suggestion_and_saves_the_plot(mnist_dir, tmp_path, capsys):
    # 30 steps, though the config stops after 2 epochs of 3 batches: the finder's step count decides.
    proj.tune.main(["lr", *fit_args(mnist_dir, tmp_path), "--num_training", "30", "--out_dir", str(tmp_path / "tune")])
    stdout = capsys.readouterr().out
    suggestion = float(stdout.split("Suggested learning rate: ")[1].split()[0])
    assert 1e-8 < suggestion < 1.0
    assert f"(set --model.optimizer.init_args.lr {suggestion:.3g})" in stdout
    assert (tmp_path / "tune" / "lr_find.png").read_bytes().startswith(PNG)
    assert not (tmp_path / "logs").exists()  # no run folder: nothing is trained for real


def test_lr_flag_names_onecycle_peak(mnist_dir):
    """configs/cnn.yaml's OneCycleLR sets the rate itself, from max_lr: that is the flag to change."""
    assert proj.tune.optimizer_lr_flag(build_cli(mnist_dir, "--config", str(MODEL_CONFIGS["cnn"]))) == (
        "--model.scheduler.init_args.max_lr"
    )
    assert proj.tune.optimizer_lr_flag(build_cli(mnist_dir)) == "--model.optimizer.init_args.lr"


def test_steepest_descent_is_taken_against_log_lr():
    lrs = [10 ** (-8 + 8 * i / 99) for i in range(100)]  # log-spaced, as the finder's exponential mode
    # Flat, then a fall centred at lr 1e-2, then a rise: the steepest fall per decade is at 1e-2.
    losses = [2.0 - math.tanh(3 * (math.log10(lr) + 2)) + (5.0 if lr > 0.3 else 0.0) for lr in lrs]
    index = proj.tune.steepest_descent(lrs, losses, log_spaced=True)
    assert index is not None
    assert lrs[index] == pytest.approx(1e-2, rel=0.25)
    # Against lr itself (Lightning 2.6's choice), a dip of 0.001 among the tiny rates of the flat start wins.
    dipped = [loss - (0.001 if i > 12 else 0.0) for i, loss in enumerate(losses)]
    assert lrs[proj.tune.steepest_descent(lrs, dipped, log_spaced=True) or 0] == pytest.approx(1e-2, rel=0.25)
    assert lrs[proj.tune.steepest_descent(lrs, dipped, log_spaced=False) or 0] < 1e-6
    assert proj.tune.steepest_descent(lrs[:5], losses[:5], log_spaced=True) is None  # too few steps


def test_batch_size_finder_prints_the_size_and_applies_it(mnist_dir, tmp_path, capsys):
    cli = proj.tune.build(fit_args(mnist_dir, tmp_path))
    found = proj.tune.find_batch_size(cli, tmp_path / "tune", init_val=4, max_trials=3, steps_per_trial=2)
    stdout = capsys.readouterr().out
    assert found == 16  # 4, 8, 16: three trials, none out of memory
    assert "Batch sizes that ran (images per second of the fastest step): 4 (" in stdout
    assert "Largest batch size: 16 (set --data.batch_size 16)" in stdout
    assert cli.datamodule.batch_size == cli.datamodule.hparams["batch_size"] == 16
    images, _ = next(iter(cli.datamodule.train_dataloader()))
    assert len(images) == 16
    assert (tmp_path / "tune" / "batch_size.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("finder", ["lr", "batch_size"])
def test_finders_run_a_config_whose_schedule_spans_the_run(mnist_dir, tmp_path, capsys, monkeypatch, finder):
    """configs/cnn.yaml's OneCycleLR takes its length from the run, which the finders leave to their own steps. The
    value found is the one printed, and the fit given the printed flag uses it: OneCycleLR's peak rate (the config
    says 0.1), the batch size (the flags say 32)."""
    options = {"lr": ["--num_training", "20"], "batch_size": ["--max_val", "8", "--steps_per_trial", "2"]}[finder]
    found, run_finder = [], proj.tune.FINDERS[finder]

    @functools.wraps(run_finder)  # its flags are its parameters
    def finding(cli, **kwargs):
        found.append(run_finder(cli, **kwargs))

    monkeypatch.setitem(proj.tune.FINDERS, finder, finding)
    args = fit_args(mnist_dir, tmp_path, "cnn")
    proj.tune.main([finder, *args, *options, "--out_dir", str(tmp_path / "tune")])
    stdout = capsys.readouterr().out
    assert "Plot: " in stdout
    (value,) = found
    printed = re.search(r"\(set (--\S+) (\S+)\)", stdout)
    assert printed, stdout
    fit = build_cli(mnist_dir, *args, *printed.groups())  # what the user runs next, with the printed flag
    if finder == "lr":
        assert value is not None and printed[2] == f"{value:.3g}"
        (group,) = fit.model.configure_optimizers()["optimizer"].param_groups
        assert group["max_lr"] == float(printed[2]) != 0.1
    else:
        ran = re.search(r"Batch sizes that ran[^:]*: (.*)", stdout)
        assert ran and value == max(int(size) for size in re.findall(r"(\d+) \(", ran[1]))
        assert printed.groups() == ("--data.batch_size", str(value))
        fit.datamodule.prepare_data()
        fit.datamodule.setup("fit")
        images, _ = next(iter(fit.datamodule.train_dataloader()))
        assert len(images) == fit.datamodule.batch_size == value != 32


def test_batch_size_finder_reports_only_sizes_that_ran(mnist_dir, tmp_path, capsys):
    """Lightning's power mode returns --max_val when it reaches it, without running a step at that size."""
    cli = proj.tune.build(fit_args(mnist_dir, tmp_path))
    found = proj.tune.find_batch_size(cli, tmp_path / "tune", init_val=4, max_val=16, steps_per_trial=1)
    stdout = capsys.readouterr().out
    assert "Lightning's finder returned 16, which it never ran; keeping 8, the largest that did." in stdout
    assert found == cli.datamodule.batch_size == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lr", "--mode", "cosine"], "unknown --mode 'cosine' for the lr finder: use exponential or linear"),
        (["batch_size", "--mode", "exponential"], "unknown --mode 'exponential' for the batch_size finder"),
        (["lr", "--trainer.fast_dev_run", "true"], "the finders do not run with --trainer.fast_dev_run"),
        (["lr", "--data.batch_sizee", "3"], "unknown key data.batch_sizee: check its spelling"),  # a fit flag
        (["lr", "--num_training", "abc"], "--num_training expects int, got 'abc'."),  # a finder's flag
        (["batch_size", "--max_val"], "argument --max_val: expected one argument"),
        (["size"], "invalid choice: 'size' (choose from 'lr', 'batch_size')"),
    ],
)
def test_errors_are_one_line(mnist_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        proj.tune.main([*args, *fit_args(mnist_dir, tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert message in last


def test_finder_flags_are_their_functions_parameters(monkeypatch):
    """Each finder's flags and defaults are its function's; every other flag, wherever it is, builds the fit."""
    defaults = proj.tune.argument_parser().parse_args
    assert defaults(["lr"]).lr.as_dict() == {
        "out_dir": "logs/tune",
        "min_lr": 1e-8,
        "max_lr": 1.0,
        "num_training": 100,
        "mode": "exponential",
        "early_stop_threshold": 4.0,
    }
    assert defaults(["batch_size"]).batch_size.as_dict() == {
        "out_dir": "logs/tune",
        "mode": "power",
        "steps_per_trial": 3,
        "init_val": 2,
        "max_trials": 25,
        "max_val": 8192,
        "margin": 0.05,
    }
    built = []

    def build(fit_args):
        built.append(fit_args)
        raise UserError("built")

    monkeypatch.setattr(proj.tune, "build", build)
    argv = ["--config", "c.yaml", "--min_lr=1e-6", "--data.batch_size", "8", "--num_training", "5", "--mode", "linear"]
    with pytest.raises(UserError, match="built"):
        proj.tune.run(["lr", *argv])
    assert built == [["--config", "c.yaml", "--data.batch_size", "8"]]
    own, fit_args = proj.commands.split_flags(["--max_val=64", "--x", "1", "-h", "--mode"], ["max_val", "mode"])
    assert (own, fit_args) == (["--max_val=64", "-h", "--mode"], ["--x", "1"])
