"""TimmClassifier: any timm architecture by name, the small-input stem, weights from the hub cache or a file (every
tensor checked), and the normalisation the weights expect, set by the CLI, refused otherwise, kept by checkpoints.

Tiny networks: timm's own test_resnet (373 K parameters here) and test_efficientnet (101 K); the stems of the
architectures the recipes use (resnet18, resnet10t, regnetx_002, mobilenetv3_small_050) are built, not trained."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
from lightning.pytorch.callbacks import BackboneFinetuning
from lightning.pytorch.utilities.model_summary import ModelSummary
from PIL import Image
from safetensors.torch import save_file
from timm.models import adapt_input_conv
from torch import nn

import proj.cli
import proj.export
import proj.fit
from conftest import datamodule, info_lines, quick_trainer, tiny_run_args
from proj.checkpoints import load_classifier
from proj.cli import ProjCLI
from proj.data import MNISTDataModule
from proj.data.base import IMAGENET_MEAN, IMAGENET_STD, WeightsNormalization
from proj.data.synthetic import write_synthetic_cifar10
from proj.errors import UserError
from proj.models import TimmClassifier
from proj.predict import predict_files
from proj.serve import ImageAPI, checkpoint_model
from test_predict_generic import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

MNIST_SHAPE: dict[str, Any] = {"input_shape": [1, 28, 28], "num_classes": 10}
HUB_IDS = {"test_resnet": "timm/test_resnet.r160_in1k", "test_efficientnet": "timm/test_efficientnet.r160_in1k"}
GRAY_IMAGENET = (sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3)  # ImageNet's statistics averaged for grayscale


def imagenet_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of `arch` as trained on ImageNet would have them (3 channels, 1000 classes), at random."""
    torch.manual_seed(seed)
    return timm.create_model(arch).state_dict()


def cache_pretrained(arch: str) -> dict[str, torch.Tensor]:
    """`arch`'s pretrained weights put into the (test's own) Hugging Face hub cache, in the hub's layout: what
    `hf download` leaves there. The tensors written."""
    state = imagenet_state(arch, seed=1)
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{HUB_IDS[arch].replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, repo / "snapshots" / commit / "model.safetensors")
    return state


