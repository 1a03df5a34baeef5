"""What every classifier shares: the steps, the metrics and the optimizer/scheduler wiring."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from proj.errors import UserError
from proj.schedulers import SchedulerCallable

STAGES = ("train", "val", "test")


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite: training stops before the bad step updates any weights."""


class ImageClassifier(LightningModule):
    """Base LightningModule: a subclass only builds `self.net`, mapping (B, 1, 28, 28) images to (B, C) logits.

    Args:
        num_classes: size of the output layer.
        optimizer: builds the optimizer from the parameters, e.g. `--model.optimizer SGD
            --model.optimizer.lr 0.1`.
        scheduler: builds a learning-rate scheduler from the optimizer; none keeps the rate constant. A
            OneCycleLR without `total_steps` spans the whole run.
        scheduler_interval: step the scheduler after every "epoch" or every optimizer "step".
        label_smoothing: share of each training target spread over all classes (0 = one-hot), which
            keeps the model from growing over-confident; evaluation losses stay plain cross-entropy.
    """

    net: nn.Module

    def __init__(
        self,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: SchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}: set --model.label_smoothing.")
        self.save_hyperparameters()
        self.optimizer_callable = optimizer
        self.scheduler_callable = scheduler
        self.example_input_array = torch.zeros(1, 1, 28, 28)  # lets the model summary show layer shapes
        # Metrics accumulate over an epoch and are logged once at its end: cheaper than per-step logging,
        # and exact over the whole epoch (and across processes under DDP).
        # Predictions come from argmax and cross_entropy checks the labels, so torchmetrics' own input checks
        # (~0.1 ms a step) are redundant; a NaN loss shows as a NaN mean rather than being skipped.
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in STAGES)
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in STAGES
        )
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so that a resumed run keeps the best so far

    @property
    def logged_metrics(self) -> tuple[str, ...]:
        """Keys this module logs during fit: what ReduceLROnPlateau (or a checkpoint) may monitor."""
        return ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")

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
        return {"loss": loss, "preds": preds}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")["loss"]
        if not torch.isfinite(loss):
            raise self._non_finite(loss, batch_idx)
        return loss

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

    def _log_epoch(self, stage: str) -> Tensor:
        loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        values = {f"{stage}/loss": loss.compute(), f"{stage}/acc": accuracy.compute()}
        loss.reset()
        accuracy.reset()
        self.log_dict(values, prog_bar=True, sync_dist=True)  # already synced by torchmetrics: no-op, no warning
        return values[f"{stage}/acc"]

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        accuracy = self._log_epoch("val")
        if not self.trainer.sanity_checking:  # the sanity check's two batches are no real score
            self.val_acc_best.update(accuracy)
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        return self.optimization()

    def optimization(self, run_steps: int | None = None) -> Any:
        """What `configure_optimizers` returns. `run_steps`, the run's length in scheduler steps, sizes a schedule
        that spans the run (OneCycleLR without `total_steps`); in a fit the Trainer knows it, a loop of one's own
        (proj.bench's classic loop) passes it."""
        try:  # torch checks lr, betas, weight_decay... and says "Invalid learning rate: -0.1"
            optimizer = self.optimizer_callable(self.parameters())
        except ValueError as err:
            name = "lr" if "learning rate" in str(err) else "<argument>"
            raise UserError(f"optimizer: {err}; set --model.optimizer.init_args.{name} to a valid value.") from err
        if (lr := optimizer.param_groups[0]["lr"]) <= 0:  # torch accepts 0: a run that never learns
            raise UserError(f"the learning rate must be > 0, got {lr}: set --model.optimizer.init_args.lr.")
        if self.scheduler_callable is None:
            return optimizer
        try:
            scheduler = self.scheduler_callable(optimizer, **self._run_length(run_steps))
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

    def _run_length(self, run_steps: int | None) -> dict[str, int]:
        """`total_steps` for a schedule that spans the run (OneCycleLR) when the config leaves it out.

        Lightning knows the run's length (epochs x batches, after `limit_train_batches` and gradient
        accumulation), so a config need not hard-code it and survives a change of batch size or epochs.
        A scheduler built from a config is a `functools.partial` whose keywords hold every argument.
        """
        arguments = getattr(self.scheduler_callable, "keywords", {})
        if arguments.get("total_steps", 0) is not None or arguments.get("epochs") is not None:
            return {}
        if run_steps is not None:
            return {"total_steps": run_steps}
        if self._trainer is None:  # checked before the run: any length validates the other arguments
            return {"total_steps": 1}
        by_epoch = self.hparams["scheduler_interval"] == "epoch"
        steps = self.trainer.max_epochs if by_epoch else self.trainer.estimated_stepping_batches
        if steps is None or not 0 < steps < math.inf:
            raise UserError(
                "the scheduler spans the whole run, but this run has no end (max_epochs -1): set "
                "--trainer.max_epochs or --model.scheduler.init_args.total_steps."
            )
        return {"total_steps": int(steps)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # torch.load(weights_only=True) refuses arbitrary objects. Built from a config, the optimizer and
        # scheduler hyperparameters are plain data; passed as Python callables they are not: drop those,
        # so the checkpoint still loads (with the default optimizer) in a fresh process.
        hparams = checkpoint.get("hyper_parameters", {})
        for key in [key for key, value in hparams.items() if callable(value)]:
            del hparams[key]
