"""Lightning callbacks of this project; Lightning's own (checkpoints, LR monitor, early stopping) are used as
they are. Add a callback as a module here and list it under `trainer.callbacks` in a config."""

from proj.callbacks.confusion_matrix import ConfusionMatrix
from proj.callbacks.hparams_metrics import HParamsMetrics
from proj.callbacks.prediction_grid import PredictionGrid

__all__ = ["ConfusionMatrix", "HParamsMetrics", "PredictionGrid"]
