"""The README's "When something is wrong" catalogue: every bad input exits 2 with one line naming the value and the
fix, no traceback, and leaves the existing run's logs and checkpoints as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch

import proj.cli
import proj.fit
from conftest import CONFIGS, MNIST_SHAPE, NUM_TRAIN, VAL_SIZE, run_fit
from proj.data.synthetic import write_image_folder, write_synthetic_cifar10, write_synthetic_mnist
from proj.models import TimmClassifier


@pytest.fixture(scope="module")
def existing_run(mnist_dir, tmp_path_factory) -> Path:
    """logs/ holding finished runs (checkpoints, config, events) that no bad command may touch: an MLP on MNIST,
    and one on the 3x32x32 colour images of images/ beside logs/ (logs/imagefolder)."""
    logs = tmp_path_factory.mktemp("existing") / "logs"
    run_fit(mnist_dir, logs, "--model", "MLPClassifier")
    images = write_image_folder(logs.parent / "images", per_class=6)
    flags = ["--data", "ImageFolderDataModule", "--data.root", str(images), "--data.val_size", "0.2"]
    flags += ["--data.batch_size", "8", "--data.num_workers", "0", "--model", "MLPClassifier"]
    flags += ["--model.hidden_sizes", "[16]", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    flags += ["--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(logs)]
    proj.fit.main([*flags, "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"])
    return logs


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*")}


def mlp_checkpoint(logs: Path) -> Path:
    return logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"


def damaged_data(tmp_path: Path, damage: str) -> Path:
    data = write_synthetic_mnist(tmp_path / "data", num_train=60, num_test=20)
    images = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "magic":
        images.write_bytes(b"\x00\x00\x08\x01" + images.read_bytes()[4:])
    return data


def corrupt_checkpoint(tmp_path: Path, logs: Path) -> Path:
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(mlp_checkpoint(logs).read_bytes()[:2000])
    return bad


def bare_checkpoint(tmp_path: Path, logs: Path) -> Path:
    """The MLP run's checkpoint without its hyperparameters: nothing says which model it needs."""
    checkpoint = torch.load(mlp_checkpoint(logs), weights_only=True)
    del checkpoint["hyper_parameters"]
    torch.save(checkpoint, tmp_path / "bare.ckpt")
    return tmp_path / "bare.ckpt"


