"""Freezing and fine-tuning a backbone with Lightning's pieces: `--model.freeze_backbone`, `--model.backbone_lr_scale`
and Lightning's BackboneFinetuning from `configs/finetune.yaml`, in tiny in-process fits of the CLI."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, StepLR

import proj.fit
from conftest import CONFIGS, MNIST_SHAPE, build_cli, datamodule, quick_trainer, tiny_run_args, user_error
from proj.cli import ProjCLI
from proj.errors import UserError
from proj.models import CNNClassifier, MLPClassifier

FINETUNE = str(CONFIGS / "finetune.yaml")
UNFREEZE_AT = 2  # configs/finetune.yaml's unfreeze_backbone_at_epoch
CHANNELS = (2, 2)  # parameter counts small enough for the model summary to print them exactly
TINY_CNN = ["--model", "CNNClassifier", "--model.channels", str(list(CHANNELS)), "--model.hidden_size", "8"]
CONV_WEIGHTS = 1 * 2 * 9 + 2 * 2 * 9  # 3x3 kernels without bias (batch norm brings its own)
BATCH_NORM = 2 * 2 + 2 * 2  # weight and bias of the two BatchNorm2d
HEAD = 2 * 7 * 7 * 8 + 8 + 8 * 10 + 10  # two pools: 28 -> 7
HEAD_FROM = 8  # net's first layer past the backbone (Flatten): two stages of conv, BatchNorm, ReLU, max-pool


class Record(Callback):
    """What each training epoch trained, seen at its first batch (after BackboneFinetuning and the scheduler had
    their say): per optimizer group its rate and size, each backbone parameter's requires_grad and each BatchNorm's
    mode; and the network's tensors as the fit started and ended."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, Any]] = {}
        self.tensors: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tensors.append({key: value.clone() for key, value in pl_module.net.state_dict().items()})

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.epochs[trainer.current_epoch] = {
                "groups": [(group["lr"], len(group["params"])) for group in trainer.optimizers[0].param_groups],
                "requires_grad": [parameter.requires_grad for parameter in pl_module.backbone.parameters()],
                "bn_training": [m.training for m in pl_module.backbone.modules() if isinstance(m, nn.BatchNorm2d)],
            }

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tensors.append({key: value.clone() for key, value in pl_module.net.state_dict().items()})


def fit(mnist_dir: Path, logs: Path, epochs: int, *flags: str) -> Record:
    """A tiny CNN fit through the CLI (in-process), recorded."""
    record = Record()
    args = tiny_run_args(mnist_dir, logs, *TINY_CNN, *flags, "--trainer.enable_progress_bar", "false")
    ProjCLI(args=["fit", *args, "--trainer.max_epochs", str(epochs)], extra_callbacks=[record])
    return record


def last(logs: Path) -> Path:
    return logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = (torch.load(path, weights_only=True)["state_dict"] for path in (a, b))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def summary_counts(out: str) -> dict[str, str]:
    """The model summary's parameter counts, as printed."""
    rows = [line.split(":") for line in out.splitlines() if line.strip().endswith(tuple("0123456789K"))]
    return {name.strip(): value.strip() for name, value, *_ in rows if "params" in name}


def test_finetune_config_stacks_with_the_others_keeping_their_callbacks(mnist_dir):
    configs = [CONFIGS / "cnn.yaml", CONFIGS / "early_stopping.yaml", FINETUNE, CONFIGS / "scheduler" / "step.yaml"]
    cli = build_cli(mnist_dir, *(word for config in configs for word in ("--config", str(config))))
    kinds = [type(callback).__name__ for callback in cli.trainer.callbacks]
    for name in ("RichModelSummary", "EarlyStopping", "BackboneFinetuning", "ResumableCheckpoint", "RNGState"):
        assert kinds.count(name) == 1, name
    (finetuning,) = (callback for callback in cli.trainer.callbacks if isinstance(callback, BackboneFinetuning))
    assert (finetuning.unfreeze_backbone_at_epoch, finetuning.backbone_initial_ratio_lr) == (UNFREEZE_AT, 0.1)