def message(error: pytest.ExceptionInfo[UserError]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# The small-input stem.

STEMS = {  # arch: (what the stem changes, the last stage's side for 28x28 images: with it, with ImageNet's)
    "resnet18": ("conv1 3x3 stride 1, was 7x7 stride 2, maxpool removed", 4, 1),
    "resnet10t": ("conv1.0 stride 1, was 2, maxpool removed", 4, 1),
    "regnetx_002": ("stem.conv stride 1, was 2", 2, 1),
    "mobilenetv3_small_050": ("conv_stem stride 1, was 2", 2, 1),
}


@pytest.mark.parametrize("arch", STEMS)
def test_small_input_stem_keeps_the_resolution_of_small_images(arch, lightning_info):
    changes, small_side, imagenet_side = STEMS[arch]
    images = torch.randn(2, 1, 28, 28)
    model = TimmClassifier(arch=arch, **MNIST_SHAPE).eval()
    features = model.net.forward_features(images)
    assert features.shape[-2:] == (small_side, small_side) and small_side > 1
    assert model(images).shape == (2, 10)
    assert f"with the small-input stem ({changes};" in info_lines(lightning_info)[-1]
    assert "final feature map" in info_lines(lightning_info)[-1]
    imagenet = TimmClassifier(arch=arch, small_input=False, **MNIST_SHAPE).eval()
    assert imagenet.net.forward_features(images).shape[-2:] == (imagenet_side, imagenet_side)  # what the stem avoids
    assert "with its ImageNet stem" in info_lines(lightning_info)[-1]


def test_stem_follows_the_image_size_unless_chosen():
    def side(**options: Any) -> int:
        model = TimmClassifier(arch="test_resnet", num_classes=10, **options).eval()
        shape = options["input_shape"]
        return int(model.net.forward_features(torch.zeros(1, *shape)).shape[-1])

    assert side(input_shape=[3, 64, 64]) == 8  # small: stride 8 in all
    assert side(input_shape=[3, 96, 96]) == 3  # large: ImageNet's stride 32
    assert side(input_shape=[3, 96, 96], small_input=True) == 12


def test_a_patch_embedding_has_no_small_input_stem(lightning_info):
    model = TimmClassifier(arch="test_vit", input_shape=[3, 32, 32], num_classes=10)  # img_size follows the data
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert "with its ImageNet stem" in info_lines(lightning_info)[-1]
    with pytest.raises(UserError) as error:
        TimmClassifier(arch="test_vit", input_shape=[3, 32, 32], num_classes=10, small_input=True)
    assert "--model.small_input true: test_vit has no convolution stem" in message(error)
    with pytest.raises(UserError) as error:  # 16-pixel patches: sides of 28 do not divide
        TimmClassifier(arch="test_vit", **MNIST_SHAPE)
    assert "--model.arch test_vit does not take 1x28x28 images" in message(error)


def test_unknown_arch_lists_close_names():
    with pytest.raises(UserError) as error:
        TimmClassifier(arch="resnet19", **MNIST_SHAPE)
    text = message(error)
    assert "--model.arch 'resnet19': timm has no such architecture; close names: resnet18" in text
    assert "timm.list_models('resnet*') lists the" in text


def test_summary_shows_layer_shapes_and_flops():
    summary = ModelSummary(TimmClassifier(arch="test_resnet", **MNIST_SHAPE), max_depth=2)  # what a fit prints
    layers = dict(
        zip(
            summary.layer_names, zip(summary.layer_types, summary.in_sizes, summary.out_sizes, strict=True), strict=True
        )
    )
    assert layers["net.conv1"][1:] == ([1, 1, 28, 28], [1, 32, 28, 28])  # the stride-1 stem keeps 28x28
    assert layers["net.maxpool"] == ("Identity", [1, 32, 28, 28], [1, 32, 28, 28])
    assert layers["net.fc"][1:] == ([1, 96], [1, 10])
    assert summary.total_flops > 10**7


# Weights from a file.


def write_weights(path: Path, state: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, path)
    elif path.name.endswith(".tar"):  # timm's and torchvision's training scripts save {"model": ..., "epoch": ...}
        torch.save({"model": state, "epoch": 90}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["weights.pth", "weights.safetensors", "checkpoint.pth.tar"])
def test_weights_file_loads_with_head_and_first_conv_adapted(tmp_path, name, lightning_info):
    state = imagenet_state("test_resnet")
    path = write_weights(tmp_path / name, state)
    model = TimmClassifier(arch="test_resnet", weights=str(path), channels_last=False, **MNIST_SHAPE)
    loaded = model.net.state_dict()
    for key, tensor in loaded.items():
        if key == "conv1.0.weight":  # timm's adaptation to 1 channel: the 3 colour channels' weights summed
            torch.testing.assert_close(tensor, adapt_input_conv(1, state[key]))
        elif key.startswith("fc."):  # 10 classes here, 1000 in the file: a fresh head
            assert tensor.shape[0] == 10
        else:
            assert torch.equal(tensor, state[key]), key
    line = info_lines(lightning_info)[-1]
    assert f"loaded {len(loaded) - 2} tensors from the weights in '{path}'" in line
    assert "conv1.0 adapted from 3 input channels to 1" in line and "fc re-initialised (10 classes here, 1000" in line


def write_net_checkpoint(path: Path, model: TimmClassifier) -> None:
    """A proj checkpoint holding only the model's network, as `--model.weights` reads one."""
    torch.save({"state_dict": {f"net.{key}": value for key, value in model.net.state_dict().items()}}, path)


def test_reset_head_starts_a_fitting_head_afresh(tmp_path, lightning_info):
    """A proj checkpoint of another task with as many classes: its head fits and is kept, unless --model.reset_head."""
    torch.manual_seed(0)
    trained = TimmClassifier(arch="test_resnet", **MNIST_SHAPE)
    path = tmp_path / "other_task.ckpt"
    write_net_checkpoint(path, trained)
    kept = TimmClassifier(arch="test_resnet", weights=str(path), **MNIST_SHAPE)
    assert torch.equal(kept.net.fc.weight, trained.net.fc.weight)
    reset = TimmClassifier(arch="test_resnet", weights=str(path), reset_head=True, **MNIST_SHAPE)
    assert not torch.equal(reset.net.fc.weight, trained.net.fc.weight)
    assert torch.equal(reset.net.conv1[0].weight, trained.net.conv1[0].weight)  # every other tensor loaded
    line = info_lines(lightning_info)[-1]
    assert f"loaded {len(trained.net.state_dict()) - 2} tensors" in line
    assert "fc re-initialised (--model.reset_head true)" in line
    with pytest.raises(UserError) as error:
        TimmClassifier(arch="test_resnet", reset_head=True, **MNIST_SHAPE)
    assert "--model.reset_head true starts the head of loaded weights afresh, and none are loaded" in message(error)


def test_weights_of_the_small_input_stem_load_into_it(tmp_path):
    """A proj checkpoint of a resnet18 with the small-input stem (3x3 conv1) restarts another; ImageNet's 7x7 conv1
    does not fit that stem and is left, said so."""
    torch.manual_seed(0)
    trained = TimmClassifier(arch="resnet18", **MNIST_SHAPE)
    path = tmp_path / "small.ckpt"
    write_net_checkpoint(path, trained)
    model = TimmClassifier(arch="resnet18", weights=str(path), **MNIST_SHAPE)
    assert torch.equal(model.net.conv1.weight, trained.net.conv1.weight)
    imagenet = write_weights(tmp_path / "imagenet.pth", imagenet_state("resnet18"))
    model = TimmClassifier(arch="resnet18", weights=str(imagenet), **MNIST_SHAPE)
    assert model.net.conv1.weight.shape == (64, 1, 3, 3)
    assert torch.equal(model.net.layer1[0].conv1.weight, torch.load(imagenet)["layer1.0.conv1.weight"])


def damaged(tmp_path: Path, kind: str) -> Path:
    path = write_weights(tmp_path / "weights.pth", imagenet_state("test_resnet"))
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "no tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "other architecture":
        write_weights(path, imagenet_state("test_efficientnet"))
    elif kind == "other width":
        state = imagenet_state("test_resnet")
        state["layer2.0.conv1.weight"] = torch.zeros(8, 32, 3, 3)
        write_weights(path, state)
    elif kind == "extra tensor":
        write_weights(path, {**imagenet_state("test_resnet"), "fc2.weight": torch.zeros(3, 3)})
    elif kind == "missing":
        path.unlink()
    return path


BAD_WEIGHTS = {
    "missing": ["--model.weights", "weights.pth' does not exist", ".safetensors"],
    "truncated": ["--model.weights", "weights.pth' cannot be read (truncated, or not a weights file"],
    "no tensors": ["weights.pth' holds no state dict"],
    "other architecture": [
        "do not fit test_resnet: its conv1.0.weight (16, 1, 3, 3) is not in the file",
        "--model.arch",
    ],
    "other width": ["layer2.0.conv1.weight is (8, 32, 3, 3) in the file and (48, 32, 3, 3) here", "--model.arch"],
    "extra tensor": ["the file's fc2.weight (3, 3) has no place in it", "--model.arch"],
}


@pytest.mark.parametrize("kind", BAD_WEIGHTS)
def test_weights_that_do_not_fit_are_one_line_naming_the_first_tensor(tmp_path, kind):
    path = damaged(tmp_path, kind)
    with pytest.raises(UserError) as error:
        TimmClassifier(arch="test_resnet", weights=str(path), **MNIST_SHAPE)
    for words in BAD_WEIGHTS[kind]:
        assert words in message(error), (words, message(error))


def test_pretrained_and_weights_together_are_refused(tmp_path):
    with pytest.raises(UserError, match="both choose the initial weights: pass one of them"):
        TimmClassifier(arch="test_resnet", pretrained=True, weights="x.pth", **MNIST_SHAPE)


# Pretrained weights from the hub.


def test_pretrained_weights_load_from_the_hub_cache_offline(monkeypatch):
    state = cache_pretrained("test_efficientnet")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # any request would now raise
    model = TimmClassifier(arch="test_efficientnet", pretrained=True, channels_last=False, **MNIST_SHAPE)
    loaded = model.net.state_dict()
    assert all(
        torch.equal(loaded[key], state[key]) for key in loaded if not key.startswith(("conv_stem", "classifier"))
    )
    assert model.input_normalization == WeightsNormalization(
        IMAGENET_MEAN, IMAGENET_STD, "test_efficientnet's pretrained weights (timm/test_efficientnet.r160_in1k)"
    )


def test_pretrained_weights_without_a_network_fail_at_once():
    """The hub is unreachable (conftest): one request, no retries (huggingface_hub's own download retries for ~30 s
    before it gives up); the message names the file, the cache and both ways on."""
    start = time.monotonic()
    with pytest.raises(UserError) as error:
        TimmClassifier(arch="test_resnet", pretrained=True, **MNIST_SHAPE)
    assert time.monotonic() - start < 5
    text = message(error)
    assert "(model.safetensors of timm/test_resnet.r160_in1k on the Hugging Face hub)" in text
    assert f"not in the hub cache {huggingface_hub.constants.HF_HUB_CACHE}" in text
    assert "hf download timm/test_resnet.r160_in1k model.safetensors" in text and "--model.weights FILE" in text


def test_url_only_weights_come_from_torchs_hub_cache():
    """A few architectures have their weights at a URL only (no hub repository): torch's hub cache, else a download,
    which fails at once offline (conftest: TORCH_HOME is the test's own)."""
    with pytest.raises(UserError) as error:
        TimmClassifier(arch="legacy_seresnet18", pretrained=True, **MNIST_SHAPE)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    assert "legacy_seresnet18's weights (https://github.com/" in message(error)
    assert f"are not in torch's hub cache {cache} and cannot be downloaded" in message(error)
    state = imagenet_state("legacy_seresnet18")
    torch.save(state, cache / "seresnet18-4bb0ce65.pth")
    model = TimmClassifier(arch="legacy_seresnet18", pretrained=True, channels_last=False, **MNIST_SHAPE)
    assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


# Normalisation.


def test_imagenet_statistics_are_timms():
    assert (IMAGENET_MEAN, IMAGENET_STD) == (timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)


def test_data_normalization_choices(tmp_path):
    assert MNISTDataModule(normalization="imagenet").mean == pytest.approx((GRAY_IMAGENET[0],))
    assert MNISTDataModule(normalization="imagenet").std == pytest.approx((GRAY_IMAGENET[1],))
    assert MNISTDataModule(normalization="data").mean == (0.1307,) == MNISTDataModule().mean
    assert MNISTDataModule(normalization={"mean": [0.5], "std": [0.25]}).std == (0.25,)
    with pytest.raises(UserError, match=r"--data\.normalization 'imagenet21k': use 'data'"):
        MNISTDataModule(normalization="imagenet21k")
    with pytest.raises(UserError, match="every std must be > 0"):
        MNISTDataModule(normalization={"mean": [0.5], "std": [0.0]})
    with pytest.raises(UserError, match="2 values per statistic, for 1-channel images: give 1 value"):
        MNISTDataModule(normalization={"mean": [0.5, 0.5], "std": [0.2, 0.2]}).mean  # noqa: B018


def fit_flags(mnist_dir: Path, logs: Path, *extra: str) -> list[str]:
    return [
        *tiny_run_args(mnist_dir, logs, "--model", "TimmClassifier", *extra),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--test_after_fit",
        "false",
    ]


def test_cli_normalises_the_data_as_the_weights_expect(mnist_dir, tmp_path, lightning_info):
    cache_pretrained("test_efficientnet")
    flags = fit_flags(mnist_dir, tmp_path / "logs", "--model.arch", "test_efficientnet", "--model.pretrained", "true")
    cli = ProjCLI(args=flags, run=False)
    assert cli.datamodule.mean == pytest.approx((GRAY_IMAGENET[0],))  # averaged for grayscale images
    assert cli.datamodule.std == pytest.approx((GRAY_IMAGENET[1],))
    assert cli.config.data.init_args.normalization == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    said = [line for line in info_lines(lightning_info) if line.startswith("Normalising the data as")]
    assert said == [
        "Normalising the data as test_efficientnet's pretrained weights (timm/test_efficientnet.r160_in1k) expect: "
        f"--data.normalization {{mean: {list(IMAGENET_MEAN)}, std: {list(IMAGENET_STD)}}} (averaged for grayscale "
        "images), not the data's own statistics."
    ]
    scratch = ProjCLI(args=fit_flags(mnist_dir, tmp_path / "logs", "--model.arch", "test_resnet"), run=False)
    assert scratch.datamodule.mean == (0.1307,)  # from scratch: the data's own


def test_cli_refuses_data_normalised_otherwise_than_the_weights(mnist_dir, tmp_path, capsys):
    cache_pretrained("test_efficientnet")
    flags = fit_flags(mnist_dir, tmp_path / "logs", "--model.arch", "test_efficientnet", "--model.pretrained", "true")
    with pytest.raises(SystemExit) as exit_info:
        proj.cli.main(["fit", *flags, "--data.normalization", "data"])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert line == (
        "error: test_efficientnet's pretrained weights (timm/test_efficientnet.r160_in1k) expect inputs normalised "
        "with mean [0.449] and std [0.226], but MNISTDataModule normalises with its own statistics, mean [0.1307] and "
        "std [0.3081]: set the data's normalization to {mean: [0.449], std: [0.226]} (--data.normalization; proj.fit "
        "sets it when the flag is left out)."
    )
    assert not (tmp_path / "logs").exists()


def proj_checkpoint(tmp_path: Path, mean: list[float], std: list[float]) -> Path:
    """A proj checkpoint of test_resnet trained on data normalised with `mean` and `std`."""
    model = TimmClassifier(arch="test_resnet", **MNIST_SHAPE)
    state = {f"net.{key}": value for key, value in model.net.state_dict().items()}
    description = {"class_path": "proj.data.FashionMNISTDataModule", "mean": mean, "std": std}
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"arch": "test_resnet"}, "data": description}, path)
    return path


