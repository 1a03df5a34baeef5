"""The command line: LightningCLI with this project's defaults, and clean errors instead of tracebacks.

Every constructor argument of the model, the data module and the Trainer is a flag and a YAML key; this
file sets defaults (model, logger, callbacks), adds `--test_after_fit`, makes runs resumable
(`--ckpt_path last`, atomic checkpoints, RNG state, SIGTERM) and checks inputs before anything is written.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from proj.callbacks.checkpoint import ResumableCheckpoint
from proj.callbacks.event_writes import EventWriteFailures
from proj.callbacks.preemption import Preemption
from proj.callbacks.rng_state import RNGState
from proj.callbacks.run_record import RunRecord
from proj.checkpoints import (
    AtomicCheckpointIO,
    check_fits,
    check_same_data,
    check_trusted,
    load_weights,
    read_checkpoint,
)
from proj.continuation import check_continuation
from proj.data import ImageDataModule
from proj.errors import UserError, exit_on_user_error
from proj.models import ImageClassifier
from proj.models.base import restoring
from proj.runs import (
    RunFolder,
    checkpoint_file,
    continued_run,
    find_last_checkpoint,
    name_runs_after_data,
    with_run_config,
)
from proj.trackers import check_loggers
from proj.trainer import RunTrainer

DEFAULTS = {
    "model": {"class_path": "proj.models.CNNClassifier"},
    "data": {"class_path": "proj.data.MNISTDataModule"},
    "trainer.max_epochs": 5,
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": None, "default_hp_metric": False},  # name: name_runs_after_data
    },
    "trainer.callbacks": [
        {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
        {"class_path": "lightning.pytorch.callbacks.RichModelSummary", "init_args": {"max_depth": 2}},
        {"class_path": "proj.callbacks.PredictionGrid"},
        {"class_path": "proj.callbacks.ConfusionMatrix"},
        {"class_path": "proj.callbacks.HParamsMetrics"},
    ],
    # Always on (they have their own flags): the best checkpoint by val/acc plus last.ckpt, and the LR.
    "checkpoint.monitor": "val/acc",
    "checkpoint.mode": "max",
    "checkpoint.filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}",
    "checkpoint.auto_insert_metric_name": False,  # it would put the "/" of val/acc into the file name
    "checkpoint.save_last": True,
    "lr_monitor.logging_interval": "epoch",
}


# jsonargparse resolves a short class name among all subclasses of the expected type and refuses an
# ambiguous one: "ReduceLROnPlateau" names torch's class and Lightning's (torch's plus the metric it watches,
# the one a model needs). Command-line values that are such a name are expanded here (config files name a
# full class path).
SHORT_NAMES = {"ReduceLROnPlateau": "lightning.pytorch.cli.ReduceLROnPlateau"}


# Flags that take two numbers, written as two words: `--data.image_size 64 48`.
PAIRS = ("--data.image_size", "--data.init_args.image_size")


def expand_short_names(argv: list[str]) -> list[str]:
    """`--model.scheduler ReduceLROnPlateau` (or `=ReduceLROnPlateau`) -> the full class path, and
    `--data.image_size H W` -> `--data.image_size=[H, W]` (jsonargparse reads a tuple as one word)."""
    expanded, index = [], 0
    while index < len(argv):
        arg, pair = argv[index], argv[index + 1 : index + 3]
        if arg in PAIRS and len(pair) == 2 and all(word.isdigit() for word in pair):
            expanded.append(f"{arg}=[{pair[0]}, {pair[1]}]")
            index += 3
            continue
        flag, equals, value = arg.rpartition("=")
        expanded.append(flag + equals + SHORT_NAMES.get(value, value))
        index += 1
    return expanded


class ProjCLI(LightningCLI):
    """`python -m proj {fit,validate,test,predict}`: any ImageClassifier subclass on any ImageDataModule subclass.

    The model's input shape and number of classes come from the data module (linked when both are built).
    """

    def __init__(
        self, args: ArgsType = None, extra_callbacks: Sequence[Callback] = (), record: bool = True, **kwargs: object
    ) -> None:
        self.run_folder: RunFolder | None = None  # a new run's, claimed before anything is built
        try:
            self._run_cli(args, extra_callbacks, record, **kwargs)
        finally:
            if self.run_folder is not None:
                self.run_folder.release()

    def _run_cli(self, args: ArgsType, extra_callbacks: Sequence[Callback], record: bool, **kwargs: object) -> None:
        super().__init__(
            ImageClassifier,
            ImageDataModule,
            trainer_class=RunTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            auto_configure_optimizers=False,  # the model's own --model.optimizer/--model.scheduler do it
            save_config_callback=RunRecord if record else None,
            # Parse errors reach main() as exceptions, to be shortened, instead of printing the whole usage.
            parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in self.subcommands()}},
            # Always on, whatever --trainer.callbacks says: a resumed run must draw the same random numbers.
            trainer_defaults={"callbacks": [RNGState(), Preemption(), EventWriteFailures(), *extra_callbacks]},
            args=args,
            **kwargs,  # type: ignore[arg-type]
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # As a list, the way a parsed config holds it: a tuple would be dumped as !!python/tuple in the logger's
        # hparams.yaml, which yaml.safe_load (TensorBoard's readers, a user's script) cannot read.
        parser.link_arguments(
            "data.input_shape", "model.init_args.input_shape", compute_fn=list, apply_on="instantiate"
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_argument(
            "--weights_from",
            type=str | None,
            default=None,
            help="Start a new fit from this checkpoint's model weights only (fresh optimizer, schedule and epoch "
            "count, a new run folder): fine-tuning. --ckpt_path instead continues the checkpoint's run.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, evaluate the best checkpoint on the test set (on by default in proj.fit).",
        )
        parser.set_defaults(DEFAULTS)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        if isinstance(args, (dict, Namespace)):
            self.argv: list[str] = []
            self.config = parser.parse_object(args)
        else:
            self.argv = with_run_config(expand_short_names(sys.argv[1:] if args is None else list(args)))
            self.config = parser.parse_args(self.argv)
        subcommand = self.config.get("subcommand")
        name_runs_after_data(self.config[subcommand] if subcommand else self.config)
        self._read_checkpoint()

    def _read_checkpoint(self) -> None:
        """Resolve `--ckpt_path last` and check the file, before Lightning takes the model's arguments from it
        (right after parsing).

        Lightning replaces the model's class and arguments with the checkpoint's: handy when no model was
        given, silently wrong when one was (`--config configs/cnn.yaml` with an MLP's checkpoint). Then
        the run stops and says so.
        """
        self.checkpoint: dict[str, Any] | None = None  # read once here, checked against the model before the run
        if self.config.get("subcommand"):
            config = self.config[self.config.subcommand]
            if config.get("ckpt_path") == "last":
                config.ckpt_path = str(find_last_checkpoint(config))
            if (path := checkpoint_file(config.get("ckpt_path"))) is not None:
                self.checkpoint = read_checkpoint(path)
                written_by = self.checkpoint.get("hyper_parameters", {}).get("_class_path")
                asked_for, model_given = config.model.class_path, self._model_given(config)
                if isinstance(written_by, str):  # before Lightning imports it (below) to build the model
                    check_trusted(written_by, path, [asked_for] if model_given else [])
                if written_by and written_by != asked_for and model_given:
                    raise UserError(
                        f"checkpoint {str(path)!r} was written by {written_by}, but this run builds {asked_for}: "
                        "pass that run's --config <run>/config.yaml (or leave the model out to take the checkpoint's)."
                    )

    def _model_given(self, config: Namespace) -> bool:
        """Whether the command line or a config file chose the model (rather than the default)."""
        if any(arg.split("=")[0] == "--model" or arg.startswith("--model.") for arg in self.argv):
            return True
        for config_file in config.get("config") or []:
            content = yaml.safe_load(Path(str(config_file)).read_text())
            if isinstance(content, dict) and "model" in content:
                return True
        return False

    def before_instantiate_classes(self) -> None:
        config = self.config if self.subcommand is None else self.config[self.subcommand]
        self._drop_disabled_callbacks(config.trainer)
        continues = None
        if self.subcommand == "fit":
            continues = self._continue_run(config)
        elif config.get("weights_from") is not None:
            raise UserError(
                f"--weights_from starts a fit from a checkpoint's weights; {self.subcommand} takes them from "
                "--ckpt_path: pass one of them."
            )
        self._normalize_as_weights(config)
        check_loggers(config)
        self.run_folder = RunFolder(config, continues)

    def _weights_from_checkpoint(self, config: Namespace) -> bool:
        """Whether the model's weights come from a checkpoint (--ckpt_path, --weights_from) rather than its own
        initial ones (pretrained, say): the model then skips loading those."""
        return self.checkpoint is not None or config.get("weights_from") is not None

    def _normalize_as_weights(self, config: Namespace) -> None:
        """`--data.normalization` left out: the statistics the model's initial weights were trained with, when they
        say (pretrained weights: ImageNet's), said in one line. The model refuses other data before the run."""
        data_args = config.data.get("init_args")
        if data_args is None or "normalization" not in data_args or data_args.normalization is not None:
            return
        module_name, _, name = str(config.model.class_path).rpartition(".")
        model_class = getattr(importlib.import_module(module_name), name, None)
        if not (isinstance(model_class, type) and issubclass(model_class, ImageClassifier)):
            return
        model_args = config.model.get("init_args")
        with restoring(self._weights_from_checkpoint(config)):
            expected = model_class.weights_normalization(model_args.as_dict() if model_args else {})
        if expected is not None:
            data_args.normalization = {"mean": list(expected.mean), "std": list(expected.std)}
            statistics = f"{{mean: {list(expected.mean)}, std: {list(expected.std)}}}"
            rank_zero_info(
                f"Normalising the data as {expected.source} expect: --data.normalization {statistics} (averaged for "
                "grayscale images), not the data's own statistics."
            )

    def instantiate_classes(self) -> None:
        config = self.config if self.subcommand is None else self.config[self.subcommand]
        with restoring(self._weights_from_checkpoint(config)):  # the checkpoint's weights replace the initial ones
            super().instantiate_classes()

    @staticmethod
    def _drop_disabled_callbacks(trainer: Namespace) -> None:
        """`--trainer.enable_progress_bar false` (or `enable_model_summary`) also removes the default Rich one,
        which Lightning would otherwise refuse as a contradiction."""
        disabled = [
            name
            for flag, name in (("enable_progress_bar", "ProgressBar"), ("enable_model_summary", "ModelSummary"))
            if trainer.get(flag) is False
        ]
        callbacks = trainer.get("callbacks") or []
        trainer.callbacks = [
            callback
            for callback in callbacks
            if not any(str(getattr(callback, "class_path", "")).endswith(name) for name in disabled)
        ]

    def _continue_run(self, config: Namespace) -> Path | None:
        """The run folder this fit continues in (recorded in run.yaml), if any, or which weights it starts from."""
        if config.get("weights_from") is not None:
            if config.get("ckpt_path") is not None:
                raise UserError(
                    "--weights_from starts a new run from a checkpoint's weights and --ckpt_path continues the "
                    "checkpoint's own run: pass one of them."
                )
            self.save_config_kwargs["weights_from"] = str(config.weights_from)
        if (run := continued_run(config)) is not None:
            checkpoint = self.checkpoint or {}
            self.save_config_kwargs["continues"] = {
                "path": str(config.ckpt_path),
                "epoch": checkpoint.get("epoch"),
                "global_step": checkpoint.get("global_step"),
            }
        return run

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        assert isinstance(trainer, RunTrainer)
        if self.run_folder is not None and self.run_folder.path is not None:
            trainer.run_dir = str(self.run_folder.path)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default; keep one a user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _check_before_run(self) -> None:
        """Inputs that would fail only once the run has started (and written its folder) fail now."""
        if self.run_folder is not None:  # the loggers have their run; a config.yaml naming it would send a rerun there
            self.run_folder.unname()
        assert isinstance(self.datamodule, ImageDataModule)
        self.datamodule.check()
        self.datamodule.chosen_statistics()  # a --data.normalization for another channel count fails here
        if self.model.input_normalization is not None:
            self.datamodule.check_normalization(self.model.input_normalization)
        if self.checkpoint is not None:
            path = self.config[self.subcommand].ckpt_path
            check_same_data(self.checkpoint, path, self.datamodule)
            check_fits(self.checkpoint, path, self.model)
        optimization = self.model.configure_optimizers() if self.subcommand == "fit" else None
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
        self.model.check_finetuning(callbacks, optimization)
        if self.subcommand == "fit":
            if self.checkpoint is not None:
                check_continuation(self.checkpoint, self.config.fit.ckpt_path, self.trainer, optimization)
            if (weights := self.config.fit.get("weights_from")) is not None:
                load_weights(self.model, weights)

    before_fit = before_validate = before_test = before_predict = _check_before_run

    def after_fit(self) -> None:
        if not self.config[self.subcommand].test_after_fit:
            return
        assert isinstance(self.datamodule, ImageDataModule)
        if not self.datamodule.has_test_split():
            if self.trainer.is_global_zero:
                print(f"No test set: {type(self.datamodule).__name__} has no test split, so the test is skipped.")
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        accuracy = results[0]["test/acc"]
        source = f"best checkpoint {best}" if best else "final weights (no checkpoint was saved)"
        if self.trainer.is_global_zero:
            print(f"Test accuracy: {accuracy:.2%} ({source})")


def build(flags: Sequence[str] = (), *, callbacks: Sequence[Callback] = (), record: bool = True) -> ProjCLI:
    """A run configured from `proj.fit`'s flags (and --config files), built but not started: what proj's tools
    (tune, sweep, bench) start from. Whatever they need differently is a flag (`--trainer.logger false`,
    `--trainer.enable_progress_bar false`...); `callbacks` join the Trainer's; `record=False` writes no
    config.yaml/run.yaml, for a tool's run that is not one of the user's. `cli.model`, `cli.datamodule` and
    `cli.trainer` are then ready for `cli.trainer.fit(cli.model, datamodule=cli.datamodule)`."""
    return ProjCLI(args=list(flags), run=False, extra_callbacks=callbacks, record=record)


def main(args: ArgsType = None) -> None:
    """Run the CLI; a problem the user can fix exits with its message and status 2, not a traceback.

    A fit stopped by SIGTERM or Ctrl-C exits with 143 or 130 (128 + the signal, what schedulers and shells
    expect of a terminated job) after the Preemption callback has saved last.ckpt and said how to resume.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["predict"] and any(arg.split("=")[0] == "--input" for arg in argv):
        from proj.predict import main as predict_images  # image files, rather than the data module's test set

        predict_images(argv[1:])
        return
    with exit_on_user_error():
        try:
            ProjCLI(args=args)
        except SIGTERMException as stopped:
            sys.exit(stopped.code if isinstance(stopped.code, int) else 143)
        except KeyboardInterrupt:  # before or after the fit, where Lightning does not catch it
            print("\nInterrupted (Ctrl-C).", file=sys.stderr)
            sys.exit(130)
        except SystemExit as stopped:  # Lightning exits with 1 on a KeyboardInterrupt (here: a second Ctrl-C)
            sys.exit(130 if isinstance(stopped.__context__, KeyboardInterrupt) else stopped.code)
