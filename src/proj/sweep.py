"""`python -m proj.sweep`: hyperparameter search with Optuna, each trial one fit through the proj CLI.

    python -m proj.sweep --config configs/cnn.yaml --space configs/sweep/cnn.yaml --n_trials 30

A trial is the fit `python -m proj fit --config configs/cnn.yaml [other flags] --KEY VALUE...` would run, with
the values the sampler drew for the keys of the search space (see `proj.search_space`), without the test or a
progress bar, logged to TensorBoard in <out_dir>/trial_NNN. The median pruner stops a trial whose --metric
trails the median of earlier trials at the same epoch. The study lives in a database (SQLite in <out_dir> by
default; with a server URL, workers on several machines share one study), so the same command run again adds
--n_trials more. At the end: a table of the trials, and <out_dir>/best.yaml, the best trial's full config for
`python -m proj.fit --config <out_dir>/best.yaml`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import sys
import time
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from pydoc import locate
from typing import Any, TextIO

import numpy as np
import optuna
import sqlalchemy
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from proj.callbacks import HParamsMetrics
from proj.cli import ProjCLI, build, expand_short_names
from proj.commands import function_parser, parse, split_flags
from proj.errors import UserError, exit_on_user_error, summarize_parse_error
from proj.models.base import NonFiniteLossError
from proj.outputs import atomic_output
from proj.search_space import Override, SearchSpace, cli_args

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "none")
DIRECTIONS = ("maximize", "minimize")
DEFAULT_TRIALS = 20
TABLE_ROWS = 20
# A trial's fit, beside the trial's own logger and callbacks: no progress bar or model summary (Optuna prints one line
# per trial instead). Not among the trial's flags that best.yaml is made of.
QUIET = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


class TrialFailed(Exception):
    """A fit that crashed (not a wrong flag): the trial is marked failed and the sweep goes on."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a fit, which Lightning turns into SystemExit: as a KeyboardInterrupt, Optuna marks
    the trial failed instead of leaving it "running" in the study forever."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def parse_flags(parser: ArgumentParser, flags: list[str], what: str) -> Namespace:
    """The CLI's parse of `flags`; its error (an unknown key, a bad value) becomes a UserError naming `what`."""
    try:
        return parser.parse_args(expand_short_names(flags))
    except ArgumentError as err:
        raise UserError(f"{what}: {summarize_parse_error(str(err))}") from err


def build_cli(flags: list[str], what: str, callbacks: Sequence[Callback] = (), record: bool = True) -> ProjCLI:
    """Model, data module and Trainer from the flags, as `python -m proj fit` would build them (see proj.cli.build)."""
    try:
        return build(flags, callbacks=callbacks, record=record)
    except ArgumentError as err:
        raise UserError(f"{what}: {summarize_parse_error(str(err))}") from err


def described(overrides: list[Override]) -> str:
    return f"the search space's flags `{' '.join(cli_args(overrides))}` do not parse"


def logger_flag(save_dir: Path, version: str) -> str:
    """One TensorBoard run per trial, <save_dir>/<version>, whatever logger the base config names."""
    init_args = {"save_dir": str(save_dir), "name": "", "version": version, "default_hp_metric": False}
    return json.dumps({"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": init_args})


def declare_metric(callbacks: list[dict[str, Any]], metric: str) -> str:
    """`--trainer.callbacks` (as `callbacks`, dumped config entries) with the swept metric as a column of
    TensorBoard's HPARAMS tab, beside the trial's hyperparameters: among HParamsMetrics' (or one of its own)."""
    hparams_metrics = [
        c for c in callbacks if isinstance(cls := locate(c["class_path"]), type) and issubclass(cls, HParamsMetrics)
    ]
    for callback in hparams_metrics:
        if metric not in (metrics := callback["init_args"]["metrics"]):
            callback["init_args"]["metrics"] = [*metrics, metric]
    if not hparams_metrics:
        callbacks.append({"class_path": "proj.callbacks.HParamsMetrics", "init_args": {"metrics": [metric]}})
    return json.dumps(callbacks)


class NoUserErrorTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; for a UserError (printed as `error: ...` at the end) or an
    interrupt, the one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (UserError, KeyboardInterrupt)):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def quiet_trials() -> Iterator[None]:
    """Lightning's per-fit info lines ("GPU available", "Seed set"...) hidden, and each distinct warning shown
    once per sweep (every trial builds a new CLI, which resets Python's record of the warnings already shown)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    optuna_logger, no_traceback = logging.getLogger("optuna"), NoUserErrorTraceback()
    shown: set[tuple[str, type[Warning], str, int]] = set()
    showwarning = warnings.showwarning

    def show_once(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if (key := (str(message), category, filename, lineno)) not in shown:
            shown.add(key)
            showwarning(message, category, filename, lineno, file, line)

    for logger in loggers:
        logger.setLevel(logging.WARNING)
    for handler in optuna_logger.handlers:
        handler.addFilter(no_traceback)
    warnings.showwarning = show_once
    try:
        yield
    finally:
        warnings.showwarning = showwarning
        for handler in optuna_logger.handlers:
            handler.removeFilter(no_traceback)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class Sweep:
    """The trials of one study: their flags, the objective Optuna calls, and best.yaml."""

    def __init__(
        self, space: SearchSpace, fit_args: list[str], metric: str, out_dir: Path, max_epochs: int | None = None
    ) -> None:
        self.space, self.metric, self.out_dir = space, metric, out_dir
        self.base_flags = [*fit_args, *(["--trainer.max_epochs", str(max_epochs)] if max_epochs is not None else [])]
        self.parser: ArgumentParser | None = None
        self.failures: list[str] = []
        self.finished = 0  # trials this process ran to an end, whatever the end

    def flags(self, overrides: list[Override]) -> list[str]:
        return [*self.base_flags, *cli_args(overrides)]

    def check(self) -> None:
        """The fit flags built, their data found, and every choice and both ends of every range of the search
        space parsed, before the study starts: a typo fails now rather than at trial 40."""
        base = build_cli(self.base_flags, "the fit flags do not parse", record=False)
        base.datamodule.prepare_data()  # data_dir, download: the same for every trial
        self.parser = base.parser
        for overrides in self.space.probes():
            parse_flags(base.parser, self.flags(overrides), described(overrides))

    def callbacks_flag(self, flags: list[str], what: str) -> str:
        """The `--trainer.callbacks` of these flags' config, with the swept metric declared (see declare_metric)."""
        assert self.parser is not None
        config = parse_flags(self.parser, flags, what)
        callbacks = json.loads(self.parser.dump(config, format="json", skip_unset=False))["trainer"]["callbacks"]
        return declare_metric([callbacks] if isinstance(callbacks, dict) else callbacks or [], self.metric)

    def objective(self, trial: optuna.Trial) -> float:
        flags = self.flags(self.space.suggest(trial))
        log_dir = self.out_dir / f"trial_{trial.number:03d}"
        trial.set_user_attr("flags", flags)
        trial.set_user_attr("log_dir", str(log_dir))
        if log_dir.exists():
            raise UserError(
                f"{log_dir} already exists, from an earlier study of the same name: delete it, or choose another "
                "--out_dir or --study_name"
            )
        what = f"the flags of trial {trial.number} do not parse"
        logger, callbacks = logger_flag(self.out_dir, log_dir.name), self.callbacks_flag(flags, what)
        pruning = PyTorchLightningPruningCallback(trial, monitor=self.metric)
        cli = build_cli([*flags, *QUIET, "--trainer.logger", logger, "--trainer.callbacks", callbacks], what, [pruning])
        trainer = cli.trainer
        if trainer.logger is not None:  # the searched values by name, filterable in the HPARAMS tab
            searched = {f"sweep/{key}": value for key, value in self.space.labels(trial.params).items()}
            trainer.logger.log_hyperparams({"sweep/trial": trial.number, **searched})
        try:
            trainer.fit(cli.model, datamodule=cli.datamodule)
        except optuna.TrialPruned:
            trial.set_user_attr("outcome", f"pruned at epoch {trainer.current_epoch}")
            raise
        except NonFiniteLossError as err:  # a rate too high: as bad as it gets, which TPE learns from a pruned trial
            trial.set_user_attr("outcome", f"diverged at epoch {trainer.current_epoch}")
            raise optuna.TrialPruned(str(err)) from err
        except UserError:
            raise  # a flag every trial shares is wrong: stop the sweep
        except SystemExit as err:
            raise Interrupted(143 if isinstance(err, SIGTERMException) else 130) from err
        except Exception as err:
            lines = str(err).strip().splitlines()
            message = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
            trial.set_user_attr("outcome", f"failed: {message}"[:300])
            self.failures.append(f"trial {trial.number}: {message}")
            raise TrialFailed(message) from err
        finally:
            self.finished += 1
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise UserError(f"--metric {self.metric} was never logged; the fit logged {logged}")
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            trial.set_user_attr("best_model_path", trainer.checkpoint_callback.best_model_path)
        return float(value)

    def write_best(self, study: optuna.Study) -> FrozenTrial:
        """The best trial's complete config (base config and its values resolved), for `proj.fit --config`, in
        <out_dir>/best.yaml; that trial."""
        assert self.parser is not None
        best = study.best_trial
        flags = best.user_attrs.get("flags")
        if not isinstance(flags, list):
            raise UserError(f"trial {best.number} of study {study.study_name!r} was not run by proj.sweep")
        config = parse_flags(self.parser, flags, f"the flags of the best trial {best.number} no longer parse")
        if "test_after_fit" in config:
            del config["test_after_fit"]  # proj.fit tests after fitting; `proj fit` does not
        path = self.out_dir / "best.yaml"
        header = [
            f"Best trial of study {study.study_name!r}: trial {best.number}, {self.metric} = {best.value:.6g}",
            f"Searched: {', '.join(f'{k}={v}' for k, v in self.space.labels(best.params).items())}",
            f"Its logs: {best.user_attrs.get('log_dir', '?')}",
            f"Its best checkpoint: {best.user_attrs.get('best_model_path', '?')}",
            f"Train it: python -m proj.fit --config {path}",
        ]
        text = "".join(f"# {line}\n" for line in header) + self.parser.dump(config, skip_unset=False)
        with atomic_output(path) as partial:  # per process: workers may finish at the same time
            partial.write_text(text)
        if study.best_value != best.value:  # another worker's trial became the best meanwhile: again, so that
            return self.write_best(study)  # whichever worker writes last writes the best of them all
        return best