def test_the_cnn_backbone_is_its_convolution_stages_and_registers_nothing_twice():
    model = CNNClassifier(**MNIST_SHAPE, channels=CHANNELS, hidden_size=8)
    flatten = [type(layer) for layer in model.net].index(nn.Flatten)
    assert [id(m) for m in model.backbone] == [id(m) for m in list(model.net)[:flatten]]
    assert sum(p.numel() for p in model.backbone.parameters()) == CONV_WEIGHTS + BATCH_NORM
    assert sum(p.numel() for p in model.parameters()) == CONV_WEIGHTS + BATCH_NORM + HEAD
    assert all(key.startswith(("net.", "val_acc_best")) for key in model.state_dict())
    assert MLPClassifier(**MNIST_SHAPE).backbone is None


def test_freeze_backbone_trains_only_the_head_with_batch_norm_in_eval_mode(mnist_dir, tmp_path, capsys):
    record = fit(mnist_dir, tmp_path / "logs", 2, "--model.freeze_backbone", "true")
    start, end = record.tensors
    backbone = [key for key in start if int(key.split(".")[0]) < HEAD_FROM]
    assert len(backbone) == 2 * 6  # per stage: the conv weight; BatchNorm weight, bias and running statistics
    for key in start:  # the backbone's weights and BatchNorm statistics as they were; the head's trained
        assert torch.equal(start[key], end[key]) == (key in backbone), key
    for epoch in (0, 1):
        assert record.epochs[epoch]["groups"] == [(0.001, 4)]  # the head's weights and biases only
        assert record.epochs[epoch]["requires_grad"] == [False] * 6
        assert record.epochs[epoch]["bn_training"] == [False, False]
    counts = summary_counts(capsys.readouterr().out)
    assert counts["Trainable params"] == str(HEAD)
    assert counts["Non-trainable params"] == str(CONV_WEIGHTS + BATCH_NORM)


def test_freeze_backbone_resumes_frozen(mnist_dir, tmp_path):
    """The flag is a hyperparameter: the resumed run, not given it, takes it from the checkpoint."""
    fit(mnist_dir, tmp_path / "whole", 2, "--model.freeze_backbone", "true")
    fit(mnist_dir, tmp_path / "cut", 1, "--model.freeze_backbone", "true")
    resumed = fit(mnist_dir, tmp_path / "cut", 2, "--ckpt_path", str(last(tmp_path / "cut")))
    assert resumed.epochs[1]["groups"] == [(0.001, 4)]
    assert resumed.epochs[1]["requires_grad"] == [False] * 6
    assert resumed.epochs[1]["bn_training"] == [False, False]
    assert_same_weights(last(tmp_path / "whole"), last(tmp_path / "cut"))


def test_backbone_finetuning_from_the_config_resumed_before_and_after_the_unfreeze_equals_one_run(
    mnist_dir, tmp_path, capsys
):
    """Lightning's BackboneFinetuning: frozen (bar its BatchNorm, which Lightning leaves trainable) until epoch 2,
    then the backbone's own group at a tenth of the rate, doubled each epoch. A run cut after epoch 1 and again
    after epoch 2, each resumed from its run's config.yaml and last.ckpt, trains exactly as one uninterrupted run:
    Lightning alone would leave the unfrozen backbone frozen after the second resume (Lightning #21901)."""
    whole = fit(mnist_dir, tmp_path / "whole", 4, "--config", FINETUNE)
    counts = summary_counts(capsys.readouterr().out)
    assert counts["Non-trainable params"] == str(CONV_WEIGHTS)
    frozen = [False, True, True, False, True, True]  # conv, BatchNorm weight and bias, per stage
    assert [whole.epochs[epoch]["requires_grad"] for epoch in range(4)] == [frozen] * 2 + [[True] * 6] * 2
    assert [len(whole.epochs[epoch]["groups"]) for epoch in range(4)] == [1, 1, 2, 2]
    assert whole.epochs[2]["groups"][1] == (pytest.approx(0.0001), 2)  # the two conv weights
    assert whole.epochs[3]["groups"][1] == (pytest.approx(0.0002), 2)

    cut = tmp_path / "cut"
    epochs = fit(mnist_dir, cut, UNFREEZE_AT, "--config", FINETUNE).epochs
    for stop in (UNFREEZE_AT + 1, 4):  # resumed before the unfreeze epoch, then after it
        run = ["--config", str(cut / "mnist" / "version_0" / "config.yaml"), "--ckpt_path", str(last(cut))]
        epochs |= fit(mnist_dir, cut, stop, *run).epochs
    assert epochs == whole.epochs
    assert_same_weights(last(tmp_path / "whole"), last(cut))


