"""A tracker that cannot be written to (TensorBoard on a full disk or a lost network mount, an MLflow server that
stopped) costs the curves, not the run."""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter


class _Dropped:
    """A file writer that writes nothing: where the events go once writing them has failed."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


DROPPED = _Dropped()
_REPORTING = threading.Lock()
TENSORBOARD_FIX = " Free space there for later runs."


class EventWriteFailures(Callback):
    """Keeps a fit going when its TensorBoard events cannot be written, and says so once.

    TensorBoard writes events from a background thread. When a write fails, the thread dies printing a
    traceback, and every later `add_scalar` raises its OSError: a good run killed by its curves. Here the
    failure is reported in one line and the run's later events are dropped. Checkpoints are not TensorBoard's:
    a checkpoint that cannot be written still stops the run (AtomicCheckpointIO), as it is what a run is for.
    """

    def __init__(self) -> None:
        self.failed = False
        self._previous_hook: Callable[[threading.ExceptHookArgs], Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            writer = logger.experiment if isinstance(logger, TensorBoardLogger) else None
            if isinstance(writer, SummaryWriter) and writer._get_file_writer.__name__ != "guarded_file_writer":
                self._guard(writer, str(logger.log_dir))
            if isinstance(logger, MLFlowLogger) and trainer.is_global_zero:
                self._guard_mlflow(logger)
        if self._previous_hook is None:
            self._previous_hook = threading.excepthook
            threading.excepthook = self._quiet_writer_thread

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_hook is not None:
            threading.excepthook = self._previous_hook
            self._previous_hook = None

    def _guard(self, writer: SummaryWriter, log_dir: str) -> None:
        """Every event reaches the file through `_get_file_writer()` (torch's SummaryWriter; it makes a new file
        writer after a close, as between a fit and its test), so the writers it hands out are guarded."""
        get_file_writer, what = writer._get_file_writer, f"TensorBoard cannot write to {log_dir}"

        def guarded_file_writer() -> Any:
            if self.failed:
                return DROPPED
            try:
                file_writer = get_file_writer()  # a new one writes the file's header at once
            except OSError as err:
                self._report(err, what, TENSORBOARD_FIX)
                return DROPPED
            if not getattr(file_writer, "guarded", False):
                for name in ("add_event", "flush", "close"):
                    setattr(file_writer, name, self._guarded(getattr(file_writer, name), what, TENSORBOARD_FIX))
                file_writer.guarded = True
            return file_writer

        writer._get_file_writer = guarded_file_writer  # type: ignore[method-assign]
        guarded_file_writer()  # the writer that exists now: SummaryWriter.flush/close reach it directly

    def _guard_mlflow(self, logger: MLFlowLogger) -> None:
        """MLflow's client raises when its server is gone, after retrying for minutes by default: a few seconds
        here (MLFLOW_HTTP_REQUEST_MAX_RETRIES and _TIMEOUT, unless set), then the run's later MLflow calls are
        dropped."""
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        client, what = logger._mlflow_client, f"MLflow cannot write to {logger._tracking_uri}"
        if getattr(client, "guarded", False):
            return
        for name in ("log_batch", "log_image", "log_artifact", "get_run", "set_terminated"):
            setattr(client, name, self._guarded(getattr(client, name), what, "", (MlflowException, RequestException)))
        client.guarded = True  # type: ignore[attr-defined]

    def _guarded(
        self, write: Callable[..., Any], what: str, fix: str, failures: tuple[type[Exception], ...] = (OSError,)
    ) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.failed:
                return None
            try:
                return write(*args, **kwargs)
            except failures as err:
                self._report(err, what, fix)
                return None

        return guarded

    def _report(self, err: Exception, what: str, fix: str) -> None:
        with _REPORTING:  # writes fail together on the training and the figures' threads: one line
            if self.failed:
                return
            self.failed = True
        # A refused connection is deep in MLflow's message (an API request failed, after retries, because...).
        errno = re.search(r"\[Errno \d+\] ([^\"')]+)", str(err))
        reason = getattr(err, "strerror", None) or (errno.group(1) if errno else str(err).strip().splitlines()[0])
        print(
            f"warning: {what} ({reason}): the run goes on, but its curves and figures from here on are lost.{fix}",
            file=sys.stderr,
            flush=True,
        )

    def _quiet_writer_thread(self, args: threading.ExceptHookArgs) -> None:
        """The writer thread's OSError is reported by `guarded` at the next write; any other goes on as usual."""
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        assert self._previous_hook is not None
        self._previous_hook(args)
