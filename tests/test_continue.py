"""Going on from a run: continuing longer (one rule per schedule), from a checkpoint alone, fine-tuning from
weights, and a run's record kept whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import ReduceLROnPlateau
from torch import nn

import proj.fit
from conftest import CONFIGS, VAL_SIZE, user_error
from proj.continuation import past_its_end
from proj.data.synthetic import write_synthetic_cifar10, write_synthetic_fashion_mnist, write_synthetic_mnist
from proj.schedulers import WarmupDecay

EXTENDING = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "ExponentialLR": lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8),
    "WarmupDecay": lambda opt: WarmupDecay(opt, warmup=2, gamma=0.7),
    "LinearLR": lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3),
}


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)


def rates(scheduler, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
        values.append(scheduler.get_last_lr()[0])
    return values


@pytest.mark.parametrize("name", EXTENDING)
def test_extending_schedules_continue_with_the_rates_of_an_uninterrupted_run(name):
    """Stopped after 3 steps and restored (optimizer and scheduler) into a run built to be longer, the next rates
    are those of one run of 7 steps: the rule lets these continue."""
    build = EXTENDING[name]
    uninterrupted = rates(build(optimizer()), 7)
    first = build(optimizer())
    before = rates(first, 3)
    second = build(optimizer())  # as Lightning does: built for the new run, then both states restored
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    assert past_its_end(second, first.state_dict(), length=7, saved_length=3) is None
    assert before + rates(second, 4) == pytest.approx(uninterrupted)


def test_plateau_continues():
    scheduler = ReduceLROnPlateau(optimizer(), monitor="val/loss", patience=1)
    assert past_its_end(scheduler, scheduler.state_dict(), length=100, saved_length=3) is None


def test_one_cycle_is_refused_past_its_last_step_because_torch_fails_there():
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer(), max_lr=0.1, total_steps=5)
    saved = scheduler.state_dict()
    assert past_its_end(scheduler, saved, length=5, saved_length=5) is None  # resuming the same run
    assert past_its_end(scheduler, saved, length=4, saved_length=5) is None  # stopping earlier
    assert "one cycle over the 5 steps" in past_its_end(scheduler, saved, length=6, saved_length=5)
    rates(scheduler, 4)
    with pytest.raises(ValueError, match="Tried to step 6 times"):  # what the refusal spares the user
        rates(scheduler, 2)


def test_cosine_is_refused_past_t_max_because_the_rate_climbs_back():
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer(), T_max=4)
    saved = scheduler.state_dict()
    assert past_its_end(scheduler, saved, length=4, saved_length=4) is None
    assert "T_max=4" in past_its_end(scheduler, saved, length=6, saved_length=4)
    # A run made longer than T_max on purpose resumes at its own length, and no further.
    assert past_its_end(scheduler, saved, length=8, saved_length=8) is None
    assert past_its_end(scheduler, saved, length=9, saved_length=8) is not None
    values = rates(scheduler, 6)
    assert values[5] > values[3]  # past T_max the rate rises again


# Every config in configs/ and configs/scheduler/, run briefly and then continued one epoch longer.


@pytest.fixture(scope="module")
def all_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("all_data")
    write_synthetic_mnist(root, num_train=120, num_test=20)
    write_synthetic_fashion_mnist(root, num_train=120, num_test=20)
    write_synthetic_cifar10(root, num_train=120, num_test=20)
    return root


def brief(data_dir: Path, logs: Path) -> list[str]:
    return [
        *("--data.data_dir", str(data_dir), "--data.val_size", "20", "--data.batch_size", "16"),
        *("--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.limit_train_batches", "2"),
        *("--trainer.limit_val_batches", "1", "--trainer.callbacks=[]", "--trainer.enable_progress_bar", "false"),
        *("--trainer.enable_model_summary", "false", "--test_after_fit", "false"),
        *("--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.name", "run"),
    ]


def stacked_on(config: Path) -> list[Path]:
    """The config files a run of `config` names: a schedule goes on top of mlp.yaml, a Trainer setting (early
    stopping) on top of cnn.yaml, as their comments say."""
    if config.parent.name == "scheduler":
        return [CONFIGS / "mlp.yaml", config]
    if "model" not in yaml.safe_load(config.read_text()):
        return [CONFIGS / "cnn.yaml", config]
    return [config]


def config_flags(config: Path) -> list[str]:
    return [flag for path in stacked_on(config) for flag in ("--config", str(path))]


def sized_to_its_run(config: Path) -> tuple[list[str], bool]:
    """Flags that make the schedule end with a 2-epoch run, as the configs intend; whether continuing to 3
    epochs must be refused."""
    scheduler = {}
    for path in stacked_on(config):
        model = yaml.safe_load(path.read_text()).get("model", {})
        scheduler = model.get("init_args", {}).get("scheduler", scheduler)
    name = scheduler.get("class_path", "").rpartition(".")[2]
    if name == "CosineAnnealingLR":
        return ["--model.scheduler.init_args.T_max", "2"], True
    return [], name == "OneCycleLR"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


CONFIG_FILES = sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "scheduler").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIG_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_config_continues_longer_or_is_refused_leaving_the_run_untouched(config, all_data, tmp_path, capsys):
    logs = tmp_path / "logs"
    sizing, refused = sized_to_its_run(config)
    proj.fit.main([*config_flags(config), *brief(all_data, logs), *sizing, "--trainer.max_epochs", "2"])
    run = logs / "run" / "version_0"
    before = snapshot(run)
    steps = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    longer = ["--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "3"]
    if refused:
        err = user_error(capsys, proj.fit.main, *longer)
        assert "cannot continue" in err and "--weights_from" in err and "to 3 " in err, err
        assert snapshot(run) == before  # every file of the run byte-identical
    else:
        proj.fit.main(longer)
        after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert after["global_step"] == steps // 2 * 3  # a third epoch, at the steps per epoch of the first two
        assert (run / "config.yaml").read_bytes() == before["config.yaml"]  # the record of how it started
        record = yaml.safe_load((run / "run.yaml").read_text())
        (continuation,) = record["continued"]
        assert continuation["changed"] == {"trainer.max_epochs": {"before": 2, "after": 3}}
        assert continuation["checkpoint"]["global_step"] == steps
    assert sorted(path.name for path in (logs / "run").iterdir()) == ["version_0"]


# Resume from a checkpoint alone, fine-tune from weights.


def tiny_flags(data_dir: Path, logs: Path) -> list[str]:
    """A 2-epoch MLP run at batch size 16 (not the default), without its test."""
    return [
        *("--model", "MLPClassifier", "--model.hidden_sizes", "[32]", "--data.data_dir", str(data_dir)),
        *("--data.val_size", str(VAL_SIZE), "--data.batch_size", "16", "--data.num_workers", "0"),
        *("--trainer.accelerator", "cpu", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3"),
        *("--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"),
        *("--trainer.enable_model_summary", "false", "--trainer.callbacks=[]", "--test_after_fit", "false"),
        *("--trainer.logger.init_args.save_dir", str(logs)),
    ]


def tiny_fit(data_dir: Path, logs: Path, *extra: str) -> Path:
    """The tiny_flags run on MNIST; its folder."""
    proj.fit.main([*tiny_flags(data_dir, logs), *extra])
    return logs / "mnist" / "version_0"


@pytest.mark.slow
def test_fit_from_a_checkpoint_alone_takes_its_runs_settings_and_folder(mnist_dir, tmp_path, capsys):
    run = tiny_fit(mnist_dir, tmp_path / "logs")
    config = (run / "config.yaml").read_bytes()
    last = run / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    proj.fit.main(["--ckpt_path", str(last), "--trainer.max_epochs", "3", "--test_after_fit", "false"])
    assert f"Settings from {run / 'config.yaml'}" in capsys.readouterr().out
    assert sorted(path.name for path in run.parent.iterdir()) == ["version_0"]  # continued in its own folder
    resumed = torch.load(last, weights_only=True)
    assert resumed["datamodule_hyper_parameters"]["batch_size"] == 16  # the run's, not the default 128
    assert resumed["global_step"] == 9
    assert (run / "config.yaml").read_bytes() == config


@pytest.mark.slow
def test_ckpt_path_last_with_data_resumes_that_data_sets_newest_run(mnist_dir, tmp_path, capsys):
    """`--data X --ckpt_path last` without --config looks in logs/<x>/, where X's runs go; the default data's
    `last` does not take X's run, and names the folder it searched."""
    logs = tmp_path / "logs"
    fashion = ["--data", "FashionMNISTDataModule", *tiny_flags(write_synthetic_fashion_mnist(tmp_path, 300, 100), logs)]
    proj.fit.main(fashion)
    run = logs / "fashionmnist" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    steps = torch.load(last, weights_only=True)["global_step"]
    proj.fit.main([*fashion, "--ckpt_path", "last", "--trainer.max_epochs", "3"])
    assert sorted(path.relative_to(logs).as_posix() for path in logs.glob("*/*")) == ["fashionmnist/version_0"]
    assert torch.load(last, weights_only=True)["global_step"] == steps // 2 * 3  # a third epoch, in that run
    (continuation,) = yaml.safe_load((run / "run.yaml").read_text())["continued"]
    assert continuation["checkpoint"]["path"] == str(last)
    err = user_error(capsys, proj.fit.main, *tiny_flags(mnist_dir, logs), "--ckpt_path", "last")
    assert f"--ckpt_path last: no run under {str(logs / 'mnist')!r} has a checkpoints/last.ckpt" in err


