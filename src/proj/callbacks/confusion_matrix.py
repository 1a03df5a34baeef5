"""Which digits are mistaken for which: a confusion matrix after every validation epoch."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from proj.callbacks.tensorboard import tensorboard_writer


class ConfusionMatrix(Callback):
    """Logs the validation confusion matrix (rows: label, columns: prediction) as `val/confusion_matrix`."""

    matrix: MulticlassConfusionMatrix

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.matrix = MulticlassConfusionMatrix(pl_module.hparams["num_classes"])

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.matrix = self.matrix.to(pl_module.device)
        self.matrix.reset()

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.matrix.update(outputs["preds"], batch[1])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if trainer.sanity_checking or writer is None:
            return
        figure = Figure(figsize=(6, 6))
        self.matrix.plot(ax=figure.add_subplot())
        figure.tight_layout()
        writer.add_figure("val/confusion_matrix", figure, global_step=trainer.global_step)
