"""A grid of validation images titled with what the model predicted: the quickest look at its mistakes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

from proj.callbacks.tensorboard import FigureCallback, tensorboard_writer
from proj.models.base import ImageClassifier

PADDING = 4  # pixels between the images of the grid
NAME_LENGTH = 8  # longer class names are cut to fit under an image


class PredictionGrid(FigureCallback):
    """Logs the first `num_images` images of each validation epoch as `val/predictions` (wrong ones in red)."""

    def __init__(self, num_images: int = 32) -> None:
        super().__init__()
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
        count = self.num_images
        # Copies on the CPU: the figure is drawn later, on another thread (FigureCallback).
        images, labels, preds = (tensor[:count].detach().cpu().clone() for tensor in (images, labels, outputs["preds"]))
        assert isinstance(pl_module, ImageClassifier)  # it draws what the classifier's data says of itself
        names, mean, std = pl_module.class_names(), pl_module.data_fact("mean"), pl_module.data_fact("std")

        def draw() -> Figure:
            return prediction_figure(images, labels, preds, names=names, mean=mean, std=std)

        self.log_figure(writer, "val/predictions", draw, trainer.global_step)


def short(name: str) -> str:
    return name if len(name) <= NAME_LENGTH else name[: NAME_LENGTH - 1] + "…"


def prediction_figure(
    images: Tensor,
    labels: Tensor,
    preds: Tensor,
    columns: int = 8,
    names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Figure:
    """One grid of (B, C, H, W) images, grayscale or colour, with "prediction (label)" under each, by class name
    when `names` are given (cut to 8 characters). The images are shown as the data set stores them when its
    normalisation (`mean`, `std`, per channel) is given, else stretched to the grid's full range. One axes keeps
    rendering fast (~0.1 s)."""
    images = images.detach().float().cpu()
    channels, height, width = images.shape[1:]
    if mean is not None and std is not None and len(mean) == len(std) == channels:
        unnormalised = images * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        grid = make_grid(unnormalised.clamp(0, 1), nrow=columns, padding=PADDING)
    else:
        grid = make_grid(images, nrow=columns, padding=PADDING, normalize=True)
    # make_grid gives 3 channels; one suffices for grayscale (a colormap then), colour images keep theirs.
    pixels = grid[0].numpy() if channels == 1 else grid.permute(1, 2, 0).numpy()
    rows = math.ceil(len(images) / columns)
    names = [short(name) for name in names] if names is not None else None
    texts = [
        f"{pred} ({label})" if names is None else f"{names[pred]} ({names[label]})"
        for pred, label in zip(preds.tolist(), labels.tolist(), strict=False)
    ][: len(images)]
    fontsize = 8 if max(map(len, texts), default=0) <= 10 else 6
    cell_width, cell_height = width + PADDING, height + PADDING
    figure = Figure(figsize=(columns * 1.1, rows * 1.1 * cell_height / cell_width + 0.25))
    axes = figure.add_axes((0, 0, 1, 1 - 0.25 / figure.get_figheight()))
    axes.imshow(pixels, cmap="gray" if channels == 1 else None, extent=(0, grid.shape[2], grid.shape[1], 0))
    for index, (text, pred, label) in enumerate(zip(texts, preds.tolist(), labels.tolist(), strict=False)):
        row, column = divmod(index, columns)
        axes.text(
            column * cell_width + PADDING + width / 2,
            (row + 1) * cell_height - 1,
            text,
            color="white",
            fontsize=fontsize,
            ha="center",
            va="bottom",
            bbox={"facecolor": "black" if pred == label else "red", "alpha": 0.7, "pad": 1, "linewidth": 0},
        )
    axes.axis("off")
    figure.suptitle("prediction (label); mistakes in red", fontsize=10)
    return figure
