"""proj.sweep and proj.search_space: parsing, samplers, resuming, pruning, best.yaml, TensorBoard runs, errors."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial, TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import proj.fit
import proj.sweep
from conftest import CONFIGS, MODEL_CONFIGS, ROOT, build_cli, tiny_run_args
from proj.errors import UserError
from proj.models import ImageClassifier
from proj.models.base import NonFiniteLossError
from proj.search_space import SearchSpace, cli_args

NO_CALLBACKS = ("--trainer.callbacks=[]",)  # no figures: half the time of a tiny trial
SMALL_SPACE = {
    "model.optimizer.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "model.hidden_sizes": {"type": "categorical", "choices": [[32], [64, 32]]},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def sweep_args(mnist_dir: Path, out_dir: Path, space: Path, *options: str) -> list[str]:
    """A sweep of one-epoch MLP fits of a few steps on the synthetic data."""
    fit_args = tiny_run_args(mnist_dir, out_dir.parent / "logs", "--config", str(MODEL_CONFIGS["mlp"]))
    return ["--space", str(space), "--out_dir", str(out_dir), "--max_epochs", "1", *options, *fit_args]


def load_study(out_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out_dir / 'study.db'}")


def exit_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """The `error: ...` line of a sweep that must stop with status 2, and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        proj.sweep.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# Search space files