def test_model_built_by_hand_refuses_data_normalised_otherwise(mnist_dir, tmp_path):
    path = proj_checkpoint(tmp_path, [0.286], [0.353])
    model = TimmClassifier(arch="test_resnet", weights=str(path), **MNIST_SHAPE)
    assert model.input_normalization is not None and model.input_normalization.mean == (0.286,)
    with pytest.raises(UserError) as error:
        quick_trainer(max_steps=1).fit(model, datamodule=datamodule(mnist_dir))
    assert "the weights in" in message(error) and "(trained on FashionMNISTDataModule data) expect" in message(error)
    assert "mean [0.286] and std [0.353], but MNISTDataModule normalises with its own statistics" in message(error)
    matching = datamodule(mnist_dir, normalization={"mean": [0.286], "std": [0.353]})
    quick_trainer(max_steps=1).fit(model, datamodule=matching)
    assert model.global_step == 1


def test_assumed_statistics_give_way_to_an_explicit_choice(mnist_dir, tmp_path):
    """A plain state dict does not record its normalisation: timm's for the arch are assumed (proj.fit sets them),
    and a model built by hand is refused the default, not a normalisation chosen explicitly."""
    path = write_weights(tmp_path / "weights.pth", imagenet_state("test_resnet"))
    model = TimmClassifier(arch="test_resnet", weights=str(path), **MNIST_SHAPE)
    assert model.input_normalization is not None and model.input_normalization.assumed
    with pytest.raises(UserError, match="timm's statistics for test_resnet, assumed"):
        quick_trainer(max_steps=1).fit(model, datamodule=datamodule(mnist_dir))
    quick_trainer(max_steps=1).fit(model, datamodule=datamodule(mnist_dir, normalization="data"))
    assert model.global_step == 1


