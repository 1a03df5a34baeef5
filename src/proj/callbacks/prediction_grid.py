"""A grid of validation images captioned with what the model predicted: the quickest look at its mistakes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch import Tensor

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
        # NumPy copies: the figure is drawn later, on another thread, with no torch op (FigureCallback).
        images, labels, preds = (
            tensor[:count].detach().cpu().numpy().copy() for tensor in (images, labels, outputs["preds"])
        )
        assert isinstance(pl_module, ImageClassifier)  # it draws what the classifier's data says of itself
        names, mean, std = pl_module.class_names(), pl_module.data_fact("mean"), pl_module.data_fact("std")

        def draw() -> Drawing:
            return prediction_figure(images, labels, preds, names=names, mean=mean, std=std)

        self.log_figure(trainer, "val/predictions", draw, trainer.global_step)


def short(name: str) -> str:
    return name if len(name) <= NAME_LENGTH else name[: NAME_LENGTH - 1] + "…"


def prediction_figure(
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    preds: Tensor | np.ndarray,
    columns: int = 8,
    names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Drawing:
    """A grid of (B, C, H, W) images, grayscale or colour, with "prediction (label)"
    under each (on red for a mistake), by class name when `names` are given (cut to 8 characters). The images are
    shown as the data set stores them when its normalisation (`mean`, `std`, per channel) is given, else stretched
    to their full range. NumPy and Pillow only: it runs on the figure thread (see proj.callbacks.figures)."""
    pixels = np.asarray(images, dtype=np.float32)  # a CPU tensor's memory, read without a torch op
    channels, height, width = pixels.shape[1:]
    if mean is not None and std is not None and len(mean) == len(std) == channels:
        shape = (-1, 1, 1)
        pixels = (pixels * np.reshape(std, shape) + np.reshape(mean, shape)).clip(0, 1)
    else:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) / max(high - low, 1e-12)
    tiles = (pixels * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)  # (B, H, W, C)
    if channels == 1:
        tiles = tiles.repeat(3, axis=3)
    scale = max(1, math.ceil(MIN_SIDE / max(height, width)))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest neighbour: each pixel a square
    label_names = [short(name) for name in names] if names is not None else None
    pairs = list(zip(np.asarray(preds).tolist(), np.asarray(labels).tolist(), strict=False))[: len(tiles)]
    texts = [
        f"{pred} ({label})" if label_names is None else f"{label_names[pred]} ({label_names[label]})"
        for pred, label in pairs
    ]
    text_width = math.ceil(max((font().getlength(text) for text in texts), default=0)) + 4
    cell_width, cell_height = max(width * scale, text_width), height * scale + CAPTION
    rows, shown_columns = math.ceil(len(texts) / columns), min(columns, len(texts))
    drawing = Drawing(
        PADDING + shown_columns * (cell_width + PADDING), TITLE + PADDING + rows * (cell_height + PADDING)
    )
    drawing.text((PADDING, 3), "prediction (label); mistakes in red", 12)
    for index, (tile, text, (pred, label)) in enumerate(zip(tiles, texts, pairs, strict=False)):
        row, column = divmod(index, columns)
        left = PADDING + column * (cell_width + PADDING)
        top = TITLE + PADDING + row * (cell_height + PADDING)
        drawing.canvas.paste(Image.fromarray(tile), (left + (cell_width - width * scale) // 2, top))
        top += height * scale  # the caption strip, under the image
        background = RIGHT if pred == label else MISTAKE
        drawing.draw.rectangle((left, top, left + cell_width - 1, top + CAPTION - 1), fill=background)
        drawing.text((left + cell_width / 2, top + CAPTION / 2), text, fill="white", anchor="mm")
    return drawing