@pytest.mark.slow
def test_test_from_a_checkpoint_alone(mnist_dir, tmp_path, capsys):
    run = tiny_fit(mnist_dir, tmp_path / "logs")
    capsys.readouterr()
    proj.cli.main(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--trainer.limit_test_batches", "2"])
    out = capsys.readouterr().out
    assert "Settings from" in out and "test/acc" in out


@pytest.mark.slow
def test_a_checkpoint_without_its_run_says_the_settings_are_defaults(mnist_dir, tmp_path, capsys):
    run = tiny_fit(mnist_dir, tmp_path / "logs")
    alone = shutil.copy(run / "checkpoints" / "last.ckpt", tmp_path / "alone.ckpt")
    capsys.readouterr()
    flags = ["--data.data_dir", str(mnist_dir), "--data.val_size", str(VAL_SIZE), "--trainer.limit_test_batches", "1"]
    proj.cli.main(["test", "--ckpt_path", str(alone), *flags])
    assert "No config.yaml beside" in capsys.readouterr().out


@pytest.mark.slow
def test_weights_from_starts_a_new_run_from_the_weights_only(mnist_dir, tmp_path):
    logs = tmp_path / "logs"
    run = tiny_fit(mnist_dir, logs)
    source = run / "checkpoints" / "last.ckpt"
    # A rate too small to move anything: the new run's weights are the source's, its counts its own.
    tiny_fit(
        mnist_dir, logs, "--weights_from", str(source), "--model.optimizer", "SGD", "--model.optimizer.lr", "1e-12"
    )
    tuned = logs / "mnist" / "version_1"
    new, old = (torch.load(path, weights_only=True) for path in (tuned / "checkpoints" / "last.ckpt", source))
    assert new["global_step"] == 6  # epoch count and steps start again
    assert "momentum_buffer" not in str(new["optimizer_states"][0]["state"])  # a fresh SGD, not the source's Adam
    parameters = [key for key in old["state_dict"] if key.startswith("net.") and key.endswith(("weight", "bias"))]
    assert parameters
    for key in parameters:  # (batch norm's running statistics move whatever the rate)
        assert torch.allclose(new["state_dict"][key], old["state_dict"][key], atol=1e-8), key
    assert yaml.safe_load((tuned / "run.yaml").read_text())["weights_from"] == str(source)


@pytest.mark.slow
def test_weights_from_a_model_that_does_not_fit_is_one_line(mnist_dir, tmp_path, capsys):
    logs = tmp_path / "logs"
    source = tiny_fit(mnist_dir, logs) / "checkpoints" / "last.ckpt"
    data = ["--data.data_dir", str(mnist_dir), "--data.val_size", str(VAL_SIZE)]
    err = user_error(capsys, proj.fit.main, "--weights_from", str(source), *data, "--model", "CNNClassifier")
    assert "does not fit this CNNClassifier" in err
    assert sorted(path.name for path in (logs / "mnist").iterdir()) == ["version_0"]


@pytest.mark.slow
def test_weights_from_and_ckpt_path_together_are_refused(mnist_dir, tmp_path, capsys):
    source = tiny_fit(mnist_dir, tmp_path / "logs") / "checkpoints" / "last.ckpt"
    err = user_error(capsys, proj.fit.main, "--weights_from", str(source), "--ckpt_path", str(source))
    assert "pass one of them" in err