class SeededPerTrial(optuna.samplers.BaseSampler):
    """A sampler made anew for each trial, seeded from (--seed, the trial's number). The storage gives each trial
    of a study its own number, so workers sharing the study never draw from the same stream, even when started
    together with one --seed (or with seeds S and S+1), while a rerun from scratch draws what the first run drew
    (TPE: given the same results) and a continued study draws new values."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self.make, self.seed = make, seed
        self.sampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        (trial_seed,) = np.random.SeedSequence([self.seed, trial.number]).generate_state(1)
        self.sampler = self.make(int(trial_seed))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def make_sampler(name: str, space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "grid":  # trial N runs point N of the seeded order (then one neither run nor running): distinct
        return optuna.samplers.GridSampler(space.grid(), seed=seed)

    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed) if name == "random" else optuna.samplers.TPESampler(seed=seed)

    return make(None) if seed is None else SeededPerTrial(make, seed)


def make_pruner(name: str, startup_trials: int, warmup_epochs: int) -> optuna.pruners.BasePruner:
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)


def masked(url: str) -> str:
    """A storage URL without its password, for printing."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def rdb_storage(storage: str) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # The heartbeat marks trials of a killed worker failed (after 2 minutes) instead of running forever.
        return optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120)


def connect(storage: str) -> optuna.storages.RDBStorage:
    """The storage, its tables created when it is new. Workers started together on a new database race to create
    them, and the losers' CREATE fails (PostgreSQL: duplicate key, or already exists): they try again and find them."""
    for delay in (0.1, 0.5, 2.0):
        with contextlib.suppress(sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            return rdb_storage(storage)
        time.sleep(delay)
    return rdb_storage(storage)


def open_study(storage: str, name: str, metric: str, direction: str, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The study `name`, created or, when it exists, loaded to be continued (with the same metric and direction)."""
    try:
        study = optuna.create_study(
            storage=connect(storage),
            study_name=name,
            direction=StudyDirection[direction.upper()],
            pruner=pruner,
            load_if_exists=True,
        )
    except (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise UserError(f"cannot open study {name!r} in {masked(storage)}: {str(err).splitlines()[0]}") from err
    goal = (study.user_attrs.get("metric", metric), study.direction.name.lower())
    if goal != (metric, direction):
        raise UserError(
            f"study {name!r} in {masked(storage)} was started to {goal[1]} {goal[0]}: continue it with --metric "
            f"{goal[0]} --direction {goal[1]}, or start another with --study_name"
        )
    study.set_user_attr("metric", metric)
    return study


def grid_points_left(study: optuna.Study, grid: dict[str, list[Any]]) -> int:
    total = 1
    for values in grid.values():
        total *= len(values)
    keys = list(grid)
    done = {
        tuple(trial.params.get(key) for key in keys)
        for trial in study.get_trials(deepcopy=False)
        if trial.state.is_finished() and all(trial.params.get(key) in grid[key] for key in keys)
    }
    return total - len(done)


def shown_value(trial: FrozenTrial) -> str:
    """The final value (Optuna gives a pruned trial its last reported one)."""
    return "-" if trial.value is None else f"{trial.value:.4f}"


def trials_table(study: optuna.Study, space: SearchSpace, metric: str) -> str:
    """One line per trial (the best TABLE_ROWS when there are more), its state, value, time and values."""
    trials = study.get_trials(deepcopy=False)
    shown = trials
    if len(trials) > TABLE_ROWS:
        complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
        ranked = sorted(complete, key=lambda t: t.value or 0.0, reverse=study.direction == StudyDirection.MAXIMIZE)
        shown = [*ranked, *(trial for trial in trials if trial.state != TrialState.COMPLETE)][:TABLE_ROWS]
    keys = [param.key for param in space.params]
    header = ["trial", metric, "time", "state", *keys]
    rows = []
    for trial in shown:
        seconds = f"{trial.duration.total_seconds():.0f}s" if trial.duration is not None else "-"
        state = trial.user_attrs.get("outcome", trial.state.name.lower())
        labels = space.labels(trial.params)
        rows.append([str(trial.number), shown_value(trial), seconds, state, *(labels.get(k, "-") for k in keys)])
    lines = aligned([header, *rows], numeric=3)
    if len(shown) < len(trials):
        lines.append(f"({len(shown)} of {len(trials)} trials, the best first)")
    return "\n".join(lines)


def aligned(rows: list[list[str]], numeric: int) -> list[str]:
    """Columns padded to their widest cell; the first `numeric` right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i < numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def summary(study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return f"{len(study.trials)} trials ({', '.join(f'{n} {state}' for state, n in counts.items())})"


def run(
    space: str,
    sampler: str = "tpe",
    n_trials: int | None = None,
    timeout: float | None = None,
    max_epochs: int | None = None,
    metric: str = "val/acc",
    direction: str = "maximize",
    pruner: str = "median",
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 0,
    study_name: str | None = None,
    out_dir: str | None = None,
    storage: str | None = None,
    seed: int | None = None,
    fit_args: Sequence[str] = (),
) -> None:
    """Run --n_trials trials of the study, then print its table and write best.yaml.

    Args:
        space: YAML search space, e.g. configs/sweep/cnn.yaml
        sampler: grid, random or tpe (Bayesian)
        n_trials: trials to run now, on top of those the study already has (null: 20, or with --sampler grid the
            rest of the grid; 0: only the table and best.yaml)
        timeout: start no trial after this many seconds
        max_epochs: epochs of every trial (null: the config's)
        metric: logged metric to optimise and to prune on
        direction: maximize or minimize the metric
        pruner: median: stop a trial below the median at its epoch; none
        pruner_startup_trials: complete trials before any is pruned
        pruner_warmup_epochs: epochs before a trial may be pruned
        study_name: null: the search space file's name, e.g. cnn
        out_dir: trial logs, study.db and best.yaml (null: logs/sweep-<study_name>)
        storage: database URL (null: sqlite:///<out_dir>/study.db)
        seed: the sampler's seed: trial N draws from (seed, N), so a rerun draws the same values and workers
            sharing the study never the same
        fit_args: the flags of every trial's fit: the rest of the command line
    """
    for name, value, allowed in [
        ("sampler", sampler, SAMPLERS),
        ("pruner", pruner, PRUNERS),
        ("direction", direction, DIRECTIONS),
    ]:
        if value not in allowed:
            raise UserError(f"unknown {name} {value!r}: use --{name} {' or '.join(allowed)}")
    if seed is not None and not 0 <= seed < 2**32:  # numpy's seeds
        raise UserError(f"--seed {seed} is out of range: use a number from 0 to {2**32 - 1}")
    search_space = SearchSpace.load(space)
    grid = search_space.grid() if sampler == "grid" else None  # a continuous range fails here
    name = study_name or Path(space).stem
    folder = Path(out_dir or f"logs/sweep-{name}")
    storage = storage or f"sqlite:///{folder / 'study.db'}"

    sweep = Sweep(search_space, list(fit_args), metric, folder, max_epochs)
    with quiet_trials():
        sweep.check()
        folder.mkdir(parents=True, exist_ok=True)
        study = open_study(
            storage, name, metric, direction, make_pruner(pruner, pruner_startup_trials, pruner_warmup_epochs)
        )
        study.sampler = make_sampler(sampler, search_space, seed)
        count = DEFAULT_TRIALS if n_trials is None else n_trials
        if grid is not None:
            left = grid_points_left(study, grid)
            count = left if n_trials is None else min(n_trials, left)
        if count > 0:
            study.optimize(sweep.objective, n_trials=count, timeout=timeout, catch=(TrialFailed,))

    print(f"\n{trials_table(study, search_space, metric)}\n")
    if sweep.finished and len(sweep.failures) == sweep.finished:
        raise UserError(f"all {sweep.finished} trials failed; the first: {sweep.failures[0]}")
    if not any(trial.state == TrialState.COMPLETE for trial in study.get_trials(deepcopy=False)):
        raise UserError(f"no trial of study {name!r} has completed yet ({summary(study)})")
    best, path = sweep.write_best(study), folder / "best.yaml"
    print(f"Best: trial {best.number}, {metric} = {best.value:.4f}")
    print(f"Its config: {path}  (python -m proj.fit --config {path})")
    complete = grid is not None and not grid_points_left(study, grid)
    more = "the grid is complete" if complete else "the same command again runs more"
    print(f"Study {name!r} in {masked(storage)}: {summary(study)}; {more}.")


def argument_parser() -> ArgumentParser:
    """The flags of `run`, all but fit_args: defaults and help come from its signature and docstring."""
    return function_parser(
        run,
        "python -m proj.sweep",
        __doc__.split("\n\n", 2)[2] if __doc__ else None,
        skip={"fit_args"},
        usage="%(prog)s --space FILE [options] [--config FILE] [fit flags]",
        epilog="Any other flag (--config FILE, --data.data_dir DIR, --trainer.*...) goes to every trial's fit.",
    )


def main(args: Sequence[str] | None = None) -> None:
    """Run a sweep; a problem the user can fix exits with its message and status 2, not a traceback."""
    try:
        with exit_on_user_error():
            own, fit_args = split_flags(sys.argv[1:] if args is None else args, inspect.signature(run).parameters)
            run(**parse(argument_parser(), own).as_dict(), fit_args=fit_args)
    except KeyboardInterrupt as err:
        print("\nInterrupted: the same command again continues the study.", file=sys.stderr)
        sys.exit(err.status if isinstance(err, Interrupted) else 130)


if __name__ == "__main__":
    main()
