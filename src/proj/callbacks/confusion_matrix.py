"""Which classes are mistaken for which: a confusion matrix after every validation epoch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from proj.callbacks.figures import Drawing, FigureCallback, font
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
        if trainer.sanity_checking or not self.shows_figures(trainer):
            return
        assert isinstance(pl_module, ImageClassifier)  # its classes' names label the axes
        matrix, names = self.matrix.compute().cpu().numpy().copy(), pl_module.class_names()  # drawn on another thread
        self.log_figure(trainer, "val/confusion_matrix", lambda: confusion_figure(matrix, names), trainer.global_step)


def cell_colour(share: float) -> tuple[int, int, int]:
    """White for none, dark blue for the largest count (matplotlib's "Blues" from end to end)."""
    return tuple(round(255 + share * (dark - 255)) for dark in (8, 48, 107))  # type: ignore[return-value]


def confusion_figure(matrix: Tensor | np.ndarray, names: list[str]) -> Drawing:
    """The (C, C) matrix of counts (rows: label, columns: prediction) drawn: cells shaded by count, the counts
    written in them (up to 20 classes), rows and columns labelled with `names`. NumPy and Pillow only: it runs on
    the figure thread (see proj.callbacks.figures)."""
    count, counts = len(names), np.asarray(matrix, dtype=np.int64)  # a CPU tensor read without a torch op
    side = max(16, min(40, 400 // max(count, 1)))  # a cell's pixels
    size = 11 if side >= 28 else 9
    name_width = math.ceil(max(font(size).getlength(name) for name in names)) + 8
    left, top = name_width + 18, name_width + 36  # the row names, and the column names (upright) above the cells
    drawing = Drawing(left + count * side + 8, top + count * side + 8)
    drawing.text((4, 2), "rows: label, columns: prediction", 12)
    drawing.text((left + count * side / 2, 20), "prediction", 12, anchor="mt")
    drawing.upright_text((2, top + count * side // 2 - 30), "label", 60, 14, 12)
    largest = max(int(counts.max()), 1)
    for row in range(count):
        drawing.text((left - 4, top + row * side + side / 2), names[row], size, anchor="rm")
        drawing.upright_text((left + row * side, top - name_width), names[row], name_width, side, size)
        for column in range(count):
            value, x, y = int(counts[row, column]), left + column * side, top + row * side
            drawing.draw.rectangle(
                (x, y, x + side - 1, y + side - 1), fill=cell_colour(value / largest), outline=(220, 220, 220)
            )
            if count <= 20:
                colour = "white" if value > largest / 2 else "black"
                drawing.text((x + side / 2, y + side / 2), str(value), size, fill=colour, anchor="mm")
    return drawing
