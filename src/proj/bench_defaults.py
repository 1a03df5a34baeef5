"""`python -m proj.bench_defaults` (`make bench-defaults`): do the models' defaults hold on data nobody tuned them for?

A panel of data sets, each a subset of what the project has or makes (`--train` training images, a tenth of them
held out for validation, `--test` test images):

mnist       real MNIST digits (IDX files)
fashion     real Fashion-MNIST clothing (IDX files)
colour      an ImageFolder of 3x32x32 PNGs: MNIST digits in random colours, shifted by up to 4 pixels, over
            backgrounds of two random colours blended along a random smooth field, with pixel noise
cifar       CIFAR-10-format batches (python pickles, as torchvision's CIFAR10 reads) of Fashion-MNIST clothing
            coloured the same way (CIFAR10DataModule names the classes CIFAR-10's)
mixed       an ImageFolder of the colour digits resized to random sizes of 20-48 pixels (aspect ratio within 10%),
            which ImageFolderDataModule makes one size (the median side)

On each, the MLP and the CNN train `--epochs` epochs two ways, and their test accuracy is reported side by side:

defaults    `python -m proj.fit --model MODEL --data DATA <where the files are>`: the classes' defaults, as a user
            first runs them (in this process; no progress bar, logs in a temporary folder)
plain       the same network (the model's `net`, every layer re-initialised by PyTorch's own `reset_parameters`) in a
            plain PyTorch loop: Adam at torch's default rate, the data module's batch size, no weight decay,
            schedule or augmentation, on the same training images and normalisation

Both test the weights of the epoch with the best validation accuracy (what proj.fit's checkpoint keeps). Real
MNIST / Fashion-MNIST when `--data_dir` holds them, else synthetic stand-ins (bright patches: easy, for tests).
The defaults (6,000 training and 5,000 test images, 5 epochs, seed 42) take 10-15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from proj.bench import has_mnist, train_step
from proj.cli import ProjCLI
from proj.commands import run_command
from proj.data import ImageDataModule
from proj.data.idx import write_idx
from proj.data.synthetic import write_cifar10_batches, write_synthetic_fashion_mnist, write_synthetic_mnist
from proj.errors import UserError
from proj.models import ImageClassifier

SetName = Literal["mnist", "fashion", "colour", "cifar", "mixed"]
SETS: tuple[SetName, ...] = get_args(SetName)
Model = Literal["mlp", "cnn"]
MODEL_CLASSES: dict[str, str] = {"mlp": "MLPClassifier", "cnn": "CNNClassifier"}
LOOPS = ("defaults", "plain")
SIDE = 32  # of the colour images, where 28x28 glyphs shift by up to 4 pixels
MIN_CONTRAST = 100.0  # the glyph's colour is at least this far (RGB distance, of 441) from its background's colours
MIXED_SIDES = (20, 48)


def read_source(data_dir: Path, folder: str, split: str, count: int) -> tuple[Tensor, Tensor]:
    """The first `count` images (N, 28, 28) and labels of an MNIST-format split, with torchvision's reader."""
    from torchvision.datasets import MNIST, FashionMNIST

    reader = MNIST if folder == "MNIST" else FashionMNIST
    dataset = reader(str(data_dir), train=split == "train", download=False)
    if len(dataset.targets) < count:
        raise UserError(f"{folder} in {data_dir} has {len(dataset.targets)} {split} images, fewer than {count}.")
    return dataset.data[:count], dataset.targets[:count]


def write_mnist_subset(images: Tensor, labels: Tensor, test: tuple[Tensor, Tensor], root: Path, folder: str) -> Path:
    """`root/<folder>/raw/*-ubyte`: the given training and test images, as MNISTDataModule reads them."""
    raw = root / folder / "raw"
    for prefix, (split_images, split_labels) in (("train", (images, labels)), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", split_images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", split_labels)
    return root


