"""The command line: LightningCLI with this project's defaults, and clean errors instead of tracebacks.

Every constructor argument of the model, the data module and the Trainer is a flag and a YAML key; this
file only sets defaults (model, logger, callbacks) and adds `--test_after_fit`.
"""

from __future__ import annotations

import sys

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from proj.data import MNISTDataModule
from proj.errors import UserError
from proj.models import ImageClassifier

DEFAULTS = {
    "model": {"class_path": "proj.models.CNNClassifier"},
    "trainer.max_epochs": 5,
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "mnist", "default_hp_metric": False},
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
# ambiguous one: "ReduceLROnPlateau" names torch's class, Lightning's and ours. Command-line values that
# are such a name are expanded to our class here (config files name a full class path).
SHORT_NAMES = {"ReduceLROnPlateau": "proj.schedulers.ReduceLROnPlateau"}


def expand_short_names(argv: list[str]) -> list[str]:
    """`--model.scheduler ReduceLROnPlateau` (or `=ReduceLROnPlateau`) -> the full class path."""
    expanded = []
    for arg in argv:
        flag, equals, value = arg.rpartition("=")
        expanded.append(flag + equals + SHORT_NAMES.get(value, value))
    return expanded


class ProjCLI(LightningCLI):
    """`python -m proj {fit,validate,test,predict}`: any ImageClassifier subclass on the MNIST data module."""

    def __init__(self, args: ArgsType = None, **kwargs: object) -> None:
        super().__init__(
            ImageClassifier,
            MNISTDataModule,
            subclass_mode_model=True,
            seed_everything_default=42,
            auto_configure_optimizers=False,  # the model's own --model.optimizer/--model.scheduler do it
            args=args,
            **kwargs,  # type: ignore[arg-type]
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, evaluate the best checkpoint on the test set (on by default in proj.fit).",
        )
        parser.set_defaults(DEFAULTS)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(expand_short_names(sys.argv[1:] if args is None else list(args)))

    def after_fit(self) -> None:
        if not self.config[self.subcommand].test_after_fit:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        accuracy = results[0]["test/acc"]
        source = f"best checkpoint {best}" if best else "final weights (no checkpoint was saved)"
        print(f"Test accuracy: {accuracy:.2%} ({source})")


def main(args: ArgsType = None) -> None:
    """Run the CLI; a problem the user can fix exits with its message and status 2, not a traceback."""
    try:
        ProjCLI(args=args)
    except (UserError, MisconfigurationException) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