# Checkpoints, the tools, fine-tuning's contract.


def test_checkpoint_loads_without_its_initial_weights(mnist_dir, tmp_path):
    """Built from a checkpoint (proj.predict, export, serve, --ckpt_path), the model takes the checkpoint's weights:
    the file it started from may be gone, the hub unreachable."""
    path = write_weights(tmp_path / "weights.pth", imagenet_state("test_resnet"))
    model = TimmClassifier(arch="test_resnet", weights=str(path), **MNIST_SHAPE)
    trainer = quick_trainer(max_steps=1)
    trainer.fit(model, datamodule=datamodule(mnist_dir, normalization="data"))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    path.unlink()
    loaded = TimmClassifier.load_from_checkpoint(tmp_path / "model.ckpt")
    assert loaded.hparams["weights"] == str(path)
    for key, tensor in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], tensor), key


def test_backbone_is_every_parameter_but_the_head():
    for arch, shape in (("test_resnet", [1, 28, 28]), ("test_vit", [3, 32, 32])):  # a ViT holds cls_token itself
        model = TimmClassifier(arch=arch, input_shape=shape, num_classes=10)
        keys = set(model.state_dict())
        backbone = {id(parameter) for parameter in model.backbone.parameters()}
        head = {id(parameter) for parameter in model.head.parameters()}
        assert head and not backbone & head
        assert backbone | head == {id(parameter) for parameter in model.parameters()}
        assert model.head is model.net.get_classifier()
        assert set(model.state_dict()) == keys  # nothing registered twice


