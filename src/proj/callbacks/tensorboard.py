"""Finding the TensorBoard writer among a Trainer's loggers, and drawing figures for it off the training loop."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

# One thread for every figure of the process: matplotlib keeps shared state (fonts), so figures are drawn one
# at a time, while the training loop goes on (torch's kernels release the interpreter lock).
_DRAWING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proj-figures")


def tensorboard_writer(trainer: Trainer) -> SummaryWriter | None:
    """The run's SummaryWriter, or None when no TensorBoardLogger is configured (figures are then skipped)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class FigureCallback(Callback):
    """A callback that logs matplotlib figures: drawing one takes 0.1-0.3 s, as long as an MLP's whole training
    epoch, so it happens on a background thread from data the callback has copied, and the fit waits for the
    figures only when it ends (before the logger closes its file). What TensorBoard shows is the same."""

    def __init__(self) -> None:
        self._drawing: list[Future[None]] = []

    def log_figure(self, writer: SummaryWriter, tag: str, draw: Callable[[], Figure], step: int) -> None:
        """Logs `draw()` under `tag` at `step`; `draw` must use only data no later batch changes."""
        self._drawing = [future for future in self._drawing if not future.done()]
        self._drawing.append(_DRAWING.submit(lambda: writer.add_figure(tag, draw(), global_step=step)))

    def wait(self) -> None:
        """Every figure submitted so far is in the writer (an error while drawing one is raised here)."""
        drawing, self._drawing = self._drawing, []
        for future in drawing:
            future.result()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.wait()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        for future in self._drawing:  # the run failed: let what is drawn be written, quietly
            future.exception()
        self._drawing = []
