from __future__ import annotations

import functools
import math

import lightning.pytorch.cli
import pytest
import torch
import yaml

import proj.cli
import proj.schedulers
from conftest import MNIST_SHAPE, MODEL_CONFIGS, SCHEDULER_CONFIGS, build_cli, datamodule, quick_trainer
from proj.errors import UserError
from proj.models import MLPClassifier
from proj.schedulers import WarmupDecay

# The closed forms scale the learning rate of configs/cnn.yaml, on which the scheduler configs are stacked.
LR = yaml.safe_load(MODEL_CONFIGS["cnn"].read_text())["model"]["init_args"]["optimizer"]["init_args"]["lr"]


def step_lr(k: int) -> float:
    return LR * 0.5 ** (k // 2)


def exponential_lr(k: int) -> float:
    return LR * 0.7**k


def cosine_lr(k: int) -> float:
    return 0.0 + (LR - 0.0) * (1 + math.cos(math.pi * k / 5)) / 2


def warmup_lr(k: int) -> float:
    return (k + 1) / 200 * LR if k < 200 else LR * 0.9995 ** (k + 1 - 200)


@pytest.mark.parametrize(
    ("name", "scheduler_class", "interval", "closed_form", "steps"),
    [
        ("step", torch.optim.lr_scheduler.StepLR, "epoch", step_lr, range(8)),
        ("exponential", torch.optim.lr_scheduler.ExponentialLR, "epoch", exponential_lr, range(8)),
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, "epoch", cosine_lr, range(6)),
        ("warmup", WarmupDecay, "step", warmup_lr, [0, 1, 99, 198, 199, 200, 201, 600]),
    ],
)
def test_scheduler_config_follows_closed_form(mnist_dir, name, scheduler_class, interval, closed_form, steps):
    cli = build_cli(mnist_dir, "--config", str(MODEL_CONFIGS["cnn"]), "--config", str(SCHEDULER_CONFIGS[name]))
    config = cli.model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert type(scheduler) is scheduler_class
    assert config["lr_scheduler"]["interval"] == interval
    assert "monitor" not in config["lr_scheduler"]
    done = 0
    for k in steps:
        for _ in range(k - done):
            optimizer.step()
            scheduler.step()
        done = k
        assert optimizer.param_groups[0]["lr"] == pytest.approx(closed_form(k), rel=1e-9, abs=1e-15), f"step {k}"


def test_warmup_decay_factor():
    scheduler = WarmupDecay(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), warmup=4, gamma=0.5)
    assert [scheduler.factor(t) for t in range(7)] == [0.25, 0.5, 0.75, 1.0, 0.5, 0.25, 0.125]
    assert scheduler.get_last_lr() == [0.25]  # constructing it takes step 0


def test_warmup_decay_rejects_zero_warmup():
    with pytest.raises(ValueError, match="warmup"):
        WarmupDecay(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), warmup=0)


def test_warmup_decay_state_round_trip():
    def make() -> tuple[torch.optim.Optimizer, WarmupDecay]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        return optimizer, WarmupDecay(optimizer, warmup=3, gamma=0.5)

    optimizer, scheduler = make()
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    resumed_optimizer, resumed = make()
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    resumed_optimizer.step()
    resumed.step()
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.5**4)


def sgd_model(**kwargs) -> MLPClassifier:
    optimizer = functools.partial(torch.optim.SGD, lr=kwargs.pop("lr", 0.1))
    return MLPClassifier(**MNIST_SHAPE, hidden_sizes=(16,), batch_norm=False, optimizer=optimizer, **kwargs)


@pytest.mark.parametrize(("interval", "expected_steps"), [("epoch", 3), ("step", 6)])
def test_trainer_steps_scheduler_per_interval(mnist_dir, interval, expected_steps):
    model = sgd_model(
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        scheduler_interval=interval,
    )
    trainer = quick_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule(mnist_dir))
    assert trainer.global_step == 6
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**expected_steps)


@pytest.mark.parametrize("argv", [["--model.scheduler", "ReduceLROnPlateau"], ["--model.scheduler=ReduceLROnPlateau"]])
def test_plateau_short_name_on_command_line(mnist_dir, argv):
    cli = build_cli(mnist_dir, *argv, "--model.scheduler.monitor", "val/loss", "--model.scheduler.factor", "0.25")
    config = cli.model.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert type(scheduler) is lightning.pytorch.cli.ReduceLROnPlateau  # Lightning's: torch's plus its monitor
    assert scheduler.monitor == "val/loss"
    assert scheduler.factor == 0.25
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    assert config["lr_scheduler"]["interval"] == "epoch"