def image_folder(tmp_path: Path, problem: str) -> list[str]:
    """Flags choosing a folder of images (3 classes of 3 colour images) with the `problem`."""
    root = tmp_path / "images"
    if problem == "empty":
        root.mkdir()
    elif problem == "classes without train/":  # root/<class>/ rather than root/train/<class>/
        write_image_folder(tmp_path / "staging", per_class=3)
        (tmp_path / "staging" / "train").rename(root)
    elif problem == "no class folders":
        (root / "train").mkdir(parents=True)
    elif problem == "one class":
        write_image_folder(root, classes=("owl",), per_class=3)
    else:
        write_image_folder(root, per_class=3)
    if problem == "no images":
        for image in (root / "train" / "owl").iterdir():
            image.unlink()
        (root / "train" / "owl" / "notes.txt").write_text("owls to come")
    elif problem == "corrupt image":
        (root / "train" / "dog" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a PNG")
    return ["--data", "ImageFolderDataModule", "--data.root", str(root), "--data.val_size", "0.2"]


def cifar(tmp_path: Path, problem: str) -> list[str]:
    """Flags choosing CIFAR-10 files with the `problem` (download off)."""
    data_dir = tmp_path / "cifar"
    if problem == "truncated":
        batch = write_synthetic_cifar10(data_dir, num_train=50, num_test=10) / "cifar-10-batches-py" / "data_batch_3"
        batch.write_bytes(batch.read_bytes()[:2000])
    flags = ["--data", "CIFAR10DataModule", "--data.data_dir", str(data_dir), "--data.download", "false"]
    return [*flags, "--data.val_size", "10"]


def folder_checkpoint_of_other_size(tmp_path: Path, logs: Path) -> list[str]:
    """The colour-image run's checkpoint (3x32x32) with the same folder read at 16x16. A copy away from its run,
    whose config.yaml would otherwise be read first (resuming from a checkpoint alone)."""
    checkpoint = tmp_path / "last.ckpt"
    shutil.copy(logs / "imagefolder" / "version_0" / "checkpoints" / "last.ckpt", checkpoint)
    flags = ["--data", "ImageFolderDataModule", "--data.root", str(logs.parent / "images"), "--data.val_size", "0.2"]
    return [*flags, "--data.image_size", "16", "--ckpt_path", str(checkpoint)]


def foreign_checkpoint(tmp_path: Path, logs: Path) -> list[str]:
    """The MLP run's checkpoint, claiming to be written by a class of another package."""
    checkpoint = torch.load(mlp_checkpoint(logs), weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "evil_pkg.models.Net"
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    return ["--ckpt_path", str(tmp_path / "foreign.ckpt")]


def unknown_key_config(tmp_path: Path, logs: Path) -> Path:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  class_path: proj.models.MLPClassifier\n  init_args:\n    hiden_sizes: [32]\n")
    return config


def deleted_mlflow_experiment(tmp_path: Path, logs: Path) -> list[str]:
    """An MLflow store whose experiment 'gone' was deleted (MLflow keeps it, and its name)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    flags = ["--trainer.logger", "MLFlowLogger", "--trainer.logger.init_args.tracking_uri", uri]
    return [*flags, "--trainer.logger.init_args.experiment_name", "gone"]


def timm_weights(tmp_path: Path, problem: str) -> list[str]:
    """Flags starting a TimmClassifier (timm's test_resnet) from a weights file with the `problem`."""
    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    if problem == "corrupt":
        torch.save(timm.create_model("test_resnet").state_dict(), path)
        path.write_bytes(path.read_bytes()[:3000])
    elif problem == "other architecture":
        torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    elif problem == "other normalisation":  # a proj checkpoint of data normalised with mean 0.286, std 0.353
        path = tmp_path / "pretrained.ckpt"
        state = {
            f"net.{key}": value
            for key, value in TimmClassifier(arch="test_resnet", **MNIST_SHAPE).net.state_dict().items()
        }
        torch.save({"state_dict": state, "data": {"mean": [0.286], "std": [0.353]}}, path)
    flags = ["--model", "TimmClassifier", "--model.arch", "test_resnet", "--model.weights", str(path)]
    return [*flags, "--data.normalization", "data"] if problem == "other normalisation" else flags


# (flags, or a function of (tmp_path, existing logs) giving them; words the one-line message must contain)
CATALOGUE = {
    "unknown model": (["--model", "NoSuchNet"], ["NoSuchNet", "MLPClassifier, CNNClassifier or TimmClassifier"]),
    "unknown scheduler": (["--model.scheduler", "NoSuchLR"], ["--model.scheduler NoSuchLR", "StepLR"]),
    "unknown optimizer": (["--model.optimizer", "NoSuchOpt"], ["--model.optimizer NoSuchOpt", "SGD"]),
    "negative lr": (["--model.optimizer", "SGD", "--model.optimizer.lr", "-0.1"], ["-0.1", "init_args.lr"]),
    "zero lr": (
        ["--model.optimizer", "Adam", "--model.optimizer.lr", "0"],
        ["got 0", "--model.optimizer.init_args.lr"],
    ),
    "zero batch size": (["--data.batch_size", "0"], ["got 0", "--data.batch_size"]),
    "negative batch size": (["--data.batch_size", "-8"], ["got -8", "--data.batch_size"]),
    "non-integer batch size": (["--data.batch_size", "many"], ["--data.batch_size", "'many'"]),
    "zoom of 100% or more": (["--data.augment_scale", "1.5"], ["got 1.5", "[0, 1)", "--data.augment_scale"]),
    "val_size covers the training set": (
        ["--data.val_size", str(NUM_TRAIN)],
        [f"val_size {NUM_TRAIN}", f"out of {NUM_TRAIN}", "--data.val_size"],
    ),
    "plateau without a monitor": (
        ["--model.scheduler", "ReduceLROnPlateau"],
        ["--model.scheduler.monitor", "required"],
    ),
    "max_epochs not a number": (
        ["--trainer.max_epochs", "abc"],
        ["--trainer.max_epochs", "int or null", "'abc'"],
    ),
    "plateau monitor never logged": (
        ["--model.scheduler", "ReduceLROnPlateau", "--model.scheduler.monitor", "val/los"],
        ["'val/los'", "never logged", "val/loss", "--model.scheduler.init_args.monitor"],
    ),
    "data_dir is a file": (
        lambda tmp, logs: ["--data.data_dir", str(mlp_checkpoint(logs))],
        ["is a file", "--data.data_dir"],
    ),
    "data_dir without MNIST, download off": (
        lambda tmp, logs: ["--data.data_dir", str(tmp / "empty"), "--data.download", "false"],
        ["MNIST not found", "--data.download false", "--data.data_dir"],
    ),
    "data_dir without MNIST, no network": (
        lambda tmp, logs: ["--data.data_dir", str(tmp / "empty"), "--data.download", "true"],
        ["MNIST not found", "download failed", "--data.data_dir"],
    ),
    "truncated IDX file": (
        lambda tmp, logs: ["--data.data_dir", str(damaged_data(tmp, "truncated")), "--data.val_size", "10"],
        ["train-images-idx3-ubyte is corrupt", "replace it with the original file"],
    ),
    "IDX file with the wrong magic number": (
        lambda tmp, logs: ["--data.data_dir", str(damaged_data(tmp, "magic")), "--data.val_size", "10"],
        ["magic number 0x00000801, expected 0x00000803", "replace it with the original file"],
    ),
    "corrupt checkpoint": (
        lambda tmp, logs: ["--model", "MLPClassifier", "--ckpt_path", str(corrupt_checkpoint(tmp, logs))],
        ["corrupt.ckpt", "cannot be read", "proj.fit"],
    ),
    "missing checkpoint": (
        lambda tmp, logs: ["--ckpt_path", str(tmp / "nowhere.ckpt")],
        ["nowhere.ckpt", "does not exist"],
    ),
    "checkpoint of the other model class": (
        lambda tmp, logs: ["--model", "CNNClassifier", "--ckpt_path", str(mlp_checkpoint(logs))],
        ["written by proj.models.MLPClassifier", "builds proj.models.CNNClassifier", "--config <run>/config.yaml"],
    ),
    "checkpoint whose tensors do not fit the model": (
        lambda tmp, logs: ["--model", "CNNClassifier", "--ckpt_path", str(bare_checkpoint(tmp, logs))],
        ["bare.ckpt", "does not fit this CNNClassifier", "--config <its run>/config.yaml"],
    ),
    "config file with an unknown key": (
        lambda tmp, logs: ["--config", str(unknown_key_config(tmp, logs))],
        ["unknown key model.hiden_sizes", "--help"],
    ),
    "unknown flag": (["--trainer.max_epocs", "3"], ["--trainer.max_epocs", "spelling"]),
    "missing config file": (["--config", "nowhere.yaml"], ["nowhere.yaml", "no such file"]),
    "unknown data set": (["--data", "NoSuchData"], ["--data NoSuchData: no such class", "ImageFolderDataModule"]),
    "image folder that does not exist": (
        lambda tmp, logs: ["--data", "ImageFolderDataModule", "--data.root", str(tmp / "nowhere")],
        ["--data.root", "nowhere' does not exist", "train/<class>/"],
    ),
    "empty image folder": (
        lambda tmp, logs: image_folder(tmp, "empty"),
        ["images' has no train/ folder", "images/train/<class name>/"],
    ),
    "image folder of class folders without train/": (
        lambda tmp, logs: image_folder(tmp, "classes without train/"),
        ["images' has no train/ folder", "images/train/<class name>/"],
    ),
    "train/ without class folders": (
        lambda tmp, logs: image_folder(tmp, "no class folders"),
        ["train holds no class folders", "at least 2 classes"],
    ),
    "image folder of one class": (
        lambda tmp, logs: image_folder(tmp, "one class"),
        ["train holds only the class 'owl'", "at least 2 classes"],
    ),
    "class folder without images": (
        lambda tmp, logs: image_folder(tmp, "no images"),
        ["train/owl has no image files", ".png", "add images or remove it"],
    ),
    "corrupt image file": (
        lambda tmp, logs: image_folder(tmp, "corrupt image"),
        ["train/dog/001.png is not a readable image", "repair or remove the file"],
    ),
    "corrupt image file, size and channels given": (  # found when decoding (no header to read for the shape)
        lambda tmp, logs: [*image_folder(tmp, "corrupt image"), "--data.image_size", "32", "--data.channels", "3"],
        ["train/dog/001.png is not a readable image", "repair or remove the file"],
    ),
    "image size 0": (
        lambda tmp, logs: [*image_folder(tmp, "fine"), "--data.image_size", "0"],
        ["image_size must be positive, got [0, 0]", "--data.image_size"],
    ),
    "no CIFAR-10, download off": (
        lambda tmp, logs: cifar(tmp, "missing"),
        ["CIFAR-10 not found", "lacks data_batch_1", "--data.download false", "--data.data_dir"],
    ),
    "truncated CIFAR-10 batch": (
        lambda tmp, logs: cifar(tmp, "truncated"),
        ["data_batch_3 is truncated or not a CIFAR-10 batch", "replace it with the original file"],
    ),
    "checkpoint naming a class outside proj": (
        foreign_checkpoint,
        ["names its model class evil_pkg.models.Net, outside proj", "--model evil_pkg.models.Net"],
    ),
    "both ways of going on": (
        lambda tmp, logs: ["--ckpt_path", str(mlp_checkpoint(logs)), "--weights_from", str(mlp_checkpoint(logs))],
        ["--weights_from starts a", "pass one of them"],
    ),
    "checkpoint of another input shape": (
        folder_checkpoint_of_other_size,
        ["ImageFolderDataModule (3x32x32, 3 classes)", "data is ImageFolderDataModule (3x16x16", "input shape differs"],
    ),
    "unknown logger": (
        ["--trainer.logger", "NoSuchLogger"],
        ["--trainer.logger NoSuchLogger: no such class", "MLFlowLogger", "configs/logger/"],
    ),
    "MLflow server that cannot be reached": (
        ["--trainer.logger", "MLFlowLogger", "--trainer.logger.init_args.tracking_uri", "http://127.0.0.1:9"],
        ["MLflow server http://127.0.0.1:9 cannot be reached", "make mlflow-server", "tracking_uri"],
    ),
    "deleted MLflow experiment": (
        deleted_mlflow_experiment,
        ["experiment 'gone' was deleted", "mlflow experiments restore", "--trainer.logger.init_args.experiment_name"],
    ),
    "freezing the backbone of a model without one": (
        ["--model", "MLPClassifier", "--model.freeze_backbone", "true"],
        ["--model.freeze_backbone true", "MLPClassifier has none", "--model CNNClassifier"],
    ),
    "a backbone rate for a model without a backbone": (
        ["--model", "MLPClassifier", "--model.backbone_lr_scale", "0.1"],
        ["--model.backbone_lr_scale 0.1", "MLPClassifier has none", "--model CNNClassifier"],
    ),
    "a backbone rate of 0": (
        ["--model.backbone_lr_scale", "0"],
        ["backbone_lr_scale must be > 0, got 0.0", "--model.backbone_lr_scale"],
    ),
    "BackboneFinetuning for a model without a backbone": (
        ["--model", "MLPClassifier", "--config", str(CONFIGS / "finetune.yaml")],
        ["the BackboneFinetuning callback (configs/finetune.yaml)", "MLPClassifier has none", "--model CNNClassifier"],
    ),
    "unknown timm architecture": (
        ["--model", "TimmClassifier", "--model.arch", "resnet19"],
        ["--model.arch 'resnet19': timm has no such architecture", "close names: resnet18", "list_models('resnet*')"],
    ),
    "pretrained weights unavailable offline": (
        ["--model", "TimmClassifier", "--model.arch", "test_resnet", "--model.pretrained", "true"],
        ["model.safetensors of timm/test_resnet.r160_in1k", "not in the hub cache", "hf download", "--model.weights"],
    ),
    "weights file missing": (
        lambda tmp, logs: timm_weights(tmp, "missing"),
        ["--model.weights", "weights.pth' does not exist", ".safetensors"],
    ),
    "weights file corrupt": (
        lambda tmp, logs: timm_weights(tmp, "corrupt"),
        ["--model.weights", "weights.pth' cannot be read (truncated, or not a weights file"],
    ),
    "weights file of another architecture": (
        lambda tmp, logs: timm_weights(tmp, "other architecture"),
        ["weights.pth' (--model.weights) do not fit test_resnet", "conv1.0.weight (16, 1, 3, 3) is not in the file"],
    ),
    "data normalised otherwise than the weights expect": (
        lambda tmp, logs: timm_weights(tmp, "other normalisation"),
        ["expect inputs normalised with mean [0.286]", "normalises with its own statistics", "--data.normalization"],
    ),
    "a new head for weights that are not loaded": (
        ["--model", "TimmClassifier", "--model.arch", "test_resnet", "--model.reset_head", "true"],
        ["--model.reset_head true", "none are loaded", "--model.weights FILE or --model.pretrained true"],
    ),
    "W&B project name W&B refuses": (
        ["--trainer.logger", "WandbLogger", "--trainer.logger.init_args.project", "my/project"],
        ["--trainer.logger.init_args.project", "'my/project'", "cannot contain", "choose another name"],
    ),
}
if not torch.cuda.is_available():
    CATALOGUE["GPU asked for on a machine without one"] = (
        ["--trainer.accelerator", "gpu", "--trainer.devices", "1"],
        ["gpu", "--trainer.accelerator cpu"],
    )


@pytest.mark.parametrize("case", CATALOGUE)
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(
    case, subcommand, existing_run, mnist_dir, tmp_path, capsys
):
    flags, words = CATALOGUE[case]
    if callable(flags):
        flags = flags(tmp_path, existing_run)
    if subcommand == "test" and not any(
        flag in " ".join(flags) for flag in ("data", "ckpt", "config", "model ", "accel")
    ):
        pytest.skip("a fit-only setting")
    logs = existing_run
    before = snapshot(logs)
    base = ["--data.data_dir", str(mnist_dir), "--data.download", "false", "--data.num_workers", "0"]
    base += ["--data.val_size", str(VAL_SIZE)]
    base += ["--trainer.logger.init_args.save_dir", str(logs), "--trainer.max_epochs", "1"]
    with pytest.raises(SystemExit) as exit_info:
        proj.cli.main([subcommand, *base, *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert snapshot(logs) == before  # nothing written, nothing touched, no new run folder
    assert not (tmp_path / "logs").exists()
