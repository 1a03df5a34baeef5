"""A grid of validation images captioned with what the model predicted: the quickest look at its mistakes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from proj.callbacks.figures import Drawing, FigureCallback, font
from proj.models.base import ImageClassifier

PADDING = 4  # pixels between the images of the grid
NAME_LENGTH = 8  # longer class names are cut to fit under an image
MIN_SIDE = 64  # small images (28x28 digits) are enlarged by a whole factor to about this size
CAPTION = 14  # pixels of the caption strip under each image
TITLE = 18  # pixels of the title strip above the grid
MISTAKE, RIGHT = (200, 30, 30), (0, 0, 0)  # caption backgrounds


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
        if batch_idx != 0 or trainer.sanity_checking or not self.shows_figures(trainer):
            return
        images, labels = batch
        count = self.num_images
        # Copies on the CPU: the figure is drawn later, on another thread (FigureCallback).
        images, labels, preds = (tensor[:count].detach().cpu().clone() for tensor in (images, labels, outputs["preds"]))
        assert isinstance(pl_module, ImageClassifier)  # it draws what the classifier's data says of itself
        names, mean, std = pl_module.class_names(), pl_module.data_fact("mean"), pl_module.data_fact("std")

        def draw() -> Drawing:
            return prediction_figure(images, labels, preds, names=names, mean=mean, std=std)

        self.log_figure(trainer, "val/predictions", draw, trainer.global_step)


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
) -> Drawing:
    """A grid of (B, C, H, W) images, grayscale or colour, with "prediction (label)"
    under each (on red for a mistake), by class name when `names` are given (cut to 8 characters). The images are
    shown as the data set stores them when its normalisation (`mean`, `std`, per channel) is given, else stretched
    to their full range."""
    images = images.detach().float().cpu()
    channels, height, width = images.shape[1:]
    if mean is not None and std is not None and len(mean) == len(std) == channels:
        images = (images * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)).clamp(0, 1)
    else:
        low, high = images.min(), images.max()
        images = (images - low) / (high - low).clamp(min=1e-12)
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, math.ceil(MIN_SIDE / max(height, width)))
    images = F.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images
    label_names = [short(name) for name in names] if names is not None else None
    texts = [
        f"{pred} ({label})" if label_names is None else f"{label_names[pred]} ({label_names[label]})"
        for pred, label in zip(preds.tolist(), labels.tolist(), strict=False)
    ][: len(images)]
    text_width = math.ceil(max((font().getlength(text) for text in texts), default=0)) + 4
    cell_width = max(width * scale, text_width)
    # Each image centred in its cell, above the strip its caption is written on.
    sides = cell_width - width * scale
    cells = F.pad(images, (sides // 2, sides - sides // 2, 0, CAPTION), value=1.0)
    grid = make_grid(cells, nrow=columns, padding=PADDING, pad_value=1.0)
    drawing = Drawing(grid.shape[2], grid.shape[1] + TITLE)
    drawing.canvas.paste(Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()), (0, TITLE))
    drawing.text((PADDING, 3), "prediction (label); mistakes in red", 12)
    cell_height = height * scale + CAPTION
    for index, (text, pred, label) in enumerate(zip(texts, preds.tolist(), labels.tolist(), strict=False)):
        row, column = divmod(index, columns)
        left = PADDING + column * (cell_width + PADDING)
        top = TITLE + PADDING + row * (cell_height + PADDING) + height * scale
        background = RIGHT if pred == label else MISTAKE
        drawing.draw.rectangle((left, top, left + cell_width - 1, top + CAPTION - 1), fill=background)
        drawing.text((left + cell_width / 2, top + CAPTION / 2), text, fill="white", anchor="mm")
    return drawing
