from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.utilities.model_summary import ModelSummary
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import MNIST_SHAPE, MODEL_CONFIGS, datamodule, quick_trainer, run_fit, run_python
from proj.errors import UserError
from proj.models import CNNClassifier, ImageClassifier, MLPClassifier

MNIST = {"input_shape": (1, 28, 28), "num_classes": 10}  # what the CLI links from MNISTDataModule


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (MLPClassifier, {}),
        (MLPClassifier, {"hidden_sizes": (64,), "batch_norm": False}),
        (MLPClassifier, {"hidden_sizes": (32, 16, 8), "dropout": 0.0}),
        (MLPClassifier, {"hidden_sizes": (), "num_classes": 3}),
        (CNNClassifier, {}),
        (CNNClassifier, {"channels": (8,), "hidden_size": 16, "batch_norm": False}),
        (CNNClassifier, {"channels": (4, 8, 16), "hidden_size": 32, "num_classes": 5}),
        (CNNClassifier, {"channels": (4, 8), "hidden_size": 16, "convs_per_stage": 2}),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_output_shape(cls, kwargs, training):
    model = cls(**{**MNIST, **kwargs}).train(training)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, kwargs.get("num_classes", 10))


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("input_shape", [(3, 32, 32), (1, 20, 36)])
@pytest.mark.parametrize("cls", [MLPClassifier, CNNClassifier])
def test_any_image_shape_and_class_count(cls, input_shape):
    model = cls(input_shape=input_shape, num_classes=4).train()
    assert model(torch.randn(3, *input_shape)).shape == (3, 4)
    assert model.eval()(torch.randn(2, *input_shape)).shape == (2, 4)
    assert model.example_input_array.shape == (1, *input_shape)


@pytest.mark.parametrize(("input_shape", "pooled"), [((3, 32, 32), 8 * 8), ((1, 20, 36), 5 * 9)])
def test_cnn_flatten_size_follows_the_image(input_shape, pooled):
    model = CNNClassifier(input_shape=input_shape, num_classes=4, channels=(4, 8), hidden_size=16, batch_norm=False)
    first_dense = next(m for m in model.net if isinstance(m, nn.Linear))
    assert first_dense.in_features == 8 * pooled  # two 2x2 pools: 32x32 -> 8x8, 20x36 -> 5x9
    conv = input_shape[0] * 4 * 9 + 4 + 4 * 8 * 9 + 8
    assert count(model) == conv + 8 * pooled * 16 + 16 + 16 * 4 + 4


def test_mlp_input_size_follows_the_image():
    model = MLPClassifier(input_shape=(3, 32, 32), num_classes=4, hidden_sizes=(8,), batch_norm=False)
    assert count(model) == 3 * 32 * 32 * 8 + 8 + 8 * 4 + 4


def test_cnn_refuses_more_pooling_than_the_image_allows():
    CNNClassifier(input_shape=(1, 8, 20), num_classes=4, channels=(2, 2, 2))  # 8 -> 4 -> 2 -> 1: fits
    with pytest.raises(UserError, match=r"3 pooling stages halve 6x20 images to nothing.*--model.channels"):
        CNNClassifier(input_shape=(1, 6, 20), num_classes=4, channels=(2, 2, 2))
    with pytest.raises(UserError, match="3 pooling stages halve 20x4 images"):
        CNNClassifier(input_shape=(3, 20, 4), num_classes=4, channels=(2, 2, 2))


@pytest.mark.parametrize("cls", [MLPClassifier, CNNClassifier])
def test_input_shape_and_num_classes_are_required(cls):
    with pytest.raises(TypeError, match="input_shape"):
        cls(num_classes=10)
    with pytest.raises(TypeError, match="num_classes"):
        cls(input_shape=(1, 28, 28))


def test_refuses_bad_input_shape_or_class_count():
    with pytest.raises(UserError, match=r"input_shape must be \(channels, height, width\), got \[28, 28\]"):
        MLPClassifier(input_shape=(28, 28), num_classes=10)
    with pytest.raises(UserError, match="input_shape must be"):
        MLPClassifier(input_shape=(0, 28, 28), num_classes=10)
    with pytest.raises(UserError, match="at least 2 classes, got num_classes 1"):
        MLPClassifier(input_shape=(1, 28, 28), num_classes=1)


def test_mlp_parameter_count():
    assert count(MLPClassifier(**MNIST, hidden_sizes=(32,), batch_norm=False)) == 784 * 32 + 32 + 32 * 10 + 10
    # with batch norm the linear layer has no bias; BatchNorm adds a weight and a bias per unit
    assert count(MLPClassifier(**MNIST, hidden_sizes=(32,), batch_norm=True)) == 784 * 32 + 2 * 32 + 32 * 10 + 10
    assert count(MLPClassifier(**MNIST)) == 784 * 512 + 2 * 512 + 512 * 256 + 2 * 256 + 256 * 10 + 10