def colourise(glyphs: Tensor, generator: torch.Generator) -> Tensor:
    """Grayscale glyphs (N, 28, 28), light on black, as colour images (N, 3, 32, 32) uint8: each glyph at a random
    offset, in a random colour, over a background of two random colours blended along a random smooth field (a
    4x4 grid of random weights, upsampled), with pixel noise. The glyph's colour keeps MIN_CONTRAST from every
    blend of the background's two, so that every image still shows its class."""
    count, height, width = glyphs.shape

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator)

    first, second = rand(count, 3, 1, 1) * 255, rand(count, 3, 1, 1) * 255
    field = F.interpolate(rand(count, 1, 4, 4), size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    background = first + (second - first) * field + torch.randn(count, 3, SIDE, SIDE, generator=generator) * 8
    # 16 candidate colours per image: the first far enough from every blend of the two (else the farthest).
    candidates, ends = rand(count, 16, 3) * 255, first.view(count, 1, 3)
    span = second.view(count, 1, 3) - ends
    along = ((candidates - ends) * span).sum(dim=2, keepdim=True) / span.square().sum(dim=2, keepdim=True)
    distance = (candidates - ends - along.clamp(0, 1) * span).norm(dim=2)
    enough = distance >= MIN_CONTRAST
    choice = torch.where(enough.any(dim=1), enough.float().argmax(dim=1), distance.argmax(dim=1))
    colour = candidates[torch.arange(count), choice].view(count, 3, 1, 1)
    alpha = torch.zeros(count, 1, SIDE, SIDE)
    offsets = torch.randint(0, SIDE - max(height, width) + 1, (count, 2), generator=generator).tolist()
    for index, (top, left) in enumerate(offsets):
        alpha[index, 0, top : top + height, left : left + width] = glyphs[index].float() / 255
    return (background * (1 - alpha) + colour * alpha).round().clamp(0, 255).to(torch.uint8)


def write_folder(
    root: Path, split: str, images: Tensor, labels: Tensor, sizes: Sequence[tuple[int, int]] | None = None
) -> None:
    """`root/<split>/<label>/NNNNN.png`, each image resized to its (height, width) of `sizes` when given."""
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        picture = Image.fromarray(image.permute(1, 2, 0).numpy())
        if sizes is not None:
            height, width = sizes[index]
            picture = picture.resize((width, height), Image.Resampling.BILINEAR)
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        picture.save(folder / f"{index:05d}.png")


def mixed_sizes(count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """`count` (height, width): sides in MIXED_SIDES, each image's aspect ratio within 10% of square (a folder
    whose images are cropped to one size loses little of them)."""
    low, high = MIXED_SIDES
    sides = torch.randint(low, high + 1, (count,), generator=generator)
    aspects = 0.9 + 0.2 * torch.rand(count, generator=generator)
    widths = (sides * aspects).round().clamp(low, high).int()
    return list(zip(sides.tolist(), widths.tolist(), strict=True))


def cifar_rows(images: Tensor, labels: Tensor) -> tuple[np.ndarray, list[int]]:
    """(N, 3, 32, 32) uint8 images as CIFAR-10 batch rows (N, 3072: the R, G, B planes) and a list of labels."""
    return images.reshape(len(images), -1).numpy(), labels.tolist()


def make_panel(
    data_dir: str, scratch: Path, sets: Sequence[SetName], train: int, test: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Write each panel set under `scratch`; per set, the `--data` flags that read it and where it came from."""
    sources: dict[str, tuple[Path, str]] = {}
    for folder in ("MNIST", "FashionMNIST"):
        if has_mnist(data_dir, folder):
            sources[folder] = (Path(data_dir), "real")
        else:
            writer = write_synthetic_mnist if folder == "MNIST" else write_synthetic_fashion_mnist
            sources[folder] = (writer(scratch / "synthetic", train, test, seed), "synthetic")

    def source(folder: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], str]:
        where, kind = sources[folder]
        return read_source(where, folder, "train", train), read_source(where, folder, "test", test), kind

    generator = torch.Generator().manual_seed(seed)
    held_out = "--data.val_size=0.1"  # the IDX and CIFAR modules hold out 5,000 by default: more than a subset has
    panel: dict[str, dict[str, Any]] = {}
    # Every coloured set draws from the generator, in the panel's order, whether it is written or not: a set holds
    # the same images alone (`--sets mixed`) as in the whole panel.
    for name in SETS:
        root = scratch / name
        if name in ("mnist", "fashion") and name in sets:
            folder = "MNIST" if name == "mnist" else "FashionMNIST"
            (images, labels), test_split, kind = source(folder)
            write_mnist_subset(images, labels, test_split, root, folder)
            data = "MNISTDataModule" if name == "mnist" else "FashionMNISTDataModule"
            panel[name] = {"flags": ["--data", data, "--data.data_dir", str(root), held_out], "source": kind}
        elif name == "cifar":
            (images, labels), (test_images, test_labels), kind = source("FashionMNIST")
            train_rows = cifar_rows(colourise(images, generator), labels)
            test_rows = cifar_rows(colourise(test_images, generator), test_labels)
            if name in sets:
                write_cifar10_batches(root, train_rows, test_rows)
                flags = ["--data", "CIFAR10DataModule", "--data.data_dir", str(root), "--data.download=false"]
                panel[name] = {"flags": [*flags, held_out], "source": f"{kind} Fashion-MNIST, coloured"}
        elif name in ("colour", "mixed"):
            (images, labels), (test_images, test_labels), kind = source("MNIST")
            mixed = name == "mixed"
            folders = []  # (split, images, labels, sizes)
            for split, (split_images, split_labels) in (
                ("train", (images, labels)),
                ("test", (test_images, test_labels)),
            ):
                sizes = mixed_sizes(len(split_labels), generator) if mixed else None
                folders.append((split, colourise(split_images, generator), split_labels, sizes))
            if name in sets:
                for folder_split in folders:
                    write_folder(root, *folder_split)
                what = f"{kind} MNIST, coloured" + (f", sides {MIXED_SIDES[0]}-{MIXED_SIDES[1]} px" if mixed else "")
                panel[name] = {"flags": ["--data", "ImageFolderDataModule", "--data.root", str(root)], "source": what}
    return panel


def fit_defaults(
    model: str, data_flags: Sequence[str], epochs: int, seed: int, logs: str
) -> tuple[dict[str, Any], ProjCLI]:
    """`python -m proj.fit --model MODEL <data flags>` for `epochs` epochs, in this process: its test accuracy (of
    the best checkpoint by val/acc), and the run (its data module and network serve the plain loop)."""
    start = time.perf_counter()
    flags = ["fit", "--test_after_fit=true", "--model", MODEL_CLASSES[model], *data_flags]
    flags += [f"--trainer.max_epochs={epochs}", f"--seed_everything={seed}", "--trainer.enable_progress_bar=false"]
    cli = ProjCLI(args=[*flags, f"--trainer.logger.init_args.save_dir={logs}"])
    result = {"test_accuracy": float(cli.trainer.callback_metrics["test/acc"]), "seconds": time.perf_counter() - start}
    return result, cli


def normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (N, C, H, W) as float, scaled to [0, 1] and normalised per channel."""
    shape = (1, -1, 1, 1)
    return (images.float() / 255 - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def accuracy(network: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    network.eval()
    with torch.inference_mode():
        correct = sum(
            int((network(images[batch]).argmax(dim=1) == labels[batch]).sum())
            for batch in torch.arange(len(labels)).split(batch_size)
        )
    network.train()
    return correct / len(labels)


def pytorch_init(network: nn.Module) -> None:
    """Re-initialise every layer of `network` the way PyTorch initialises it when it is built."""
    for layer in network.modules():
        reset = getattr(layer, "reset_parameters", None)
        if layer is not network and callable(reset):
            reset()


def fit_plain(cli: ProjCLI, epochs: int, seed: int) -> dict[str, Any]:
    """The network of a defaults run, every layer re-initialised by PyTorch, in a plain loop (see the module's
    docstring) on that run's training, validation and test images and normalisation."""
    start = time.perf_counter()
    data, classifier = cli.datamodule, cli.model
    assert isinstance(data, ImageDataModule) and isinstance(classifier, ImageClassifier)
    splits = [data.train_set, data.val_set, data.test_set]
    if not all(isinstance(split, tuple) for split in splits):
        raise UserError("the panel's sets must fit --data.resident_budget_mb: lower --train or --test")
    (train_images, train_labels), val, test = (
        (normalise(split[0], data.mean, data.std), split[1]) for split in splits if isinstance(split, tuple)
    )
    torch.manual_seed(seed)
    network = copy.deepcopy(classifier.net)
    pytorch_init(network)
    optimizer = torch.optim.Adam(network.parameters())
    best, best_state = -1.0, copy.deepcopy(network.state_dict())
    network.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train_labels)).split(data.batch_size):
            train_step(network, optimizer, train_images[batch], train_labels[batch])
        if (score := accuracy(network, *val)) > best:
            best, best_state = score, copy.deepcopy(network.state_dict())
    network.load_state_dict(best_state)
    return {
        "test_accuracy": accuracy(network, *test),
        "seconds": time.perf_counter() - start,
        "images": [len(train_labels), len(val[1]), len(test[1])],
        "shape": list(data.input_shape),
    }


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def print_table(report: dict[str, Any]) -> None:
    models = report["models"]
    header = f"{'set':<9}{'shape':>10}{'train/val/test':>17}"
    for model in models:
        header += f"{model + ' defaults':>15}{'plain':>8}{'gap':>7}"
    print("\n" + header)
    for name, row in report["sets"].items():
        line = f"{name:<9}{'x'.join(map(str, row['shape'])):>10}{row['images']:>17}"
        for model in models:
            scores = row[model]
            line += f"{scores['defaults']:>15.2%}{scores['plain']:>8.2%}{scores['gap'] * 100:>+7.2f}"
        print(line)
    print("gap: defaults minus plain, in points of test accuracy" + (f" (mean of seeds {report['seeds']})"))


def run(
    data_dir: str = "data",
    sets: Sequence[SetName] = SETS,
    models: Sequence[Model] = ("mlp", "cnn"),
    train: int = 6000,
    test: int = 5000,
    epochs: int = 5,
    seeds: Sequence[int] = (42,),
    fit_flags: Sequence[str] = (),
    output: str = "bench-defaults.json",
) -> dict[str, Any]:
    """Train each model on each panel set with the class defaults and in a plain loop; print the table and write
    it to `output` as JSON.

    Args:
        data_dir: folder holding MNIST/raw and FashionMNIST/raw (else synthetic stand-ins)
        sets: the panel sets to run
        models: mlp (MLPClassifier), cnn (CNNClassifier)
        train: training images per set, a tenth of them held out for validation
        test: test images per set
        epochs: of every fit
        seeds: each fit runs once per seed; the table shows the mean
        fit_flags: flags added to every defaults fit, to try a candidate default (`--fit_flags=--model.init=default`)
        output: where the figures are written as JSON
    """
    if train < 20 or test < 1 or epochs < 1 or not seeds:
        raise UserError("--train must be >= 20, --test and --epochs >= 1, and --seeds must name at least one seed")
    report: dict[str, Any] = {
        "train": train,
        "test": test,
        "epochs": epochs,
        "seeds": list(seeds),
        "models": list(models),
        "fit_flags": list(fit_flags),
        "threads": torch.get_num_threads(),
        "sets": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="proj-bench-defaults-") as scratch:
        panel = make_panel(data_dir, Path(scratch), sets, train, test, seed=0)
        for name, spec in panel.items():
            row: dict[str, Any] = {"source": spec["source"], "runs": {}}
            for model in models:
                runs: dict[str, list[dict[str, Any]]] = {loop: [] for loop in LOOPS}
                for seed in seeds:
                    logs = str(Path(scratch) / "logs")
                    result, cli = fit_defaults(model, [*spec["flags"], *fit_flags], epochs, seed, logs)
                    runs["defaults"].append(result)
                    runs["plain"].append(fit_plain(cli, epochs, seed))
                scores = {loop: mean([one["test_accuracy"] for one in runs[loop]]) for loop in LOOPS}
                row[model] = {**scores, "gap": scores["defaults"] - scores["plain"]}
                row["runs"][model] = runs
                row["shape"] = runs["plain"][0]["shape"]
                print(f"[{name} {model}] defaults {scores['defaults']:.2%}, plain {scores['plain']:.2%}", flush=True)
            row["images"] = "/".join(map(str, runs["plain"][0]["images"]))
            report["sets"][name] = row
    report["seconds"] = time.perf_counter() - start
    print_table(report)
    Path(output).write_text(json.dumps(report, indent=2))
    print(f"\nfigures written to {output} ({report['seconds']:.0f} s)")
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m proj.bench_defaults`: a bad flag or value is one `error: ...` line and exit status 2."""
    return dict(run_command(run, argv, "python -m proj.bench_defaults", __doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