def test_each_distribution_type_and_fixed_value():
    space = SearchSpace.parse(
        {
            "model.optimizer.lr": {"type": "float", "low": "1e-4", "high": 0.1, "log": True},  # YAML reads 1e-4 as str
            "model.hidden_size": {"type": "int", "low": 64, "high": 256, "step": 64},
            "data.batch_size": {"type": "categorical", "choices": [32, 64]},
            "model.optimizer": {
                "type": "categorical",
                "choices": [{"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}}, "Adam"],
            },
            "model.scheduler": {"type": "categorical", "choices": {"none": None, "step": {"class_path": "StepLR"}}},
            "model.scheduler_interval": "epoch",
        }
    )
    dists = {param.key: param.distribution for param in space.params}
    assert dists["model.optimizer.lr"] == FloatDistribution(1e-4, 0.1, log=True)
    assert dists["model.hidden_size"] == IntDistribution(64, 256, step=64)
    assert dists["data.batch_size"] == CategoricalDistribution([32, 64])
    assert dists["model.optimizer"] == CategoricalDistribution(["SGD(momentum=0.9)", "Adam"])  # labels of sub-configs
    assert dists["model.scheduler"] == CategoricalDistribution(["none", "step"])
    assert space.fixed == (("model.scheduler_interval", "epoch"),)

    trial = FixedTrial(
        {
            "model.optimizer.lr": 0.01,
            "model.hidden_size": 128,
            "data.batch_size": 64,
            "model.optimizer": "SGD(momentum=0.9)",
            "model.scheduler": "none",
        }
    )
    overrides = space.suggest(trial)  # type: ignore[arg-type]
    keys = [key for key, _ in overrides]
    assert keys.index("model.optimizer") < keys.index("model.optimizer.lr")  # the parent first, whatever the file says
    assert dict(overrides) == {
        "model.optimizer.lr": 0.01,
        "model.hidden_size": 128,
        "data.batch_size": 64,
        "model.optimizer": {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}},
        "model.scheduler": None,
        "model.scheduler_interval": "epoch",
    }
    flags = cli_args(overrides)
    assert flags[flags.index("--model.optimizer") + 1] == "{class_path: torch.optim.SGD, init_args: {momentum: 0.9}}"
    assert flags[flags.index("--model.scheduler") + 1] == "null"
    assert cli_args([("model.optimizer.lr", 1e-05)]) == ["--model.optimizer.lr", "1.0e-05"]  # YAML reads it as float


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([1, 2], "must map CLI keys to distributions"),
        ({"model.dropout": {"low": 0, "high": 1}}, "has no `type`"),
        ({"model.dropout": {"type": "uniform", "low": 0, "high": 1}}, "unknown distribution type 'uniform'"),
        ({"model.dropout": {"type": "float", "low": 0, "hi": 1}}, "unknown field(s) hi"),
        ({"model.dropout": {"type": "float", "low": 0.5, "high": 0.1}}, "model.dropout"),
        ({"model.optimizer.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "model.optimizer.lr"),
        ({"model.dropout": {"type": "float", "low": "a", "high": 1}}, "`low` must be a number"),
        ({"model.hidden_size": {"type": "int", "low": 1.5, "high": 8}}, "must be a whole number"),
        ({"data.batch_size": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"data.batch_size": {"type": "categorical", "choices": [32, 32]}}, "repeated choice"),
        (
            {"model.optimizer": {"type": "categorical", "choices": [{"class_path": "A"}, {"class_path": "x.A"}]}},
            "both read",
        ),
        ({"--model.dropout": {"type": "float", "low": 0, "high": 1}}, "without dashes"),
        ({"model.scheduler_interval": "epoch"}, "nothing to search"),
    ],
)
def test_bad_search_space_is_a_user_error(spec, message):
    with pytest.raises(UserError) as error:
        SearchSpace.parse(spec, "space.yaml")
    assert message in str(error.value)


def test_search_space_files(tmp_path):
    for name in ("cnn", "mlp", "grid"):  # the shipped ones parse
        assert SearchSpace.load(CONFIGS / "sweep" / f"{name}.yaml").params
    with pytest.raises(UserError, match="does not exist"):
        SearchSpace.load(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("model.dropout: {type: float\n")
    with pytest.raises(UserError, match="not valid YAML"):
        SearchSpace.load(tmp_path / "broken.yaml")


def test_grid_needs_finite_choices():
    space = SearchSpace.parse(
        {
            "data.batch_size": {"type": "categorical", "choices": [32, 64]},
            "model.hidden_size": {"type": "int", "low": 16, "high": 48, "step": 16},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
        }
    )
    assert space.grid() == {
        "data.batch_size": [32, 64],
        "model.hidden_size": [16, 32, 48],
        "model.dropout": [0.0, 0.1, 0.2, 0.3],
    }
    continuous = SearchSpace.parse({"model.dropout": {"type": "float", "low": 0.0, "high": 0.3}})
    with pytest.raises(UserError, match=r"grid sampler needs finite choices, and model\.dropout is a continuous"):
        continuous.grid()


def at_key(config: dict[str, Any], key: str) -> Any:
    """The value at a CLI key (`model.optimizer.lr`) of a dumped config, stepping into `init_args` as the CLI does."""
    node = config
    for part in key.split("."):
        if part not in node and "init_args" in node:
            node = node["init_args"]
        node = node[part]
    return node


def is_choice(landed: Any, choice: Any) -> bool:
    """Whether a config value is this choice: the same value, or the same class with the choice's arguments."""
    if isinstance(choice, dict) and "class_path" in choice:
        arguments = choice.get("init_args") or {}
        return (
            isinstance(landed, dict)
            and landed["class_path"] == choice["class_path"]
            and all(landed["init_args"][name] == value for name, value in arguments.items())
        )
    return bool(landed == choice)


def test_shipped_spaces_parse_with_the_cli(mnist_dir):
    """Every choice and both ends of every range of configs/sweep/*.yaml, and a random draw, are flags the CLI
    accepts, and each value lands at its key of the parsed config, as set, inside its range or among its choices."""
    parser = build_cli(mnist_dir).parser
    for model, space_name in (("cnn", "cnn"), ("mlp", "mlp"), ("mlp", "grid")):
        space = SearchSpace.load(CONFIGS / "sweep" / f"{space_name}.yaml")
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for overrides in [*space.probes(), space.suggest(study.ask())]:
            flags = ["--config", str(MODEL_CONFIGS[model]), *cli_args(overrides)]
            parsed = proj.sweep.parse_flags(parser, flags, "probe")
            config = json.loads(parser.dump(parsed, format="json", skip_unset=False))
            for key, value in [*overrides, *space.fixed]:
                assert is_choice(at_key(config, key), value), (space_name, key, value, at_key(config, key))
            for param in space.params:
                landed, dist = at_key(config, param.key), param.distribution
                if isinstance(dist, CategoricalDistribution):
                    assert any(is_choice(landed, choice) for choice in param.ends()), (space_name, param.key, landed)
                else:
                    assert dist.low <= landed <= dist.high, (space_name, param.key, landed)


# Whole sweeps on the synthetic data


def test_random_sweep_writes_best_yaml_logs_each_trial_and_resumes(mnist_dir, tmp_path, capsys, monkeypatch):
    trainers = []
    fit = Trainer.fit

    def spy(trainer, *args, **kwargs):
        trainers.append(trainer)
        return fit(trainer, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", spy)
    out_dir = tmp_path / "sweep"
    args = sweep_args(mnist_dir, out_dir, write_space(tmp_path / "small.yaml", SMALL_SPACE), "--sampler", "random")
    proj.sweep.main([*args, "--n_trials", "3", "--seed", "0"])
    stdout = capsys.readouterr().out
    assert "trial  val/acc  time  state     model.optimizer.lr  model.hidden_sizes" in stdout
    assert f"Its config: {out_dir / 'best.yaml'}" in stdout
    study = load_study(out_dir, "small")
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 3
    assert f"Best: trial {study.best_trial.number}, val/acc = {study.best_value:.4f}" in stdout

    for trainer in trainers:  # pruning on --metric; no progress bar or model summary per trial
        pruning = [c for c in trainer.callbacks if isinstance(c, proj.sweep.PyTorchLightningPruningCallback)]
        assert [c.monitor for c in pruning] == ["val/acc"]
        assert not [c for c in trainer.callbacks if isinstance(c, (ProgressBar, ModelSummary))]
    for trial in study.trials:  # one TensorBoard run per trial, its searched values and the metric in HPARAMS
        run = out_dir / f"trial_{trial.number:03d}"
        hparams = yaml.safe_load((run / "hparams.yaml").read_text())
        assert hparams["sweep/trial"] == trial.number
        assert hparams["sweep/model.hidden_sizes"] == trial.params["model.hidden_sizes"]
        events = EventAccumulator(str(run))
        events.Reload()
        assert events.Scalars("val/acc")[-1].value == pytest.approx(trial.value)
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/experiment"]
        ).experiment
        assert "val/acc" in {info.name.tag for info in experiment.metric_infos}

    best = yaml.safe_load((out_dir / "best.yaml").read_text())
    assert best["model"]["init_args"]["optimizer"]["init_args"]["lr"] == study.best_params["model.optimizer.lr"]
    assert best["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "logs")  # the config's, not a trial's
    assert "test_after_fit" not in best
    cli = build_cli(mnist_dir, "--config", str(out_dir / "best.yaml"))
    assert cli.model.hparams["hidden_sizes"] == yaml.safe_load(study.best_params["model.hidden_sizes"])

    proj.sweep.main([*args, "--n_trials", "1"])  # the same command again: one more trial in the same study
    assert len(load_study(out_dir, "small").trials) == 4
    assert "4 trials (4 complete)" in capsys.readouterr().out


@pytest.mark.slow
def test_best_yaml_trains_with_proj_fit(mnist_dir, tmp_path, capsys, monkeypatch):
    """The fit of best.yaml trains with the best trial's values, none of them the base flags': its model's hidden
    layers, its optimizer's rate and its batches are the ones drawn."""
    space = {**SMALL_SPACE, "data.batch_size": {"type": "categorical", "choices": [16, 48]}}  # the flags say 32
    out_dir = tmp_path / "sweep"
    proj.sweep.main([*sweep_args(mnist_dir, out_dir, write_space(tmp_path / "small.yaml", space)), "--n_trials", "1"])
    best = load_study(out_dir, "small").best_params
    trained = []
    training_step = ImageClassifier.training_step

    def recording(model, batch, batch_idx):  # what each step of the fit really trains with
        (group,) = model.trainer.optimizers[0].param_groups
        widths = [layer.out_features for layer in model.modules() if isinstance(layer, torch.nn.Linear)]
        trained.append((widths[:-1], group["initial_lr"], len(batch[0])))  # initial_lr: before the cosine's decay
        return training_step(model, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", recording)
    proj.fit.main(["--config", str(out_dir / "best.yaml")])  # what the sweep tells the user to run
    assert "Test accuracy:" in capsys.readouterr().out
    drawn = (yaml.safe_load(best["model.hidden_sizes"]), best["model.optimizer.lr"], best["data.batch_size"])
    assert trained
    assert all(step == drawn for step in trained), (trained[0], drawn)


def test_grid_sampler_runs_every_point_once(mnist_dir, tmp_path, capsys):
    grid = {
        "model.optimizer.lr": {"type": "categorical", "choices": [0.003, 0.03]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.2},
    }
    out_dir = tmp_path / "sweep"
    space = write_space(tmp_path / "grid.yaml", grid)
    options = ["--sampler", "grid", "--metric", "val/loss", "--direction", "minimize", *NO_CALLBACKS]
    proj.sweep.main(sweep_args(mnist_dir, out_dir, space, *options))  # no --n_trials: the whole grid
    study = load_study(out_dir, "grid")
    points = {(trial.params["model.optimizer.lr"], trial.params["model.dropout"]) for trial in study.trials}
    assert len(study.trials) == 4
    assert points == set(itertools.product([0.003, 0.03], [0.0, 0.2]))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    proj.sweep.main(sweep_args(mnist_dir, out_dir, space, *options))  # again: nothing left to run
    assert len(load_study(out_dir, "grid").trials) == 4
    assert "the grid is complete" in capsys.readouterr().out


def asked_in_turn(storage: optuna.storages.BaseStorage, sampler: str, workers: int, rounds: int) -> list[tuple]:
    """Trials of one study asked by `workers` workers in turn, each with the sampler `run` makes for `--seed 7`,
    all made before any trial exists (workers started together); each round, every worker asks before any tells.
    The values of the study's trials, in trial order."""
    space = SearchSpace.parse(SMALL_SPACE)
    studies = [
        optuna.create_study(
            study_name="s", storage=storage, load_if_exists=True, sampler=proj.sweep.make_sampler(sampler, space, 7)
        )
        for _ in range(workers)
    ]
    for _ in range(rounds):
        trials = [study.ask() for study in studies]
        for study, trial in zip(studies, trials, strict=True):
            space.suggest(trial)
            study.tell(trial, trial.params["model.optimizer.lr"])
    return [tuple(sorted(trial.params.items())) for trial in studies[0].trials]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_seeded_workers_never_draw_the_same_values_and_a_rerun_draws_them_again(sampler):
    """Workers started together with one --seed draw distinct values (14 trials: TPE's own draws begin after its
    10 random ones); a rerun from scratch draws the same values, a continued study those one longer run draws."""
    together = asked_in_turn(optuna.storages.InMemoryStorage(), sampler, workers=2, rounds=7)
    assert len(set(together)) == len(together) == 14
    once = asked_in_turn(optuna.storages.InMemoryStorage(), sampler, workers=1, rounds=6)
    assert asked_in_turn(optuna.storages.InMemoryStorage(), sampler, workers=1, rounds=6) == once  # reproducible
    continued = optuna.storages.InMemoryStorage()
    asked_in_turn(continued, sampler, workers=1, rounds=3)
    assert asked_in_turn(continued, sampler, workers=1, rounds=3) == once  # as if run at once: nothing drawn twice


@pytest.mark.slow
def test_workers_started_together_with_one_seed_never_repeat_a_trial(mnist_dir, tmp_path):
    """Two `python -m proj.sweep --seed 0` on one new SQLite study, each opening it before either has a trial in
    it (tests/fault_injection.py holds each worker's first trial until both are there): every trial is its own."""
    out_dir, arrived = tmp_path / "sweep", tmp_path / "arrived"
    arrived.mkdir()
    args = sweep_args(mnist_dir, out_dir, write_space(tmp_path / "small.yaml", SMALL_SPACE), *NO_CALLBACKS)
    options = ["--sampler", "random", "--seed", "0", "--n_trials", "1"]
    paths = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "tests" / "fault_injection.py"), "together", str(arrived), "2"]
    workers = [
        subprocess.Popen(
            [*command, *args, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    assert len(list(arrived.iterdir())) == 2
    trials = load_study(out_dir, "small").trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2
    values = [tuple(sorted(trial.params.items())) for trial in trials]
    assert values[0] != values[1], values


def test_median_pruner_stops_a_bad_trial_and_a_diverging_one(mnist_dir, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "sweep"
    out_dir.mkdir()
    lr_space = {"model.optimizer.lr": {"type": "float", "low": 1e-9, "high": 1e9, "log": True}}
    study = optuna.create_study(study_name="lr", storage=f"sqlite:///{out_dir / 'study.db'}", direction="maximize")
    for lr in (0.01, 1e-9, 1e9):  # learns; learns nothing; "diverges"
        study.enqueue_trial({"model.optimizer.lr": lr})
    training_step = ImageClassifier.training_step

    def diverging(model, batch, batch_idx):  # what the model raises when the loss is no longer finite
        if model.trainer.optimizers[0].param_groups[0]["lr"] > 1e6:
            raise NonFiniteLossError("the training loss is nan")
        return training_step(model, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", diverging)
    space = write_space(tmp_path / "lr.yaml", lr_space)
    proj.sweep.main(
        sweep_args(mnist_dir, out_dir, space, "--pruner_startup_trials", "1", "--n_trials", "3", *NO_CALLBACKS)
    )
    good, bad, diverged = load_study(out_dir, "lr").trials
    assert good.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED
    assert bad.user_attrs["outcome"] == "pruned at epoch 0"
    assert bad.intermediate_values[0] < good.intermediate_values[0]
    assert diverged.state == TrialState.PRUNED
    assert diverged.user_attrs["outcome"] == "diverged at epoch 0"
    assert "pruned at epoch 0" in capsys.readouterr().out


# Errors: one `error:` line, status 2


@pytest.mark.parametrize(
    ("options", "space", "message"),
    [
        (["--sampler", "bayes"], SMALL_SPACE, "unknown sampler 'bayes': use --sampler grid or random or tpe"),
        (["--pruner", "hyperband"], SMALL_SPACE, "unknown pruner 'hyperband'"),
        ([], {"model.dropout": {"type": "normal", "low": 0, "high": 1}}, "unknown distribution type 'normal'"),
        (["--sampler", "grid"], SMALL_SPACE, "model.optimizer.lr is a continuous float range"),
        ([], {"model.optimizer.lrr": {"type": "float", "low": 0.1, "high": 1}}, "unknown key model.optimizer.lrr"),
        ([], {"trainer.foo": {"type": "int", "low": 1, "high": 2}}, "unrecognized arguments '--trainer.foo 1'"),
        (["--pruner_startup_trials", "many"], SMALL_SPACE, "--pruner_startup_trials expects int, got 'many'."),
        (["--seed", "-1"], SMALL_SPACE, "--seed -1 is out of range: use a number from 0 to 4294967295"),
    ],
)
def test_errors_are_one_line(mnist_dir, tmp_path, capsys, options, space, message):
    args = sweep_args(mnist_dir, tmp_path / "sweep", write_space(tmp_path / "space.yaml", space), *options)
    line = exit_error(capsys, args)
    assert line.startswith("error: ")
    assert message in line
    assert not (tmp_path / "sweep").exists()  # checked before the study is created


def test_missing_space_file_and_a_study_with_another_goal(mnist_dir, tmp_path, capsys):
    line = exit_error(capsys, sweep_args(mnist_dir, tmp_path / "sweep", tmp_path / "nowhere.yaml"))
    assert "search space" in line and "does not exist" in line
    out_dir = tmp_path / "sweep"
    out_dir.mkdir()
    optuna.create_study(study_name="small", storage=f"sqlite:///{out_dir / 'study.db'}", direction="minimize")
    line = exit_error(capsys, sweep_args(mnist_dir, out_dir, write_space(tmp_path / "small.yaml", SMALL_SPACE)))
    assert "was started to minimize val/acc: continue it with --metric val/acc --direction minimize" in line


def test_sweep_flags_are_the_parameters_of_run(tmp_path, capsys, monkeypatch):
    """The sweep's flags and defaults are `run`'s; every other flag, wherever it is, goes to the trials' fits."""
    assert proj.sweep.argument_parser().parse_args(["--space", "s.yaml"]).as_dict() == {
        "space": "s.yaml",
        "sampler": "tpe",
        "n_trials": None,
        "timeout": None,
        "max_epochs": None,
        "metric": "val/acc",
        "direction": "maximize",
        "pruner": "median",
        "pruner_startup_trials": 5,
        "pruner_warmup_epochs": 0,
        "study_name": None,
        "out_dir": None,
        "storage": None,
        "seed": None,
    }
    assert "the following arguments are required: --space" in exit_error(capsys, ["--config", "c.yaml"])

    class Built(Exception):
        pass

    def sweep(space, fit_args, metric, out_dir, max_epochs):
        raise Built(fit_args, metric, max_epochs)

    monkeypatch.setattr(proj.sweep, "Sweep", sweep)
    space = write_space(tmp_path / "small.yaml", SMALL_SPACE)
    argv = [
        "--config",
        "c.yaml",
        "--space",
        str(space),
        "--max_epochs=2",
        "--data.batch_size",
        "8",
        "--metric",
        "val/loss",
    ]
    with pytest.raises(Built) as built:
        proj.sweep.main(argv)
    assert built.value.args == (["--config", "c.yaml", "--data.batch_size", "8"], "val/loss", 2)