def test_plateau_short_name_through_main(mnist_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        proj.cli.main(
            ["fit", "--model.scheduler", "ReduceLROnPlateau", "--model.scheduler.monitor=val/acc", "--print_config"]
        )
    assert exit_info.value.code in (0, None)
    scheduler = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["scheduler"]
    assert scheduler["class_path"] == "lightning.pytorch.cli.ReduceLROnPlateau"
    assert scheduler["init_args"]["monitor"] == "val/acc"


def test_plateau_without_monitor_says_which_flag(mnist_dir, capsys):
    """Lightning's ReduceLROnPlateau has no default metric to watch: the error names the flag to set."""
    with pytest.raises(SystemExit) as exit_info:
        proj.cli.main(["fit", "--model.scheduler", "ReduceLROnPlateau", "--data.data_dir", str(mnist_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--model.scheduler.monitor" in err


def test_expand_short_names():
    full = "lightning.pytorch.cli.ReduceLROnPlateau"
    assert proj.cli.expand_short_names(["--model.scheduler", "ReduceLROnPlateau", "--x=ReduceLROnPlateau"]) == [
        "--model.scheduler",
        full,
        f"--x={full}",
    ]
    unchanged = ["--model.scheduler", "StepLR", "--model.scheduler.monitor=val/loss", "--a=b=c"]
    assert proj.cli.expand_short_names(unchanged) == unchanged


def test_plateau_config_monitor(mnist_dir):
    cli = build_cli(mnist_dir, "--config", str(MODEL_CONFIGS["mlp"]), "--config", str(SCHEDULER_CONFIGS["plateau"]))
    config = cli.model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    assert config["lr_scheduler"]["scheduler"].factor == 0.3


@pytest.mark.parametrize(("patience", "reductions"), [(0, 2), (5, 0)])
def test_plateau_lowers_lr_when_val_loss_stalls(mnist_dir, patience, reductions):
    """At lr 1e-4 val/loss never drops by half (threshold 0.5): every epoch after the first is a bad one."""
    scheduler = functools.partial(
        lightning.pytorch.cli.ReduceLROnPlateau,
        monitor="val/loss",
        factor=0.5,
        patience=patience,
        threshold=0.5,
        mode="min",
    )
    model = sgd_model(lr=1e-4, scheduler=scheduler)
    trainer = quick_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=datamodule(mnist_dir))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5**reductions)


one_cycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=None, final_div_factor=10)


@pytest.mark.parametrize(("interval", "expected_steps"), [("epoch", 3), ("step", 6)])
def test_one_cycle_without_total_steps_spans_the_run(mnist_dir, interval, expected_steps):
    """Lightning's run length fills in total_steps: the schedule ends on the last step, whatever the batches."""
    model = sgd_model(scheduler=one_cycle, scheduler_interval=interval)
    trainer = quick_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule(mnist_dir))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == expected_steps
    assert scheduler.last_epoch == expected_steps  # stepped as often as it allows: no "Tried to step" error


def test_one_cycle_with_total_steps_keeps_it():
    model = sgd_model(scheduler=functools.partial(one_cycle, total_steps=50), scheduler_interval="step")
    assert model.configure_optimizers()["lr_scheduler"]["scheduler"].total_steps == 50


def test_one_cycle_refuses_a_run_without_end(mnist_dir):
    model = sgd_model(scheduler=one_cycle, scheduler_interval="step")
    trainer = quick_trainer(max_epochs=-1)
    with pytest.raises(UserError, match=r"this run has no end.*--trainer.max_epochs or --model.scheduler.init_args"):
        trainer.fit(model, datamodule=datamodule(mnist_dir))


def test_one_cycle_keeps_a_length_the_config_gives():
    """A loop of one's own (proj.bench's classic loop) has no Trainer: it gives total_steps, which is kept."""
    given = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=40, final_div_factor=10)
    model = sgd_model(scheduler=given, scheduler_interval="step")
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert scheduler.total_steps == 40
    for _ in range(40):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] < 0.1 / 25  # annealed below the starting rate
