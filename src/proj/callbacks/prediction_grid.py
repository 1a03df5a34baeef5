"""A grid of validation images titled with what the model predicted: the quickest look at its mistakes."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

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


def prediction_figure(images: Tensor, labels: Tensor, preds: Tensor, columns: int = 8) -> Figure:
    """One image grid with "prediction (label)" under each digit; one axes keeps rendering fast (~0.1 s)."""
    images = images.detach().float().cpu()
    grid = make_grid(images, nrow=columns, padding=4, normalize=True)[0]  # (H, W): one channel suffices
    rows = math.ceil(len(images) / columns)
    cell = images.shape[-1] + 4
    figure = Figure(figsize=(columns * 1.1, rows * 1.25))
    axes = figure.add_axes((0, 0, 1, 0.94))
    axes.imshow(grid.numpy(), cmap="gray", extent=(0, grid.shape[1], grid.shape[0] + 0.0, 0))
    for index, (pred, label) in enumerate(zip(preds.tolist(), labels.tolist(), strict=False)):
        row, column = divmod(index, columns)
        axes.text(
            column * cell + cell / 2,
            row * cell + cell - 1,
            f"{pred} ({label})",
            color="white",
            fontsize=8,
            ha="center",
            va="bottom",
            bbox={"facecolor": "black" if pred == label else "red", "alpha": 0.7, "pad": 1, "linewidth": 0},
        )
    axes.axis("off")
    figure.suptitle("prediction (label); mistakes in red", fontsize=10)
    return figure
