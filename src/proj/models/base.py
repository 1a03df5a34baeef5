"""What every classifier shares: the steps, the metrics and the optimizer/scheduler wiring."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BackboneFinetuning, BaseFinetuning
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from proj.data.base import ImageDataModule, WeightsNormalization
from proj.errors import UserError
from proj.schedulers import SchedulerCallable, spans_the_run

STAGES = ("train", "val", "test")
DATA_KEY = "data"  # the checkpoint entry describing the data a model was trained on (ImageDataModule.description)
RUN_LENGTH_KEY = "run_length"  # the checkpoint entry: the length (scheduler steps, epochs) of the run that wrote it


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite: training stops before the bad step updates any weights."""


def per_class_table(names: list[str], accuracy: Tensor, counts: Tensor) -> str:
    """One line per class: its name, the share of its images classified right, and how many there were."""
    width = max(5, *map(len, names))
    lines = [f"{'class':<{width}}  accuracy  images"]
    for name, share, count in zip(names, accuracy.tolist(), counts.tolist(), strict=True):
        score = f"{share:8.2%}" if count else f"{'-':>8}"  # a class without test images has no accuracy
        lines.append(f"{name:<{width}}  {score}  {int(count):>6}")
    return "\n".join(lines)


class ImageClassifier(LightningModule):
    """Base LightningModule: a subclass only builds `self.net`, mapping (B, *input_shape) images to (B, num_classes)
    logits.

    Args:
        input_shape: (channels, height, width) of the images; the CLI takes it from the data module.
        num_classes: size of the output layer; the CLI takes it from the data module.
        optimizer: builds the optimizer from the parameters, e.g. `--model.optimizer SGD
            --model.optimizer.lr 0.1`.
        scheduler: builds a learning-rate scheduler from the optimizer; none keeps the rate constant. A
            OneCycleLR without `total_steps` spans the whole run.
        scheduler_interval: step the scheduler after every "epoch" or every optimizer "step".
        label_smoothing: share of each training target spread over all classes (0 = one-hot), which
            keeps the model from growing over-confident; evaluation losses stay plain cross-entropy.
        l1: L1 penalty, `l1 * sum(|w|)` over the weight tensors of the Linear and Conv layers (the parameters
            with more than one dimension: biases and the scales of normalisation layers are not penalised),
            added to the training loss; it pulls weights to exactly zero. Logged as `train/l1`; `train/loss`
            stays the cross-entropy, comparable with `val/loss`. 0 (default) adds nothing.
        compile: compile the network with `torch.compile` when the fit starts (Lightning #17283). The first
            batches then wait for the compiler; off by default, as it does not pay for itself on a 2-core CPU
            (README, "Measured").
        freeze_backbone: train only the head: the `backbone`'s parameters stay as they are (Lightning's
            `BaseFinetuning.freeze`) and its BatchNorm layers normalise with their running statistics, unchanged,
            so the head trains on the features it will see in evaluation.
        backbone_lr_scale: the `backbone`'s learning rate as a share of the head's (discriminative rates: a
            pretrained backbone needs smaller steps than a new head): its parameters form a second optimizer
            group at lr x scale, which schedulers scale like the first. 1 (default): one group.
    """

    net: nn.Module
    # The normalisation the initial weights were trained with (pretrained ones): data must be normalised so.
    input_normalization: WeightsNormalization | None = None

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: SchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        label_smoothing: float = 0.0,
        l1: float = 0.0,
        compile: bool = False,
        freeze_backbone: bool = False,
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        input_shape = [int(side) for side in input_shape]  # hparams stay plain: a tuple is !!python/tuple in YAML
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise UserError(f"input_shape must be (channels, height, width), got {list(input_shape)}.")
        if num_classes < 2:
            raise UserError(f"a classifier needs at least 2 classes, got num_classes {num_classes}.")
        if not 0 <= label_smoothing < 1:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}: set --model.label_smoothing.")
        if not l1 >= 0:  # also refuses NaN
            raise UserError(f"l1 must be >= 0, got {l1}: set --model.l1.")
        if not 0 < backbone_lr_scale < math.inf:
            raise UserError(
                f"backbone_lr_scale must be > 0, got {backbone_lr_scale}: set --model.backbone_lr_scale (1 trains the "
                "backbone at the head's rate; --model.freeze_backbone true does not train it)."
            )
        if freeze_backbone and backbone_lr_scale != 1:
            raise UserError(
                f"--model.backbone_lr_scale {backbone_lr_scale:g} sets the rate of a backbone that trains, and "
                "--model.freeze_backbone true keeps it frozen: pass one of them."
            )
        self.save_hyperparameters()
        self.optimizer_callable = optimizer
        self.scheduler_callable = scheduler
        self.example_input_array = torch.zeros(1, *input_shape)  # lets the model summary show layer shapes
        # Metrics accumulate over an epoch and are logged once at its end: cheaper than per-step logging,
        # and exact over the whole epoch (and across processes under DDP).
        # Predictions come from argmax and cross_entropy checks the labels, so torchmetrics' own input checks
        # (~0.1 ms a step) are redundant; a NaN loss shows as a NaN mean rather than being skipped.
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in STAGES)
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in STAGES
        )
        # Macro-F1, the mean over classes of each class's F1: unlike accuracy, a rare class counts as much as a
        # common one. Per-class test accuracy is printed as a table at the end of a test.
        self.val_f1, self.test_f1 = (
            MulticlassF1Score(num_classes, average="macro", validate_args=False) for _ in ("val", "test")
        )
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None, validate_args=False)
        self._test_table: str | None = None
        # The mean L1 penalty of the epoch's steps; none (nor any per-step cost) without one.
        self.train_l1 = MeanMetric(nan_strategy="disable") if l1 > 0 else None
        # The data this model was trained on (class names, normalisation...), from the data module during a run
        # and from the checkpoint after loading one; None for a model that has seen neither.
        self.data_description: dict[str, Any] | None = None
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so that a resumed run keeps the best so far

    @property
    def logged_metrics(self) -> tuple[str, ...]:
        """Keys this module logs during fit: what ReduceLROnPlateau (or a checkpoint) may monitor."""
        l1 = ("train/l1",) if self.train_l1 is not None else ()
        return ("train/loss", "train/acc", *l1, "val/loss", "val/acc", "val/acc_best", "val/f1_macro")

    @property
    def attached_trainer(self) -> Trainer | None:
        """The Trainer running this model, or None for a model built or loaded outside a run (whose `trainer`
        property raises)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    @property
    def backbone(self) -> nn.Module | None:
        """The feature part of `net`: every parameter but the classifier head's, as modules of `net` itself (a
        slice, registered nowhere else: state_dict keys stay `net.…`); None for a network without one. What
        `freeze_backbone`, `backbone_lr_scale` and Lightning's `BackboneFinetuning` (which reads an attribute of
        this name) act on. A subclass with a backbone overrides it."""
        return None

    def required_backbone(self, setting: str) -> nn.Module:
        """`backbone`, or a UserError saying that `setting` needs one."""
        if (backbone := self.backbone) is None:
            raise UserError(
                f"{setting} acts on a model's backbone, and {type(self).__name__} has none: leave it out, or choose "
                "a model with one (--model CNNClassifier or TimmClassifier)."
            )
        return backbone

    def check_finetuning(self, callbacks: Sequence[Callback], optimization: Any = None) -> None:
        """Refuse, before a run writes anything, fine-tuning this model cannot do: a setting for a backbone it
        lacks, or Lightning's BackboneFinetuning (which fails only as the fit starts) with a setting it
        contradicts or a scheduler it breaks. `optimization`: what `configure_optimizers` returned, for a fit."""
        freeze, scale = self.hparams["freeze_backbone"], self.hparams["backbone_lr_scale"]
        if freeze:
            self.required_backbone("--model.freeze_backbone true")
        if scale != 1:
            self.required_backbone(f"--model.backbone_lr_scale {scale:g}")
        for callback in callbacks:
            if not isinstance(callback, BackboneFinetuning):
                continue
            self.required_backbone("the BackboneFinetuning callback (configs/finetune.yaml)")
            epoch = callback.unfreeze_backbone_at_epoch
            if freeze:
                raise UserError(
                    f"the BackboneFinetuning callback unfreezes the backbone at epoch {epoch}, and "
                    "--model.freeze_backbone true keeps it frozen: pass one of them."
                )
            if scale != 1:
                raise UserError(
                    "the BackboneFinetuning callback sets the backbone's rate itself (backbone_initial_ratio_lr), "
                    f"and --model.backbone_lr_scale {scale:g} sets another: pass one of them."
                )
            scheduler = optimization["lr_scheduler"]["scheduler"] if isinstance(optimization, dict) else None
            if isinstance(scheduler, (OneCycleLR, CyclicLR)):
                raise UserError(
                    f"the BackboneFinetuning callback adds the backbone to the optimizer at epoch {epoch}, and "
                    f"{type(scheduler).__name__} cannot schedule a parameter group added after it started (it "
                    "fails there): choose another --model.scheduler (e.g. --config configs/scheduler/step.yaml), "
                    "or use --model.backbone_lr_scale instead of the callback."
                )

    def data_fact(self, key: str) -> Any:
        """What the data says of itself under `key` ("class_names", "mean", "std"...): the running Trainer's data
        module first, else the description the model was trained with (kept in its checkpoint); None if neither
        says."""
        value = getattr(getattr(self.attached_trainer, "datamodule", None), key, None)
        if value is None and self.data_description:
            value = self.data_description.get(key)
        return value

    @property
    def hparams_initial(self) -> AttributeDict:
        """What Lightning gives the loggers (HPARAMS, MLflow params, W&B config): the hyperparameters without
        LightningCLI's `_instantiator`, how to rebuild the model rather than a setting (the checkpoint keeps it)."""
        hparams = super().hparams_initial  # a copy
        hparams.pop("_instantiator", None)
        return hparams

    def class_names(self) -> list[str]:
        """The names of the classes, from the data (see `data_fact`); "0".."N-1" when the data has none."""
        num_classes = self.hparams["num_classes"]
        names = self.data_fact("class_names")
        if names is None or len(names) != num_classes:
            return [str(index) for index in range(num_classes)]
        return [str(name) for name in names]

    @classmethod
    def weights_normalization(cls, hparams: Mapping[str, Any]) -> WeightsNormalization | None:
        """The normalisation that the initial weights `hparams` choose were trained with (pretrained weights: their
        training data's), or None: weights trained from scratch take any. The CLI sets the data's from it before
        building either, so the model does not have to be built (nor its weights loaded) to know."""
        return None

    def setup(self, stage: str) -> None:
        # The data module is set up by now (a folder has measured its statistics): a model built by hand, outside
        # the CLI (which checks before the run), is refused data normalised otherwise than its weights expect.
        datamodule = getattr(self.attached_trainer, "datamodule", None)
        if self.input_normalization is not None and isinstance(datamodule, ImageDataModule):
            datamodule.check_normalization(self.input_normalization)
        if self.hparams["freeze_backbone"]:  # before configure_optimizers, as Lightning's BaseFinetuning freezes
            BaseFinetuning.freeze(self.required_backbone("--model.freeze_backbone true"), train_bn=False)

    def on_fit_start(self) -> None:
        # Resuming, Lightning's BaseFinetuning puts back the optimizer groups it added (an unfrozen backbone's) but
        # not their requires_grad (Lightning #21901): the backbone would stay frozen for the rest of the run. What
        # the optimizer holds is what trains.
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.requires_grad_(True)

    def on_train_epoch_start(self) -> None:
        # Lightning's freeze stops a frozen BatchNorm's statistics, but in train mode it would still normalise with
        # each batch's own; in eval mode it uses the running ones. Set each epoch, after Lightning's check that
        # the model starts training in train mode (it restores each module's mode after validation).
        if self.hparams["freeze_backbone"]:
            for module in self.required_backbone("--model.freeze_backbone true").modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def configure_model(self) -> None:
        # In place (nn.Module.compile): the parameters keep their names, so checkpoints load either way.
        if self.hparams.get("compile") and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        images, labels = batch
        logits = self(images)
        smoothing = self.hparams["label_smoothing"] if stage == "train" else 0.0
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        preds = logits.argmax(dim=1)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=labels.numel())
        getattr(self, f"{stage}_acc").update(preds, labels)
        if stage != "train":
            getattr(self, f"{stage}_f1").update(preds, labels)
            if stage == "test":
                self.test_class_acc.update(preds, labels)
        return {"loss": loss, "preds": preds}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")["loss"]
        if self.train_l1 is not None:
            penalty = self.hparams["l1"] * self.l1_norm()
            self.train_l1.update(penalty.detach())
            loss = loss + penalty
        if not torch.isfinite(loss):
            raise self._non_finite(loss, batch_idx)
        return loss

    def l1_norm(self) -> Tensor:
        """Sum of the absolute values of the weight tensors: the parameters with more than one dimension."""
        sums = [weight.abs().sum() for weight in self.parameters() if weight.ndim > 1]
        return torch.stack(sums).sum() if sums else torch.zeros((), device=self.device)

    def _non_finite(self, loss: Tensor, batch_idx: int) -> NonFiniteLossError:
        # Raised before backward: the weights and the checkpoints on disk stay as they were.
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else float("nan")
        return NonFiniteLossError(
            f"the training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, batch "
            f"{batch_idx}); the fit stopped there and saved nothing more. Lower the learning rate (now {lr:g}: "
            "--model.optimizer.init_args.lr) or clip gradients (--trainer.gradient_clip_val 1.0)."
        )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "test")

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """Class probabilities; accepts bare image batches (unlabelled data) or (images, labels)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=1)

    def _log_epoch(self, stage: str) -> None:
        # The metric objects themselves: Lightning computes each over the whole epoch (synced across processes
        # under DDP), logs it and resets it.
        loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": accuracy}, prog_bar=True)
        if stage != "train":
            self.log(f"{stage}/f1_macro", getattr(self, f"{stage}_f1"))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        if self.train_l1 is not None:
            self.log("train/l1", self.train_l1)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if not self.trainer.sanity_checking:  # the sanity check's two batches are no real score
            self.val_acc_best.update(self.val_acc.compute())  # a running best: logged as a value, never reset
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        metric = self.test_class_acc
        if metric.update_count == 0:
            return
        accuracy = metric.compute()
        with metric.sync_context():  # every process's counts (compute() gives back the local ones after syncing)
            hits, misses = metric.tp, metric.fn
            assert isinstance(hits, Tensor) and isinstance(misses, Tensor)
            counts = hits + misses  # the test images of each class
        metric.reset()
        self._test_table = per_class_table(self.class_names(), accuracy, counts)

    def on_test_end(self) -> None:
        # After the progress bar has closed (callbacks' on_test_end come first); before Lightning's results table.
        if self._test_table is not None and self.trainer.is_global_zero:
            # Past a Rich progress bar's stdout proxy, which would re-render it (and, in Jupyter, recurse).
            out = getattr(sys.stdout, "rich_proxied_file", sys.stdout)
            print(f"\nTest accuracy per class:\n{self._test_table}", file=out, flush=True)
        self._test_table = None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """What the optimizer trains: the parameters that require gradients (not a backbone frozen by
        `freeze_backbone`, or by Lightning's BackboneFinetuning until it unfreezes it), the backbone's in a group of
        their own when `backbone_lr_scale` is not 1."""
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        if (scale := self.hparams["backbone_lr_scale"]) == 1:
            return [{"params": trainable}]
        backbone = self.required_backbone(f"--model.backbone_lr_scale {scale:g}")
        in_backbone = {id(parameter) for parameter in backbone.parameters()}
        return [
            {"params": [parameter for parameter in trainable if id(parameter) not in in_backbone]},
            {"params": [parameter for parameter in trainable if id(parameter) in in_backbone]},
        ]

    def configure_optimizers(self) -> Any:
        try:  # torch checks lr, betas, weight_decay... and says "Invalid learning rate: -0.1"
            optimizer = self.optimizer_callable(self.parameter_groups())
        except ValueError as err:
            name = "lr" if "learning rate" in str(err) else "<argument>"
            raise UserError(f"optimizer: {err}; set --model.optimizer.init_args.{name} to a valid value.") from err
        if (lr := optimizer.param_groups[0]["lr"]) <= 0:  # torch accepts 0: a run that never learns
            raise UserError(f"the learning rate must be > 0, got {lr}: set --model.optimizer.init_args.lr.")
        scale = self.hparams["backbone_lr_scale"]
        for group in optimizer.param_groups[1:]:  # the backbone's, before a scheduler takes each group's rate
            group["lr"] = lr * scale
        if self.scheduler_callable is None:
            return optimizer
        try:
            scheduler = self.scheduler_callable(optimizer, **self._run_length(), **self._group_rates(optimizer))
        except ValueError as err:
            raise UserError(f"scheduler: {err}; set it with --model.scheduler.init_args.NAME.") from err
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.hparams["scheduler_interval"]}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = getattr(scheduler, "monitor", "val/loss")
            if config["monitor"] not in self.logged_metrics:
                raise UserError(
                    f"ReduceLROnPlateau monitors {config['monitor']!r}, which is never logged; set "
                    f"--model.scheduler.init_args.monitor to one of {', '.join(self.logged_metrics)}."
                )
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _run_length(self) -> dict[str, int]:
        """`total_steps` for a schedule that spans the run (OneCycleLR) when the config leaves it out.

        Lightning knows the run's length (epochs x batches, after `limit_train_batches` and gradient
        accumulation), so a config need not hard-code it and survives a change of batch size or epochs.
        """
        # Built from a config, the scheduler is a functools.partial whose keywords hold every argument.
        if not spans_the_run(getattr(self.scheduler_callable, "keywords", {})):
            return {}
        if self.attached_trainer is None:  # checked before the run: any length validates the other arguments
            return {"total_steps": 1}
        steps = self.schedule_length()
        if not steps < math.inf:
            raise UserError(
                "the scheduler spans the whole run, but this run has no end (max_epochs -1): set "
                "--trainer.max_epochs or --model.scheduler.init_args.total_steps."
            )
        return {"total_steps": int(steps)}

    def _group_rates(self, optimizer: torch.optim.Optimizer) -> dict[str, list[float]]:
        """A schedule's rates (OneCycleLR's `max_lr`, CyclicLR's `base_lr` and `max_lr`) per parameter group when the
        backbone has a group of its own: given as one number, they would set the backbone's rate to the head's."""
        if len(optimizer.param_groups) == 1:
            return {}
        keywords, scale = getattr(self.scheduler_callable, "keywords", {}), self.hparams["backbone_lr_scale"]
        rates = {name: keywords.get(name) for name in ("max_lr", "base_lr")}
        return {name: [rate, rate * scale] for name, rate in rates.items() if isinstance(rate, (int, float))}

    def schedule_length(self) -> float:
        """The whole run's length in scheduler steps (epochs, or optimizer steps with scheduler_interval "step");
        infinite for a run without an end."""
        by_epoch = self.hparams["scheduler_interval"] == "epoch"
        steps = self.trainer.max_epochs if by_epoch else self.trainer.estimated_stepping_batches
        return math.inf if steps is None or not 0 < steps < math.inf else float(steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # torch.load(weights_only=True) refuses arbitrary objects. Built from a config, the optimizer and
        # scheduler hyperparameters are plain data; passed as Python callables they are not: drop those,
        # so the checkpoint still loads (with the default optimizer) in a fresh process.
        hparams = checkpoint.get("hyper_parameters", {})
        for key in [key for key, value in hparams.items() if callable(value)]:
            del hparams[key]
        # What the data was (class names, normalisation...): predict and export prepare inputs from it.
        datamodule = getattr(self.attached_trainer, "datamodule", None)  # a dynamic attribute of the Trainer
        if (describe := getattr(datamodule, "description", None)) is not None:
            self.data_description = describe()
        if self.data_description is not None:
            checkpoint[DATA_KEY] = self.data_description
        fitting = self.attached_trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and (length := self.schedule_length()) < math.inf:
            # What a continuation compares its own length with (proj.continuation).
            trainer = self.trainer
            checkpoint[RUN_LENGTH_KEY] = {
                "length": length,
                "max_epochs": trainer.max_epochs,
                "max_steps": trainer.max_steps,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.data_description = checkpoint.get(DATA_KEY)


_RESTORING = ContextVar("restoring", default=False)


@contextmanager
def restoring(active: bool = True) -> Iterator[None]:
    """Models built within take their weights from a checkpoint next: they skip loading initial (pretrained) ones,
    which may be a download, or a file that has not travelled with the checkpoint."""
    token = _RESTORING.set(active)
    try:
        yield
    finally:
        _RESTORING.reset(token)


def is_restoring() -> bool:
    """Whether the model being built takes its weights from a checkpoint next (see `restoring`)."""
    return _RESTORING.get()
