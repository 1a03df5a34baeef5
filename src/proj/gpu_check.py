"""`python -m proj.gpu_check` (`make gpu-check`): what a CPU cannot check, on a machine with a CUDA GPU.

Fits configs/cnn.yaml, configs/timm_small.yaml and cnn.yaml in bf16-mixed precision for `--epochs` epochs each on
the GPU, times their epochs, then checks what the result is used for: `proj.predict` answers the test images
(as files) on the GPU, and the ONNX file of `proj.export` gives the checkpoint's logits. One table at the end;
exit status 1 if a check failed. On a machine without a CUDA GPU it says so and exits 0 (nothing to check).
`--accelerator cpu` runs the same checks on the CPU (how the test suite keeps this script working).
"""

from __future__ import annotations

import csv
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from proj import export, predict
from proj.bench import EpochTimer
from proj.cli import build
from proj.commands import run_command
from proj.data.images import prepare
from proj.models import ImageClassifier

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FITS = {  # name: the config files and flags of each fit
    "cnn": (["cnn.yaml"], []),
    "timm_small": (["timm_small.yaml"], []),
    "cnn_bf16": (["cnn.yaml"], ["--trainer.precision", "bf16-mixed"]),
}
IMAGES = 64  # test images written as files for proj.predict


def fit(name: str, data_dir: str, logs: Path, accelerator: str, epochs: int, limit: int | None) -> dict[str, Any]:
    """One fit as `python -m proj.fit` runs it, on the accelerator; its epoch seconds, accuracy and checkpoint."""
    configs, flags = FITS[name]
    timer = EpochTimer()
    args = [arg for config in configs for arg in ("--config", str(CONFIGS / config))]
    args += ["--data.data_dir", data_dir, "--trainer.max_epochs", str(epochs), "--trainer.accelerator", accelerator]
    args += ["--trainer.devices", "1", "--trainer.logger.init_args.save_dir", str(logs / name), *flags]
    if limit is not None:
        args += ["--trainer.limit_train_batches", str(limit), "--trainer.limit_val_batches", str(limit)]
    cli = build(args, callbacks=[timer], record=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    checkpoint = cli.trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or getattr(checkpoint, "last_model_path", "")
    return {
        "epoch_seconds": min(timer.seconds[1:] or timer.seconds),  # the first epoch also pays for the start
        "val_acc": float(cli.trainer.callback_metrics.get("val/acc", math.nan)),
        "checkpoint": best,
        "datamodule": cli.datamodule,
    }


def write_test_images(datamodule: Any, folder: Path) -> list[int]:
    """The first IMAGES test images as PNG files (what a user would hand to proj.predict); their labels."""
    images, labels = datamodule.read_split("test")
    folder.mkdir(parents=True)
    for index, image in enumerate(images[:IMAGES]):
        pixels = image.permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return [int(label) for label in labels[:IMAGES]]


def check_predict(checkpoint: str, folder: Path, labels: list[int], device: str) -> float:
    """proj.predict on the image files, on the device: the share of them it classifies right."""
    output = folder.parent / f"{folder.name}.csv"
    predict.run(checkpoint, [str(folder)], output=str(output), device=device, preprocess="none")
    with output.open() as file:
        rows = sorted(csv.DictReader(file), key=lambda row: row["path"])
    if len(rows) != len(labels) or any(row["error"] for row in rows):
        return 0.0
    return sum(int(row["class_index"]) == label for row, label in zip(rows, labels, strict=True)) / len(labels)


def check_export(checkpoint: str, folder: Path) -> float:
    """The largest difference between the ONNX file's logits and the checkpoint's own, on the image files."""
    import onnxruntime

    path = folder.parent / f"{folder.name}.onnx"
    export.run(checkpoint, "onnx", str(path))
    model, description = predict.load_checkpoint(checkpoint, None, ())
    assert isinstance(model, ImageClassifier)
    batch = torch.stack([prepare(file, description, "none") for file in sorted(folder.iterdir())])
    with torch.no_grad():
        expected = model.eval().cpu()(batch)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    return float((torch.from_numpy(actual) - expected).abs().max())


def run(
    data_dir: str = "data",
    epochs: int = 2,
    accelerator: Literal["gpu", "cpu"] = "gpu",
    limit_batches: int | None = None,
) -> dict[str, Any]:
    """Fit, time, predict and export on the GPU; print one table.

    Args:
        data_dir: folder holding MNIST/raw and FashionMNIST/raw
        epochs: epochs of each fit (the fastest after the first is the epoch time)
        accelerator: gpu, or cpu to try the script itself on a machine without one
        limit_batches: train and validate on this many batches an epoch (a quick try)
    """
    if accelerator == "gpu" and not torch.cuda.is_available():
        print(
            "make gpu-check needs a CUDA GPU, and this machine has none (torch.cuda.is_available() is False): "
            "nothing checked."
        )
        return {}
    device = "cuda" if accelerator == "gpu" else "cpu"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="proj-gpu-check-") as scratch:
        root = Path(scratch)
        for name in FITS:
            result = fit(name, data_dir, root / "logs", accelerator, epochs, limit_batches)
            folder = root / "images" / name
            labels = write_test_images(result.pop("datamodule"), folder)
            result["predict_acc"] = check_predict(result["checkpoint"], folder, labels, device)
            result["onnx_max_diff"] = check_export(result["checkpoint"], folder)
            result["ok"] = result["predict_acc"] > 0 and result["onnx_max_diff"] < 1e-3
            results[name] = result
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\n{where}, {epochs} epochs each")
    print(f"{'fit':<12}{'epoch s':>9}{'val acc':>9}{'predict acc':>13}{'onnx diff':>11}  ok")
    for name, row in results.items():
        print(
            f"{name:<12}{row['epoch_seconds']:>9.2f}{row['val_acc']:>9.2%}{row['predict_acc']:>13.2%}"
            f"{row['onnx_max_diff']:>11.1e}  {'yes' if row['ok'] else 'NO'}"
        )
    if not all(row["ok"] for row in results.values()):
        sys.exit(1)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_command(run, argv, "python -m proj.gpu_check", __doc__)


if __name__ == "__main__":
    main()
