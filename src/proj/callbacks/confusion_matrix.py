"""Which classes are mistaken for which: a confusion matrix after every validation epoch."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.utilities.plot import plot_confusion_matrix

from proj.callbacks.tensorboard import FigureCallback, tensorboard_writer
from proj.models.base import ImageClassifier


class ConfusionMatrix(FigureCallback):
    """Logs the validation confusion matrix (rows: label, columns: prediction) as `val/confusion_matrix`, its
    rows and columns labelled with the class names."""

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
        assert isinstance(pl_module, ImageClassifier)  # its classes' names label the axes
        matrix, names = self.matrix.compute().cpu().clone(), pl_module.class_names()
        self.log_figure(writer, "val/confusion_matrix", lambda: confusion_figure(matrix, names), trainer.global_step)


def confusion_figure(matrix: Tensor, names: list[str]) -> Figure:
    """The (C, C) matrix of counts (rows: label, columns: prediction) as a figure, labelled with `names`."""
    count = len(names)
    figure = Figure(figsize=(6, 6))
    axes = figure.add_subplot()
    # What MulticlassConfusionMatrix.plot draws; its fonts suit a few short labels, so they are made smaller below.
    plot_confusion_matrix(matrix.cpu(), ax=axes, add_text=count <= 20, labels=names)
    small = 7 if max(map(len, names)) > 4 or count > 10 else 9  # 10 names like 'T-shirt/top' side by side
    axes.set_xticks(range(count), names, rotation=45 if count > 2 else 0, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(count), names, rotation=0)
    axes.tick_params(labelsize=small)
    axes.xaxis.label.set_fontsize(9)
    axes.yaxis.label.set_fontsize(9)
    for text in axes.texts:  # the counts in the cells
        text.set_fontsize(small)
    figure.tight_layout()
    return figure