def test_backbone_finetuning_freezes_then_unfreezes_the_backbone(mnist_dir):
    frozen = []

    class Watch(BackboneFinetuning):
        def on_train_epoch_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            super().on_train_epoch_start(trainer, pl_module)
            convolutions = [module for module in pl_module.backbone.modules() if isinstance(module, nn.Conv2d)]
            frozen.append(not any(module.weight.requires_grad for module in convolutions))  # (BatchNorm trains)

    model = TimmClassifier(arch="test_resnet", **MNIST_SHAPE)
    watch = Watch(unfreeze_backbone_at_epoch=1)
    quick_trainer(max_epochs=2, limit_train_batches=1, callbacks=[watch]).fit(model, datamodule=datamodule(mnist_dir))
    assert frozen == [True, False]
    assert all(parameter.requires_grad for parameter in model.head.parameters())


@pytest.mark.slow  # a CLI fit and test, then predict and the serving API on its checkpoint (~8 s)
def test_imagenet_normalised_checkpoint_predicts_and_serves_as_in_memory(mnist_dir, tmp_path):
    cache_pretrained("test_efficientnet")
    logs = tmp_path / "logs"
    flags = fit_flags(mnist_dir, logs, "--model.arch", "test_efficientnet", "--model.pretrained", "true")
    cli = ProjCLI(
        args=["fit", *flags, "--model.l1", "1e-5", "--model.scheduler", "StepLR", "--model.scheduler.step_size", "1"]
    )
    checkpoint = logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["data"]["mean"] == pytest.approx([GRAY_IMAGENET[0]])

    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    normalised = (torch.from_numpy(pixels).float() / 255 - GRAY_IMAGENET[0]) / GRAY_IMAGENET[1]
    with torch.inference_mode():
        expected = cli.model.eval()(normalised[None, None]).softmax(dim=1)[0]

    for cached in Path(huggingface_hub.constants.HF_HUB_CACHE).rglob("model.safetensors"):
        cached.unlink()  # the checkpoint brings the weights: the pretrained ones are no longer needed
    config = checkpoint.parents[1] / "config.yaml"
    tested = ProjCLI(args=["test", "--config", str(config), "--ckpt_path", str(checkpoint)])
    assert tested.trainer.callback_metrics["test/loss"] > 0 and tested.datamodule.mean == pytest.approx(
        (GRAY_IMAGENET[0],)
    )  # as trained, from the run's config

    (row,) = predict_files(load_classifier(checkpoint), [tmp_path / "digit.png"], device="cpu", preprocess="none")
    torch.testing.assert_close(torch.tensor([row[f"p{digit}"] for digit in range(10)]), expected, atol=1e-5, rtol=0)

    api = ImageAPI(checkpoint_model(str(checkpoint)))  # proj.serve's inference, without its server
    api.setup("cpu")
    request = api.decode_request({"image": base64.b64encode((tmp_path / "digit.png").read_bytes()).decode()})
    assert request.refused is None
    served = api.predict(request)
    (row,) = predict_files(load_classifier(checkpoint), [tmp_path / "digit.png"], device="cpu")  # as digits, both
    probabilities = served.answers[0]["probabilities"]
    torch.testing.assert_close(
        torch.tensor(list(probabilities.values())), torch.tensor([row[f"p{d}"] for d in range(10)])
    )


