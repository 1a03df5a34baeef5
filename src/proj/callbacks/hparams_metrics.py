"""Final metrics beside the hyperparameters in TensorBoard's HPARAMS tab, for comparing runs."""

from __future__ import annotations

from typing import Any

# Lightning's own flattening of nested hyperparameters into TensorBoard's "a/b" keys: private, so lightning is
# pinned below its next minor version and tests/test_upstream.py checks what it writes.
from lightning.fabric.utilities.logger import _flatten_dict, _sanitize_params
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams.api_pb2 import DataType
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams


class HParamsMetrics(Callback):
    """Declares which metrics the HPARAMS tab lists; TensorBoard shows the last value logged under each.

    `TensorBoardLogger.log_hyperparams(params, metrics)` would also write the metrics as scalars at step 0,
    a fake first point in every curve (Lightning #4030); writing the summaries directly declares the columns only.
    """

    def __init__(self, metrics: tuple[str, ...] = ("val/acc_best", "val/loss", "test/acc", "test/loss")) -> None:
        self.metrics = metrics

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                params = _sanitize_params(_flatten_dict(dict(logger.hparams)))
                # SummaryWriter's private accessor, which reopens the event file after a close (a second fit):
                # torch is pinned exactly, and a fit's HPARAMS summary is checked in tests/test_upstream.py.
                writer = logger.experiment._get_file_writer()
                for summary in hparams(params, dict.fromkeys(self.metrics, 0.0)):
                    writer.add_summary(with_booleans(summary, params))


def with_booleans(summary: Summary, params: dict[str, Any]) -> Summary:
    """torch's `hparams` writes a bool as a number (it tests for int first): true/false for TensorBoard again."""
    booleans = {key: value for key, value in params.items() if isinstance(value, bool)}
    metadata = summary.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(metadata.content)
    for key, value in booleans.items():
        if data.HasField("session_start_info"):
            data.session_start_info.hparams[key].bool_value = value
    for info in data.experiment.hparam_infos:
        if info.name in booleans:
            info.type = DataType.DATA_TYPE_BOOL
    metadata.content = data.SerializeToString()
    return summary