def test_backbone_lr_scale_gives_the_backbone_its_own_group_which_schedulers_scale(mnist_dir):
    record = Record()
    scheduler = partial(StepLR, step_size=1, gamma=0.5)
    model = CNNClassifier(**MNIST_SHAPE, channels=CHANNELS, hidden_size=8, backbone_lr_scale=0.1, scheduler=scheduler)
    quick_trainer(max_epochs=3, limit_train_batches=1, callbacks=[record]).fit(model, datamodule(mnist_dir))
    rates = [lr for epoch in range(3) for lr, _ in record.epochs[epoch]["groups"]]
    assert rates == pytest.approx([1e-3, 1e-4, 5e-4, 5e-5, 2.5e-4, 2.5e-5])  # (head, backbone) per epoch
    optimizer = model.configure_optimizers()["optimizer"]
    head, backbone = ({id(p) for p in group["params"]} for group in optimizer.param_groups)
    assert backbone == {id(p) for p in model.backbone.parameters()}
    assert head == {id(p) for p in model.parameters()} - backbone


def test_backbone_lr_scale_holds_under_one_cycle():
    """OneCycleLR sets each group's rate from `max_lr`: one number would give the backbone the head's."""
    scheduler = partial(OneCycleLR, max_lr=0.1, total_steps=10)
    model = CNNClassifier(**MNIST_SHAPE, channels=CHANNELS, backbone_lr_scale=0.1, scheduler=scheduler)
    optimization = model.configure_optimizers()
    optimizer, scheduler = optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]
    for _ in range(3):
        head, backbone = (group["lr"] for group in optimizer.param_groups)
        assert backbone == pytest.approx(head * 0.1)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan"), float("inf")])
def test_backbone_lr_scale_must_be_positive(scale):
    with pytest.raises(UserError, match=f"backbone_lr_scale must be > 0, got {scale}: set --model.backbone_lr_scale"):
        CNNClassifier(**MNIST_SHAPE, backbone_lr_scale=scale)


def test_freeze_backbone_with_a_backbone_rate_is_refused():
    with pytest.raises(UserError, match=r"--model.backbone_lr_scale 0.1 sets the rate .* pass one of them"):
        CNNClassifier(**MNIST_SHAPE, freeze_backbone=True, backbone_lr_scale=0.1)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"freeze_backbone": True}, "unfreezes the backbone at epoch 10, and --model.freeze_backbone true keeps"),
        ({"backbone_lr_scale": 0.5}, "--model.backbone_lr_scale 0.5 sets another"),
    ],
)
def test_backbone_finetuning_with_a_setting_it_contradicts_is_refused(settings, words):
    model = CNNClassifier(**MNIST_SHAPE, **settings)
    model.check_finetuning([])  # fine alone
    with pytest.raises(UserError, match=words):
        model.check_finetuning([BackboneFinetuning()], model.configure_optimizers())


def test_backbone_finetuning_under_one_cycle_is_refused_before_the_run(mnist_dir, capsys):
    """OneCycleLR fails at the first step after BackboneFinetuning adds the backbone's group (KeyError 'max_lr')."""
    flags = ["--config", str(CONFIGS / "cnn.yaml"), "--config", FINETUNE, "--data.data_dir", str(mnist_dir)]
    err = user_error(capsys, proj.fit.main, *flags, "--data.download", "false", "--data.val_size", "100")
    assert "error: the BackboneFinetuning callback adds the backbone to the optimizer at epoch 2, and OneCycleLR" in err
    assert "--config configs/scheduler/step.yaml" in err
    assert not Path("logs").exists()
