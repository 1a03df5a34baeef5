"""Finding the TensorBoard writer among a Trainer's loggers."""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter


def tensorboard_writer(trainer: Trainer) -> SummaryWriter | None:
    """The run's SummaryWriter, or None when no TensorBoardLogger is configured (figures are then skipped)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