def test_cnn_parameter_count():
    conv = 1 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64  # 3x3 kernels without bias, BatchNorm weight and bias
    dense = 64 * 7 * 7 * 128 + 128 + 128 * 10 + 10  # two 2x2 pools: 28 -> 7
    assert count(CNNClassifier(**MNIST)) == conv + dense
    small = CNNClassifier(**MNIST, channels=(4, 8, 16), hidden_size=32, batch_norm=False)
    conv = 1 * 4 * 9 + 4 + 4 * 8 * 9 + 8 + 8 * 16 * 9 + 16
    assert count(small) == conv + 16 * 3 * 3 * 32 + 32 + 32 * 10 + 10  # 28 -> 14 -> 7 -> 3


def test_cnn_convs_per_stage_stacks_convolutions_before_each_pool():
    vgg = CNNClassifier(**MNIST, channels=(4, 8), hidden_size=16, batch_norm=False, convs_per_stage=2)
    conv = (1 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 8 * 9 + 8) + (8 * 8 * 9 + 8)  # the second of a stage keeps width
    assert count(vgg) == conv + 8 * 7 * 7 * 16 + 16 + 16 * 10 + 10  # still one pool per stage: 28 -> 7
    kinds = [type(m).__name__ for m in vgg.net]
    assert kinds[:7] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU"]


def test_cnn_refuses_zero_convs_per_stage():
    with pytest.raises(UserError, match="convs_per_stage must be at least 1, got 0"):
        CNNClassifier(**MNIST, convs_per_stage=0)


def test_trainable_and_frozen_counts():
    model = MLPClassifier(**MNIST, hidden_sizes=(32,), batch_norm=False)
    model.net[1].requires_grad_(False)
    summary = ModelSummary(model)
    assert summary.total_parameters == 784 * 32 + 32 + 32 * 10 + 10
    assert summary.trainable_parameters == 32 * 10 + 10


def layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("cls", [MLPClassifier, CNNClassifier])
@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_named_inits_zero_biases(cls, init):
    torch.manual_seed(0)
    default = cls(**MNIST, init="default", batch_norm=False)
    torch.manual_seed(0)
    model = cls(**MNIST, init=init, batch_norm=False)
    for layer, reference in zip(layers(model), layers(default), strict=True):
        assert torch.count_nonzero(layer.bias) == 0
        assert torch.count_nonzero(reference.bias) > 0
        assert not torch.equal(layer.weight, reference.weight)


@pytest.mark.parametrize(
    ("init", "std"),
    [
        ("default", 1 / math.sqrt(3 * 784)),  # torch's uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
        ("xavier", math.sqrt(2 / (784 + 512))),
        ("kaiming", math.sqrt(2 / 784)),
    ],
)
def test_init_scale(init, std):
    torch.manual_seed(0)
    first = layers(MLPClassifier(**MNIST, init=init))[0]  # 784 -> 512: 400k weights, a precise estimate
    assert first.weight.std().item() == pytest.approx(std, rel=0.02)


def test_hparams_saved():
    mlp = MLPClassifier(
        input_shape=(1, 28, 28), num_classes=7, hidden_sizes=(64, 32), dropout=0.1, batch_norm=False, init="xavier"
    )
    assert mlp.hparams["hidden_sizes"] == (64, 32)
    assert mlp.hparams["dropout"] == 0.1
    assert mlp.hparams["batch_norm"] is False
    assert mlp.hparams["init"] == "xavier"
    assert mlp.hparams["num_classes"] == 7
    cnn = CNNClassifier(**MNIST, channels=(8, 16), hidden_size=24, scheduler_interval="step")
    assert cnn.hparams["channels"] == (8, 16)
    assert cnn.hparams["hidden_size"] == 24
    assert cnn.hparams["scheduler_interval"] == "step"


