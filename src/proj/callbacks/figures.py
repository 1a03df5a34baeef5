"""Figures for every tracker that shows images: drawn as images with Pillow (a few milliseconds, where a
matplotlib figure took 0.1-0.3 s, PITFALLS 15), and sent to the trackers off the training loop.

The figure thread runs no torch op, only NumPy and Pillow: a torch op on a second thread gives OpenMP a second team
of worker threads for the rest of the process, and with more OpenMP threads than cores, OpenMP stops spinning
between parallel regions (GOMP_SPINCOUNT is throttled): every later training step waits on thread wake-ups. Here,
2 cores, that made the CNN's epoch 1.3-1.6x slower for good after the first figure.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image, ImageDraw, ImageFont

from proj.trackers import IMAGE_LOGGERS, log_image

BACKGROUND = 19  # the figure thread's nice value on Linux: the lowest priority


def _yield_to_training() -> None:
    """Run the figure thread only when a core is idle. Drawing and PNG-encoding two figures takes ~70 ms of CPU,
    which on a 2-core machine the training step's OpenMP threads wait for; at the lowest priority it waits for
    them instead. Linux sets a thread's own priority this way (elsewhere the call would renice the process)."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND)


# One thread for every figure of the process: figures reach the trackers one at a time, in order, while the
# training loop goes on (a tracker may be a server: MLflow's client waits on each request).
_SENDING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proj-figures", initializer=_yield_to_training)


@cache
def font(size: int = 11) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font (no font file to find on the system)."""
    return ImageFont.load_default(size=size)


class Drawing:
    """A white Pillow canvas that keeps what was written on it, and where (what a test reads back)."""

    def __init__(self, width: int, height: int) -> None:
        self.canvas = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.canvas)
        self.texts: list[tuple[str, tuple[float, float]]] = []

    def text(self, xy: tuple[float, float], text: str, size: int = 11, fill: str = "black", anchor: str = "la") -> None:
        self.draw.text(xy, text, fill=fill, font=font(size), anchor=anchor)
        self.texts.append((text, xy))

    def upright_text(self, xy: tuple[int, int], text: str, width: int, height: int, size: int = 11) -> None:
        """`text` turned a quarter left (read bottom to top), in a box of `width` x `height` (before turning)
        whose top left is at `xy` once turned."""
        box = Drawing(width, height)
        box.text((4, height / 2), text, size, anchor="lm")
        self.canvas.paste(box.canvas.rotate(90, expand=True), xy)
        self.texts.append((text, xy))

    def pixels(self) -> np.ndarray:
        """The (H, W, 3) uint8 array trackers take."""
        return np.asarray(self.canvas).copy()


class FigureCallback(Callback):
    """A callback that logs figures to every tracker that takes images (TensorBoard, MLflow, W&B; the others are
    skipped). Drawing and sending happen on a background thread from data the callback has copied, and the fit
    waits for them only when it ends (before the loggers close). Drawing uses NumPy and Pillow, never torch (see
    the module's docstring)."""

    def __init__(self) -> None:
        self._sending: list[Future[None]] = []

    @staticmethod
    def shows_figures(trainer: Trainer) -> bool:
        """Whether a logger of this process takes images (else there is nothing to draw)."""
        return trainer.is_global_zero and any(isinstance(logger, IMAGE_LOGGERS) for logger in trainer.loggers)

    def log_figure(self, trainer: Trainer, tag: str, draw: Callable[[], Drawing], step: int) -> None:
        """Logs `draw()` under `tag` at `step` to the trainer's loggers that take images; `draw` must use only data
        no later batch changes, and no torch op (tensors on the CPU read through NumPy)."""
        loggers = [logger for logger in trainer.loggers if isinstance(logger, IMAGE_LOGGERS)]
        self._sending = [future for future in self._sending if not future.done()]
        self._sending.append(_SENDING.submit(lambda: log_image(loggers, tag, draw().pixels(), step)))

    def wait(self) -> None:
        """Every figure submitted so far is with the trackers (an error while drawing one is raised here)."""
        sending, self._sending = self._sending, []
        for future in sending:
            future.result()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.wait()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        for future in self._sending:  # the run failed: let what is drawn be written, quietly
            future.exception()
        self._sending = []
