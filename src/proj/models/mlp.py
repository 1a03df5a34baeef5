"""A multilayer perceptron: every pixel connected to every hidden unit."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from proj.models.base import ImageClassifier
from proj.models.weight_init import Init, init_weights


class MLP(nn.Sequential):
    """Flatten, then Linear -> [BatchNorm] -> ReLU -> Dropout per hidden layer, then a linear output."""

    def __init__(
        self, in_features: int, hidden_sizes: tuple[int, ...], num_classes: int, dropout: float, batch_norm: bool
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden_sizes:
            layers += [nn.Linear(in_features, width, bias=not batch_norm)]  # BatchNorm brings its own bias
            layers += [nn.BatchNorm1d(width)] if batch_norm else []
            layers += [nn.ReLU(), nn.Dropout(dropout)]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)


class MLPClassifier(ImageClassifier):
    """MLP classifier of images of any shape (each pixel of each channel is an input); `**kwargs` go to
    `ImageClassifier` (optimizer, scheduler, ...).

    Args:
        hidden_sizes: width of each hidden layer, input side first.
        dropout: probability of zeroing a hidden unit during training.
        batch_norm: normalise each hidden layer's pre-activations over the batch.
        init: weight initialisation scheme; PyTorch's own by default, as the CNN's (whose "kaiming" failed on colour
            images): the MLP's batch-normalised layers train as well either way (README, "Defaults on data nobody
            tuned them for").
    """

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (512, 256),
        dropout: float = 0.2,
        batch_norm: bool = True,
        init: Init = "default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.net = MLP(
            math.prod(self.hparams["input_shape"]), hidden_sizes, self.hparams["num_classes"], dropout, batch_norm
        )
        init_weights(self.net, init)