@pytest.mark.slow  # the ONNX export takes seconds
def test_onnx_export_answers_as_the_checkpoint(tmp_path):
    model = TimmClassifier(arch="test_resnet", **MNIST_SHAPE)
    description = MNISTDataModule(normalization="imagenet").description()  # what a fit on it records
    checkpoint = save_checkpoint(model, tmp_path / "model.ckpt", description)
    onnx_file = tmp_path / "model.onnx"
    proj.export.main(["--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(onnx_file)])
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.inference_mode():
        expected = load_classifier(checkpoint)(images)
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)
    properties = {prop.key: prop.value for prop in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(properties["proj.mean"]) == pytest.approx([GRAY_IMAGENET[0]])  # how to prepare its inputs


# The CPU recipe, configs/timm_small.yaml.

TIMM_SMALL = str(Path(__file__).resolve().parents[1] / "configs" / "timm_small.yaml")
RECIPE_DATA = {
    "fashion": ([], "FashionMNISTDataModule", (1, 28, 28)),
    "cifar": (["--data", "CIFAR10DataModule"], "CIFAR10DataModule", (3, 32, 32)),
}


@pytest.mark.parametrize("data", RECIPE_DATA)
def test_timm_small_builds_through_the_cli(tmp_path, data):
    """The recipe with proj.gpu_check's flags: its network with the small-input stem, for Fashion-MNIST's 1x28x28
    images or, with --data CIFAR10DataModule, CIFAR-10's 3x32x32."""
    flags, data_class, shape = RECIPE_DATA[data]
    cli = ProjCLI(
        args=["--config", TIMM_SMALL, *flags, "--data.data_dir", str(tmp_path), "--trainer.accelerator", "cpu"],
        run=False,
    )
    assert type(cli.datamodule).__name__ == data_class
    assert isinstance(cli.model, TimmClassifier) and cli.model.hparams["arch"] == "mobilenetv3_small_050"
    assert cli.model.hparams["input_shape"] == list(shape) and cli.model.hparams["num_classes"] == 10
    assert cli.model.net.conv_stem.stride == (1, 1)  # the small-input stem
    assert cli.model.eval()(torch.zeros(2, *shape)).shape == (2, 10)


@pytest.mark.slow
def test_timm_small_trains_on_cifar_format_files(tmp_path):
    data = write_synthetic_cifar10(tmp_path / "data", num_train=200, num_test=20)
    proj.fit.main(
        [
            *("--config", TIMM_SMALL, "--data", "CIFAR10DataModule", "--data.data_dir", str(data)),
            *("--data.val_size", "40", "--data.num_workers", "0", "--trainer.max_epochs", "1"),
            *("--trainer.limit_train_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")),
        ]
    )
    (best,) = (tmp_path / "logs" / "timm_small" / "version_0" / "checkpoints").glob("epoch00-*.ckpt")
    assert load_classifier(best).hparams["input_shape"] == [3, 32, 32]
