"""channels_last changes the memory layout of the CNN, never its function."""

from __future__ import annotations

import torch

from proj.models import CNNClassifier

MNIST = {"input_shape": (1, 28, 28), "num_classes": 10}


def test_channels_last_stores_conv_weights_nhwc_and_matches_nchw():
    torch.manual_seed(0)
    nhwc = CNNClassifier(**MNIST, channels=(8, 16), channels_last=True).eval()
    nchw = CNNClassifier(**MNIST, channels=(8, 16), channels_last=False).eval()
    nchw.load_state_dict(nhwc.state_dict())
    conv = nhwc.net[4].weight  # the second convolution: with one input channel both layouts coincide
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nchw.net[4].weight.is_contiguous()
    images = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(nhwc(images), nchw(images), rtol=1e-4, atol=1e-5)


def test_channels_last_is_a_saved_hyperparameter():
    assert CNNClassifier(**MNIST).hparams["channels_last"] is True
    assert CNNClassifier(**MNIST, channels_last=False).hparams["channels_last"] is False


def test_channels_last_matches_nchw_on_colour_non_square_images():
    torch.manual_seed(0)
    shape = {"input_shape": (3, 20, 36), "num_classes": 4}
    nhwc = CNNClassifier(**shape, channels=(8, 16), channels_last=True).eval()
    nchw = CNNClassifier(**shape, channels=(8, 16), channels_last=False).eval()
    nchw.load_state_dict(nhwc.state_dict())
    first = nhwc.net[0].weight  # three input channels: NHWC differs from NCHW from the first convolution on
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    images = torch.randn(4, 3, 20, 36)  # the loaders' plain NCHW batches
    torch.testing.assert_close(nhwc(images), nchw(images), rtol=1e-4, atol=1e-5)
