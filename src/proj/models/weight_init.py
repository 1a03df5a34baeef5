"""Weight initialisation schemes, chosen by name from a config."""

from __future__ import annotations

from typing import Literal

from torch import nn

Init = Literal["default", "xavier", "kaiming"]


def init_weights(network: nn.Module, scheme: Init) -> None:
    """Re-initialise every linear and convolution layer of `network` in place.

    "default" keeps PyTorch's (a scaled uniform); "xavier" suits tanh/sigmoid layers; "kaiming" suits ReLU
    layers. Biases start at zero for the two named schemes.
    """
    if scheme == "default":
        return
    for layer in network.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(layer.weight)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
