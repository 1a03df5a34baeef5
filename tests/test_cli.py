from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    RichModelSummary,
    RichProgressBar,
)

import proj.cli
import proj.fit
from conftest import CONFIGS, MODEL_CONFIGS, SCHEDULER_CONFIGS, build_cli, run_python
from proj.callbacks import ConfusionMatrix, HParamsMetrics, PredictionGrid
from proj.callbacks.checkpoint import ResumableCheckpoint
from proj.callbacks.preemption import Preemption
from proj.callbacks.rng_state import RNGState
from proj.models import CNNClassifier, MLPClassifier


def printed_config(capsys: pytest.CaptureFixture[str], main: Any, *args: str) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_print_config_round_trip(capsys, tmp_path):
    first = printed_config(capsys, proj.fit.main, "--config", str(MODEL_CONFIGS["mlp"]))
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(first))
    assert printed_config(capsys, proj.fit.main, "--config", str(path)) == first
    printed = leaves(first)
    for key, value in leaves(yaml.safe_load(MODEL_CONFIGS["mlp"].read_text())).items():
        assert printed[key] == value, key
    assert printed["test_after_fit"] is True


def test_test_after_fit_only_default_in_proj_fit(capsys):
    assert printed_config(capsys, proj.cli.main, "fit")["test_after_fit"] is False
    assert printed_config(capsys, proj.fit.main)["test_after_fit"] is True
    assert printed_config(capsys, proj.fit.main, "--test_after_fit", "false")["test_after_fit"] is False


def own_defaults(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def assert_default_hparams(model, cls):
    assert type(model) is cls
    for name, default in own_defaults(cls).items():
        value = model.hparams[name]
        assert (tuple(value) if isinstance(value, list) else value) == default, name


def test_default_model_is_cnn(mnist_dir):
    assert_default_hparams(build_cli(mnist_dir).model, CNNClassifier)


def test_model_by_short_name_gets_its_own_defaults(mnist_dir):
    assert_default_hparams(build_cli(mnist_dir, "--model", "MLPClassifier").model, MLPClassifier)


def test_model_flags(mnist_dir):
    model = build_cli(
        mnist_dir, "--model", "MLPClassifier", "--model.hidden_sizes", "[64, 32]", "--model.dropout", "0"
    ).model
    assert model.hparams["hidden_sizes"] == [64, 32]
    assert [m.out_features for m in model.net if isinstance(m, torch.nn.Linear)] == [64, 32, 10]


def test_data_module_gives_the_model_its_input_shape_and_classes(mnist_dir):
    model = build_cli(mnist_dir).model
    assert (model.hparams["input_shape"], model.hparams["num_classes"]) == ([1, 28, 28], 10)
    # Plain YAML in the logger's hparams.yaml (Lightning writes it with yaml.dump): no !!python/tuple
    assert yaml.safe_load(yaml.dump(dict(model.hparams)))["input_shape"] == [1, 28, 28]


@pytest.mark.parametrize(
    ("flags", "cls", "expected"),
    [
        (
            ["SGD", "--model.optimizer.lr", "0.1", "--model.optimizer.momentum", "0.9"],
            torch.optim.SGD,
            {"lr": 0.1, "momentum": 0.9},
        ),
        (["Adam", "--model.optimizer.lr", "0.01"], torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.0}),
        (["Adam", "--model.optimizer.weight_decay", "0.01"], torch.optim.Adam, {"lr": 1e-3, "weight_decay": 0.01}),
        (["AdamW", "--model.optimizer.weight_decay", "0.01"], torch.optim.AdamW, {"weight_decay": 0.01}),
        (
            ["RMSprop", "--model.optimizer.lr", "0.005", "--model.optimizer.alpha", "0.9"],
            torch.optim.RMSprop,
            {"lr": 0.005, "alpha": 0.9},
        ),
    ],
)
def test_optimizer_flags(mnist_dir, flags, cls, expected):
    optimizer = build_cli(mnist_dir, "--model.optimizer", *flags).model.configure_optimizers()
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected


@pytest.mark.parametrize("model_name", sorted(MODEL_CONFIGS))
@pytest.mark.parametrize("scheduler_name", sorted(SCHEDULER_CONFIGS))
def test_config_stacks_parse(mnist_dir, model_name, scheduler_name):
    cli = build_cli(
        mnist_dir, "--config", str(MODEL_CONFIGS[model_name]), "--config", str(SCHEDULER_CONFIGS[scheduler_name])
    )
    expected = yaml.safe_load(SCHEDULER_CONFIGS[scheduler_name].read_text())["model"]["init_args"]
    assert type(cli.model) is {"mlp": MLPClassifier, "cnn": CNNClassifier}[model_name]
    scheduler = cli.model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert f"{type(scheduler).__module__}.{type(scheduler).__name__}" == expected["scheduler"]["class_path"]
    for key, value in expected["scheduler"]["init_args"].items():
        assert getattr(scheduler, key) == value, key
    assert cli.model.hparams["scheduler_interval"] == expected.get("scheduler_interval", "epoch")
    assert cli.trainer.logger.name == model_name


def test_early_stopping_config_keeps_default_callbacks(mnist_dir):
    cli = build_cli(mnist_dir, "--config", str(MODEL_CONFIGS["cnn"]), "--config", str(CONFIGS / "early_stopping.yaml"))
    callbacks = {type(callback): callback for callback in cli.trainer.callbacks}
    for cls in (
        RichProgressBar,
        RichModelSummary,
        PredictionGrid,
        ConfusionMatrix,
        HParamsMetrics,
        ResumableCheckpoint,
        LearningRateMonitor,
        RNGState,
        Preemption,
    ):
        assert cls in callbacks, cls.__name__
    stopping = callbacks[EarlyStopping]
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/loss", "min", 3)
    assert cli.trainer.max_epochs == 50


def test_checkpoint_and_lr_monitor_defaults(mnist_dir):
    trainer = build_cli(mnist_dir).trainer
    checkpoint = trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val/acc", "max", True)
    monitor = next(c for c in trainer.callbacks if isinstance(c, LearningRateMonitor))
    assert monitor.logging_interval == "epoch"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data.batch_size", "0"], "--data.batch_size"),
        (["--data.val_size", "0"], "--data.val_size"),
        (["--data.batch_size", "many"], "batch_size"),
        (["--model", "NoSuchModel"], "NoSuchModel"),
    ],
)
def test_bad_input_exits_with_status_2(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        proj.cli.main(["fit", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert message in err
    assert "Traceback" not in err


def test_missing_data_dir_in_subprocess(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_python(
        "-m", "proj.fit", "--data.data_dir", str(missing), "--data.download", "false", "--trainer.accelerator", "cpu"
    )
    assert result.returncode == 2
    assert "error: MNIST not found" in result.stderr
    assert str(missing) in result.stderr
    assert "--data.data_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists()


def test_disabling_progress_bar_and_summary_drops_the_default_rich_callbacks(mnist_dir):
    cli = build_cli(mnist_dir, "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")
    assert cli.trainer.progress_bar_callback is None
    assert not any(isinstance(callback, (RichProgressBar, RichModelSummary)) for callback in cli.trainer.callbacks)
    assert any(isinstance(callback, PredictionGrid) for callback in cli.trainer.callbacks)  # the others stay
