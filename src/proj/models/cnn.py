"""A convolutional network: small filters shared across the image, then a linear classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from proj.errors import UserError
from proj.models.base import ImageClassifier
from proj.models.weight_init import Init, init_weights


class CNN(nn.Sequential):
    """Per stage `convs_per_stage` x (3x3 convolution -> [BatchNorm] -> ReLU), then a 2x2 max-pool;
    then hidden and output layers. Stacked 3x3 convolutions see as far as one larger filter, with fewer
    weights and one more non-linearity (the VGG recipe)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        channels: tuple[int, ...],
        hidden_size: int,
        num_classes: int,
        dropout: float,
        batch_norm: bool,
        convs_per_stage: int = 1,
    ) -> None:
        layers: list[nn.Module] = []
        in_channels, height, width = input_shape
        if min(height, width) < 2 ** len(channels):
            raise UserError(
                f"{len(channels)} pooling stages halve {height}x{width} images to nothing: use fewer --model.channels "
                "or larger images (--data.image_size)."
            )
        for out_channels in channels:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
                layers += [nn.ReLU()]
                in_channels = out_channels
            layers += [nn.MaxPool2d(2)]
            height, width = height // 2, width // 2
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels * height * width, hidden_size)]
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, num_classes)]
        super().__init__(*layers)


class CNNClassifier(ImageClassifier):
    """CNN classifier of images of any shape; `**kwargs` go to `ImageClassifier` (optimizer, scheduler, ...).

    Args:
        channels: output channels of each convolution stage; each stage halves the image side.
        hidden_size: width of the fully connected layer before the output.
        dropout: probability of zeroing an input of the two fully connected layers during training.
        batch_norm: normalise each convolution's output over the batch.
        init: weight initialisation scheme. PyTorch's own by default: "kaiming" draws weights 2.4x larger, and its
            larger output layer left the ReLU hidden layer almost no live unit under Adam (3-4% after the first
            epoch on colour images, against 7-12% with PyTorch's): 15-52 points of test accuracy lost on the
            colour sets of `make bench-defaults` (README, "Defaults on data nobody tuned them for").
        convs_per_stage: 3x3 convolutions before each pooling; 2 gives a VGG-style network, deeper at about
            three times the compute.
        channels_last: keep weights and activations in NHWC order, which oneDNN (CPU) and tensor-core (GPU)
            convolutions run faster: 25-30% less time per step on a 2-core CPU.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64),
        hidden_size: int = 128,
        dropout: float = 0.2,
        batch_norm: bool = True,
        init: Init = "default",
        channels_last: bool = True,
        convs_per_stage: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if convs_per_stage < 1:
            raise UserError(f"convs_per_stage must be at least 1, got {convs_per_stage}: set --model.convs_per_stage.")
        self.net = CNN(
            self.hparams["input_shape"],
            channels,
            hidden_size,
            self.hparams["num_classes"],
            dropout,
            batch_norm,
            convs_per_stage,
        )
        init_weights(self.net, init)
        if channels_last:  # activations follow the weights' layout; single-channel inputs need no conversion
            self.net = self.net.to(memory_format=torch.channels_last)

    @property
    def backbone(self) -> nn.Module:
        """The convolution stages: the layers before Flatten (the head is the hidden and output layers)."""
        layers = list(self.net.children())
        return nn.Sequential(*layers[: next(i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten))])