def test_predict_step_gives_probabilities():
    model = CNNClassifier(**MNIST, channels=(4,), hidden_size=8).eval()
    images, labels = torch.randn(5, 1, 28, 28), torch.arange(5)
    bare = model.predict_step(images, 0)
    assert bare.shape == (5, 10)
    assert (bare >= 0).all()
    torch.testing.assert_close(bare.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(model.predict_step((images, labels), 0), bare)
    torch.testing.assert_close(model.predict_step([images, labels], 0), bare)
    torch.testing.assert_close(bare, model(images).softmax(dim=1))


def test_configure_optimizers_without_scheduler():
    model = MLPClassifier(**MNIST, hidden_sizes=(8,), optimizer=functools.partial(torch.optim.SGD, lr=0.3))
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.3
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == count(model)


def test_default_optimizer_is_adam():
    optimizer = MLPClassifier(**MNIST, hidden_sizes=(8,)).configure_optimizers()
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.param_groups[0]["lr"] == 1e-3


class EpochMetrics(Callback):
    """The metrics each epoch logged (the model logs them in its own epoch-end hooks, after the callbacks')."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    def on_train_end(self, trainer, pl_module):
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_fit_learns_and_logs_metrics(mnist_dir):
    torch.manual_seed(0)
    model = MLPClassifier(**MNIST, hidden_sizes=(32,), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    dm = datamodule(mnist_dir)
    record = EpochMetrics()
    trainer = quick_trainer(max_epochs=4, limit_train_batches=4, limit_val_batches=2, callbacks=[record])
    trainer.fit(model, datamodule=dm)

    metrics = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= metrics.keys()
    losses = [epoch["train/loss"] for epoch in record.epochs]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    accuracies = [epoch["val/acc"] for epoch in record.epochs]
    assert [epoch["val/acc_best"] for epoch in record.epochs] == [max(accuracies[: i + 1]) for i in range(4)]

    # val/loss and val/acc are exact means over the validation batches seen (2 of 32), with the final weights
    model.eval()
    with torch.no_grad():
        batches = [batch for _, batch in zip(range(2), dm.val_dataloader(), strict=False)]
        logits = torch.cat([model(images) for images, _ in batches])
        labels = torch.cat([labels for _, labels in batches])
    assert metrics["val/loss"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert metrics["val/acc"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def make_optimizer(params):
    """A module-level function: a fresh process cannot import this test module to unpickle it."""
    return torch.optim.SGD(params, lr=0.05)


def save_python_checkpoint(path: Path) -> MLPClassifier:
    model = MLPClassifier(
        **MNIST,
        hidden_sizes=(16,),
        dropout=0.0,
        optimizer=make_optimizer,
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    trainer = quick_trainer()
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return model


def test_python_checkpoint_drops_callables(tmp_path):
    model = save_python_checkpoint(tmp_path / "model.ckpt")
    assert model.hparams["optimizer"] is make_optimizer  # the live model keeps them
    hparams = torch.load(tmp_path / "model.ckpt", weights_only=True)["hyper_parameters"]
    assert "optimizer" not in hparams
    assert "scheduler" not in hparams
    assert hparams["hidden_sizes"] == (16,)
    loaded = MLPClassifier.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)
    assert loaded.hparams["hidden_sizes"] == (16,)
    assert type(loaded.configure_optimizers()) is torch.optim.Adam  # the default replaces the dropped callable


LOAD_AND_PREDICT = """
import json, sys, torch
import proj.models
cls = getattr(proj.models, sys.argv[2])
model = cls.load_from_checkpoint(sys.argv[1], map_location="cpu", weights_only=True).eval()
torch.manual_seed(123)
with torch.no_grad():
    outputs = model(torch.randn(4, 1, 28, 28))
optimizer = model.configure_optimizers()
optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
print(json.dumps({"class": type(model).__name__, "outputs": outputs.tolist(),
                  "optimizer": type(optimizer).__name__, "lr": optimizer.param_groups[0]["lr"]}))
"""


def load_in_fresh_process(checkpoint: Path, class_name: str) -> dict:
    result = run_python("-c", LOAD_AND_PREDICT, str(checkpoint), class_name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def reference_outputs(model: ImageClassifier, state_dict: dict) -> torch.Tensor:
    model.load_state_dict(state_dict)
    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        return model(torch.randn(4, 1, 28, 28))


@pytest.mark.slow
def test_cli_checkpoint_loads_in_fresh_process(mnist_dir, tmp_path):
    run_fit(
        mnist_dir,
        tmp_path / "logs",
        "--config",
        str(MODEL_CONFIGS["cnn"]),
        "--model.init_args.channels",
        "[4, 8]",
        "--model.init_args.hidden_size",
        "16",
        "--model.optimizer",
        "Adam",
        "--model.optimizer.lr",
        "0.01",
        "--model.scheduler",
        "null",
        "--trainer.max_epochs",
        "1",
        "--test_after_fit",
        "false",
    )
    checkpoint = tmp_path / "logs" / "cnn" / "version_0" / "checkpoints" / "last.ckpt"
    loaded = load_in_fresh_process(checkpoint, "CNNClassifier")
    assert loaded["class"] == "CNNClassifier"
    assert (loaded["optimizer"], loaded["lr"]) == ("Adam", 0.01)  # the optimizer is restored from the config
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    expected = reference_outputs(CNNClassifier(**MNIST, channels=(4, 8), hidden_size=16), state)
    torch.testing.assert_close(torch.tensor(loaded["outputs"]), expected)


@pytest.mark.slow
def test_python_checkpoint_loads_in_fresh_process(tmp_path):
    model = save_python_checkpoint(tmp_path / "model.ckpt")
    loaded = load_in_fresh_process(tmp_path / "model.ckpt", "MLPClassifier")
    assert loaded["class"] == "MLPClassifier"
    assert loaded["optimizer"] == "Adam"
    expected = reference_outputs(model, model.state_dict())
    torch.testing.assert_close(torch.tensor(loaded["outputs"]), expected)


SMALL = {"input_shape": (3, 8, 12), "num_classes": 4}


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (MLPClassifier, {"hidden_sizes": (16,), "batch_norm": False}),  # biases: not penalised
        (MLPClassifier, {"hidden_sizes": (16, 8), "batch_norm": True}),  # BatchNorm scales: not penalised
        (CNNClassifier, {"channels": (4, 8), "hidden_size": 16, "batch_norm": True}),
        (CNNClassifier, {"channels": (4,), "hidden_size": 8, "batch_norm": False}),
    ],
)
def test_l1_adds_lambda_times_the_absolute_weights_to_the_training_loss(cls, kwargs):
    torch.manual_seed(0)
    plain = cls(**SMALL, **kwargs, dropout=0.0, l1=0.0)
    penalised = cls(**SMALL, **kwargs, dropout=0.0, l1=1e-3)
    penalised.load_state_dict(plain.state_dict())
    batch = (torch.randn(6, *SMALL["input_shape"]), torch.randint(0, 4, (6,)))
    loss = plain.training_step(batch, 0)
    torch.testing.assert_close(loss, F.cross_entropy(plain(batch[0]), batch[1]))  # l1 = 0 changes nothing
    weights = sum(layer.weight.abs().sum() for layer in layers(plain))  # Linear and Conv weights only
    assert 1e-3 * weights > 0.05  # a penalty far above the tolerance
    difference = penalised.training_step(batch, 0) - loss
    torch.testing.assert_close(difference, 1e-3 * weights, atol=1e-5, rtol=0)
    assert penalised.train_l1 is not None and penalised.train_l1.compute().item() == pytest.approx(difference.item())


def test_l1_penalty_has_gradients_on_weights_only():
    torch.manual_seed(0)
    model = MLPClassifier(**SMALL, hidden_sizes=(8,), batch_norm=True, l1=1.0)
    model.l1_norm().backward()
    for name, parameter in model.named_parameters():
        if parameter.ndim > 1:
            torch.testing.assert_close(parameter.grad, parameter.detach().sign(), msg=name)
        else:
            assert parameter.grad is None, name


def test_l1_zero_adds_nothing_to_log_or_compute():
    model = MLPClassifier(**SMALL, hidden_sizes=(8,))
    assert model.hparams["l1"] == 0.0
    assert model.train_l1 is None
    assert "train/l1" not in model.logged_metrics
    assert "train/l1" in MLPClassifier(**SMALL, hidden_sizes=(8,), l1=1e-5).logged_metrics


@pytest.mark.parametrize("l1", [-1e-5, float("nan")])
def test_l1_must_not_be_negative(l1):
    with pytest.raises(UserError, match=r"l1 must be >= 0, got .*--model\.l1"):
        MLPClassifier(**SMALL, l1=l1)


def test_fit_logs_the_l1_penalty_before_the_step():
    torch.manual_seed(0)
    model = MLPClassifier(**SMALL, hidden_sizes=(8,), l1=1e-4)
    start = sum(layer.weight.abs().sum().item() for layer in layers(model))
    images, labels = torch.randn(8, *SMALL["input_shape"]), torch.randint(0, 4, (8,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    trainer = quick_trainer(limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.callback_metrics["train/l1"].item() == pytest.approx(1e-4 * start, rel=1e-5)  # one step
    assert set(model.logged_metrics) <= trainer.callback_metrics.keys()


@pytest.mark.slow
def test_compile_flag_compiles_in_place_and_checkpoints_load_uncompiled(mnist_dir, tmp_path):
    """`--model.compile true` runs the network through torch.compile (nn.Module.compile: in place), so the
    checkpoint's tensors keep their names and load into a model built without the flag."""
    from torch._dynamo.utils import counters

    from proj.checkpoints import load_classifier

    counters.clear()
    run_fit(
        mnist_dir,
        tmp_path / "logs",
        "--model",
        "MLPClassifier",
        "--model.hidden_sizes",
        "[16]",
        "--model.compile",
        "true",
        "--trainer.max_epochs",
        "1",
        "--test_after_fit",
        "false",
    )
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the network: the flag compiled it
    path = tmp_path / "logs" / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["compile"] is True
    plain = MLPClassifier(hidden_sizes=(16,), **MNIST_SHAPE)
    assert set(saved["state_dict"]) == set(plain.state_dict())
    assert load_classifier(path).net[1].weight.shape == (16, 784)
