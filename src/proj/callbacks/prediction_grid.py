"""A grid of validation images titled with what the model predicted: the quickest look at its mistakes."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.figure import Figure
from torch import Tensor

from proj.callbacks.tensorboard import tensorboard_writer


class PredictionGrid(Callback):
    """Logs the first `num_images` images of each validation epoch as `val/predictions` (wrong ones in red)."""

    def __init__(self, num_images: int = 32) -> None:
        self.num_images = num_images

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        writer = tensorboard_writer(trainer)
        if batch_idx != 0 or trainer.sanity_checking or writer is None:
            return
        images, labels = batch
        figure = prediction_figure(images[: self.num_images], labels, outputs["preds"])
        writer.add_figure("val/predictions", figure, global_step=trainer.global_step)


def prediction_figure(images: Tensor, labels: Tensor, preds: Tensor) -> Figure:
    columns = 8
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(columns * 1.2, rows * 1.4))
    for index, image in enumerate(images.detach().float().cpu()):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(image.squeeze(0).numpy(), cmap="gray")
        pred, label = int(preds[index]), int(labels[index])
        axes.set_title(f"{pred} ({label})", color="black" if pred == label else "red", fontsize=9)
        axes.axis("off")
    figure.suptitle("prediction (label)")
    figure.tight_layout()
    return figure
