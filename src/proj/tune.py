"""`python -m proj.tune {lr,batch_size} [fit flags]`: Lightning's learning-rate and batch-size finders on a config.

    python -m proj.tune lr --config configs/cnn.yaml
    python -m proj.tune batch_size --config configs/cnn.yaml --mode binsearch

The model, data module and Trainer are the ones `python -m proj fit` builds from the same flags. The learning-rate
finder trains --num_training steps while the rate grows from --min_lr to --max_lr, and suggests the rate at which
the loss falls fastest. The batch-size finder doubles the batch size (then, with binsearch, bisects) until a
step runs out of memory, a few steps per size; on a CPU none does, so it also reports each size's images per
second. Neither keeps the weights or writes logs or checkpoints: each prints its value as the flag to pass to
proj.fit, and saves a plot in --out_dir.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.tuner import Tuner
from matplotlib.figure import Figure

import proj.cli
from proj.cli import ProjCLI
from proj.commands import function_parser, parse, split_flags
from proj.errors import UserError, exit_on_user_error

# What a finder's fit does differently from proj.fit's. No logger: the tuner's teardown would flush it, leaving a run
# folder with nothing in it. The finder's own step count ends it, not the config's epochs; finite all the same, so
# that a schedule sized by the run (configs/cnn.yaml's OneCycleLR) can be built before the finder sets its steps.
FINDER_FLAGS = ("--trainer.logger=false", "--trainer.max_epochs=1000000")


def build(fit_args: Sequence[str]) -> ProjCLI:
    """Model, data and Trainer as `proj fit` builds them from `fit_args`, writing no run folder or config.yaml."""
    return proj.cli.build([*fit_args, *FINDER_FLAGS], record=False)


def check_ran(result: object) -> None:
    if result is None:  # Lightning skips both finders under fast_dev_run
        raise UserError("the finders do not run with --trainer.fast_dev_run: drop that flag")


def optimizer_lr_flag(cli: ProjCLI) -> str:
    """The flag that sets the rate; a OneCycleLR-like scheduler takes its peak from its own `max_lr`."""
    scheduler = cli.config.model.init_args.get("scheduler")
    init_args = scheduler.get("init_args") if scheduler is not None and hasattr(scheduler, "get") else None
    if init_args is not None and "max_lr" in init_args:
        return "--model.scheduler.init_args.max_lr"
    return "--model.optimizer.init_args.lr"


def steepest_descent(
    lrs: list[float], losses: list[float], log_spaced: bool, skip_begin: int = 10, skip_end: int = 1
) -> int | None:
    """Index of the steepest fall of the loss: against log10(lr) when the rates are log-spaced, else against lr.

    Lightning's own `suggestion()` (2.6) differentiates against lr in both modes; on the default log-spaced
    range that favours the smallest rates (it suggests ~4e-7 for configs/cnn.yaml on MNIST; Lightning issue
    #21141). The skips are Lightning's: the first steps' smoothed loss is still warming up.
    """
    indices = [i for i in range(skip_begin, len(losses) - skip_end) if math.isfinite(losses[i])]
    if len(indices) < 2:
        return None
    rates = torch.tensor([lrs[i] for i in indices], dtype=torch.float64)
    spacing = rates.log10() if log_spaced else rates
    gradient = torch.gradient(torch.tensor([losses[i] for i in indices], dtype=torch.float64), spacing=[spacing])[0]
    return indices[int(gradient.argmin())]


def find_lr(
    cli: ProjCLI,
    out_dir: str | Path = "logs/tune",
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: float | None = 4.0,
) -> float | None:
    """The learning-rate range test; its suggestion (None when too few steps ran) is printed and plotted.

    Args:
        cli: the run to test, from `build`
        out_dir: where the plot goes
        min_lr: first rate of the range test
        max_lr: last rate of the range test
        num_training: steps of the range test
        mode: how the rate grows: exponential or linear
        early_stop_threshold: stop when the loss exceeds this times its lowest (null: never)
    """
    # update_attr=False: these models take an optimizer class and its arguments, not an `lr` attribute. The range
    # test swaps in its own schedule on the configured optimizer, whatever that optimizer is.
    finder = Tuner(cli.trainer).lr_find(
        cli.model,
        datamodule=cli.datamodule,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        mode=mode,
        early_stop_threshold=early_stop_threshold,
        update_attr=False,
    )
    check_ran(finder)
    assert finder is not None
    lrs, losses = finder.results["lr"], finder.results["loss"]
    index = steepest_descent(lrs, losses, log_spaced=mode == "exponential")
    suggestion = None if index is None else float(lrs[index])
    figure = finder.plot(suggest=False)
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    if index is not None:
        ax.plot(lrs[index], losses[index], markersize=10, marker="o", color="red")
    finite = [loss for loss in losses if math.isfinite(loss)]
    top = 1.5 * max(finite[: len(finite) // 2], default=math.inf)
    if finite and max(finite) > top:  # a diverged end would squash the rest of the curve flat
        bottom = min(finite)
        ax.set_ylim(bottom - 0.05 * (top - bottom), top)
    steps = len(lrs)
    ax.set_title(
        f"Learning-rate range test, {steps} steps: "
        + (f"suggested {suggestion:.3g}" if suggestion is not None else "no suggestion")
    )
    path = Path(out_dir) / "lr_find.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)  # Lightning drew it with pyplot, which keeps every figure until closed
    if steps < num_training:
        print(f"The range test ran {steps} of {num_training} steps: it stops early when the loss diverges.")
    if suggestion is None:
        print("No suggestion: too few steps with a finite loss; raise --num_training or --max_lr.")
    else:
        flag = optimizer_lr_flag(cli)
        print(f"Suggested learning rate: {suggestion:.3g} (set {flag} {suggestion:.3g})")
    print(f"Plot: {path}")
    return suggestion


class StepTimer:
    """Images per second of each batch size the batch-size finder runs.

    The finder runs its steps without the Trainer's callbacks, so this wraps the model's own batch hooks; the
    size is the loader's (Lightning's first trial runs at whatever size the loader already had).
    """

    def __init__(self, model: LightningModule, trainer: Trainer) -> None:
        self.model, self.trainer = model, trainer
        self.best: dict[int, float] = {}  # batch size -> images per second of its fastest step
        self.start = 0.0

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync()
        seconds = time.perf_counter() - self.start
        size = getattr(self.trainer.train_dataloader, "batch_size", None) or len(batch[0])
        self.best[size] = max(self.best.get(size, 0.0), len(batch[0]) / seconds)

    # Lightning's finder empties the Trainer's callbacks for its trials (tuner/batch_size_scaling.py), so no
    # callback can time them: these methods shadow the model's hooks of the same names while the finder runs.
    HOOKS = ("on_train_batch_start", "on_train_batch_end")

    def __enter__(self) -> StepTimer:
        for hook in self.HOOKS:
            setattr(self.model, hook, getattr(self, hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self.HOOKS:
            delattr(self.model, hook)  # back to the class's hooks


def find_batch_size(
    cli: ProjCLI,
    out_dir: str | Path = "logs/tune",
    mode: str = "power",
    steps_per_trial: int = 3,
    init_val: int = 2,
    max_trials: int = 25,
    max_val: int = 8192,
    margin: float = 0.05,
) -> int:
    """The largest batch size that ran, set on the data module; the sizes tried are plotted with their speed.

    Args:
        cli: the run to size, from `build`
        out_dir: where the plot goes
        mode: power: double until out of memory; binsearch: then bisect
        steps_per_trial: training steps per batch size
        init_val: first batch size
        max_trials: most batch sizes to try
        max_val: largest batch size to try
        margin: binsearch: take this fraction off the result
    """
    # Lightning runs its first trial with the loader it already has: start that loader at init_val.
    set_batch_size(cli.datamodule, init_val)
    with StepTimer(cli.model, cli.trainer) as timer:
        found = Tuner(cli.trainer).scale_batch_size(
            cli.model,
            datamodule=cli.datamodule,
            mode=mode,
            steps_per_trial=steps_per_trial,
            init_val=init_val,
            max_trials=max_trials,
            max_val=max_val,
            margin=margin,
        )
    check_ran(found)
    assert found is not None
    ran = sorted(timer.best)
    if not ran:
        raise UserError("no training step ran: check --trainer.limit_train_batches and the data")
    if found > max(ran):
        # Lightning stops at --max_val without running it (or past the last size that fit): report what ran.
        print(f"Lightning's finder returned {found}, which it never ran; keeping {max(ran)}, the largest that did.")
        found = max(ran)
    set_batch_size(cli.datamodule, found)
    speeds = ", ".join(f"{size} ({timer.best[size]:,.0f}/s)" for size in ran)
    print(f"Batch sizes that ran (images per second of the fastest step): {speeds}")
    print(f"Largest batch size: {found} (set --data.batch_size {found})")
    if isinstance(cli.trainer.accelerator, CPUAccelerator):
        print(
            "On the CPU nothing runs out of memory: the search only stops at --max_val or --max_trials. "
            "Choose by images per second instead."
        )
    path = plot_batch_sizes(timer.best, found, Path(out_dir))
    print(f"Plot: {path}")
    return found


def set_batch_size(datamodule: LightningDataModule, size: int) -> None:
    """What Lightning's finder sets: the data module's attribute, and its hparams for the logs."""
    if not hasattr(datamodule, "batch_size"):
        raise UserError(f"{type(datamodule).__name__} has no `batch_size` attribute for the finder to change")
    datamodule.batch_size = size
    if "batch_size" in datamodule.hparams:
        datamodule.hparams["batch_size"] = size


def plot_batch_sizes(speeds: dict[int, float], found: int, out_dir: Path) -> Path:
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    sizes = sorted(speeds)
    bars = ax.bar([str(size) for size in sizes], [speeds[size] for size in sizes], color="tab:blue")
    if found in speeds:
        bars[sizes.index(found)].set_color("tab:red")
    ax.set_xlabel("batch size (red: the one reported)")
    ax.set_ylabel("images per second (fastest step)")
    ax.set_title("Batch sizes the finder ran")
    figure.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "batch_size.png"
    figure.savefig(path, dpi=100)
    return path


FINDERS: dict[str, Callable[..., object]] = {"lr": find_lr, "batch_size": find_batch_size}
MODES = {"lr": ("exponential", "linear"), "batch_size": ("power", "binsearch")}


def argument_parser() -> ArgumentParser:
    """`lr` and `batch_size`, whose flags are their functions' parameters (all but the run): defaults and help
    come from the signatures and docstrings."""
    parser = ArgumentParser(
        prog="python -m proj.tune",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        epilog="Any other flag (--config FILE, --data.*, --model.*, --trainer.*) builds the fit as proj.fit would.",
        exit_on_error=False,
    )
    subcommands = parser.add_subcommands(dest="finder")
    for name, finder in FINDERS.items():
        subparser = function_parser(finder, None, None, skip={"cli"})
        subcommands.add_subcommand(name, subparser, help=(inspect.getdoc(finder) or "").partition("\n")[0])
    return parser


def run(argv: Sequence[str]) -> None:
    """`FINDER [its flags] [fit flags]`: the finder's flags (those of its function) parsed, the rest build the fit."""
    finder = FINDERS.get(argv[0]) if argv else None
    own, fit_args = split_flags(argv[1:], inspect.signature(finder).parameters if finder else ())
    config = parse(argument_parser(), [*argv[:1], *own])
    options = config[config.finder].as_dict()
    if options["mode"] not in (modes := MODES[config.finder]):
        raise UserError(f"unknown --mode {options['mode']!r} for the {config.finder} finder: use {' or '.join(modes)}")
    FINDERS[config.finder](build(fit_args), **options)


def main(args: Sequence[str] | None = None) -> None:
    """Run a finder; a problem the user can fix exits with its message and status 2, not a traceback."""
    with exit_on_user_error():
        run(sys.argv[1:] if args is None else args)


if __name__ == "__main__":
    main()
