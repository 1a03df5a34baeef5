"""`python -m proj.bench` (`make bench`): seconds per training epoch of the same model, four ways, side by side.

(a) classic   a plain PyTorch loop over torchvision's MNIST in a DataLoader (PIL -> ToTensor -> Normalize)
(b) torchvision   proj (Trainer + MNISTDataModule) with `--data.pipeline torchvision`
(c) resident  proj with the default resident pipeline
(d) ceiling   forward + backward + optimizer step over normalised tensors in memory: no loader, no Lightning

All four train the model of `configs/<model>.yaml` at its batch size (or `--batch_size`), from the same initial weights,
without validation, logging or progress bar, in `--epochs` interleaved rounds of one epoch each (from the
same initial weights); the fastest epoch of each is reported. Two more columns time the epoch a user waits for:

(e) fit       the epoch as `python -m proj.fit --config configs/<model>.yaml` runs it: training, validation,
              checkpoints, LR monitor, progress bar and the default TensorBoard figures (from the end of one
              epoch to the end of the next, so figures still being drawn in the background count)
(f) ceiling+val   (d) plus a forward pass over the validation split: the compute of (e); two epochs a round, as (e), (g)
(g) lightning+val the same model and data in a bare Lightning Trainer: validation, but no callback, logger,
              checkpoint or progress bar (timed as (e)). e/g is what proj adds to Lightning, g/f what
              Lightning's loop (and the model's step with its metrics) adds to the compute.

Real MNIST when `--data_dir` holds it, else synthetic data of the same size.

`--cache` instead measures the resident pipeline's pre-transform cache for MNIST, Fashion-MNIST, a CIFAR-format
set of 50,000 3x32x32 training images and a folder of 50,000 PNGs: the seconds to decode the files and write
the cache, to load it on the next run, its size in memory and the process's peak memory (each in a fresh
process). Real MNIST / Fashion-MNIST when `--data_dir` holds them, else synthetic data of the same size.

`--growth BASE` instead times one training epoch (the first model of `--models`) and the process's peak memory at
1, 2, 4 and 8 x BASE synthetic training images, for both pipelines, each in a fresh process.

`--batch_sizes B...` instead trains `configs/<model>.yaml` (the first of `--models`) at each batch size with the
learning rate unchanged, scaled linearly with the batch, and scaled by its square root, and reports seconds
per epoch, training seconds to 98% test accuracy and the final accuracy (real MNIST only).

`--time_to_accuracy CONFIG...` instead trains each config as `python -m proj.fit` would (callbacks, logging,
validation and all), and the same model, optimizer and schedule in the classic loop, and reports the training
seconds until the official test accuracy first reaches 98% and 99% (measured after every epoch, outside the
clock).
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from jsonargparse import Namespace
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import MNIST

from proj.cli import ProjCLI, build
from proj.commands import run_command
from proj.data import MNISTDataModule
from proj.data.mnist import MEAN, SPLIT_FILES, STD
from proj.data.synthetic import write_synthetic_mnist
from proj.errors import UserError
from proj.models import ImageClassifier
from proj.schedulers import spans_the_run
from proj.tune import optimizer_lr_flag

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
Model = Literal["mlp", "cnn"]
Variant = Literal["a_classic", "b_torchvision", "c_resident", "d_ceiling", "e_fit", "f_ceiling_val", "g_lightning_val"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
RATIOS = (
    ("b_torchvision", "a_classic"),
    ("c_resident", "a_classic"),
    ("c_resident", "d_ceiling"),
    ("e_fit", "f_ceiling_val"),
    ("e_fit", "g_lightning_val"),
    ("g_lightning_val", "f_ceiling_val"),
)


TIMED_EPOCHS = 2  # epochs (e), (f) and (g) each time a round: their fastest is drawn from as many tries


class EpochTimer(pl.Callback):
    """Wall-clock seconds of each training epoch, loop and hooks included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self.start)


class EpochEnds(pl.Callback):
    """Seconds from the end of one training epoch (validation and checkpoints come before it) to the next."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.last: float | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.seconds.append(now - self.last)
        self.last = now


def configured(config: str, *flags: str) -> ProjCLI:
    """The run of a config file (and flags) as `python -m proj.fit` configures it, for a loop of the bench's own:
    no logger, no record."""
    return build(["--config", config, "--trainer.logger=false", *flags], record=False)


def build_model(model: str) -> tuple[ImageClassifier, int]:
    """The model, optimizer and batch size of `configs/<model>.yaml`, through the parser users go through."""
    cli = configured(str(CONFIGS / f"{model}.yaml"))
    assert isinstance(cli.model, ImageClassifier)
    return cli.model, cli.datamodule.hparams["batch_size"]


def whole_run_steps(cli: ProjCLI, batches: int) -> int | None:
    """The run's length in scheduler steps when its scheduler spans the run (OneCycleLR without `total_steps` or
    `epochs`): epochs x `batches`, or epochs for a scheduler stepped every epoch; else None. proj.fit's Trainer
    sizes such a schedule; a loop of one's own has to."""
    model = cli.config.model.init_args
    scheduler = model.get("scheduler")
    arguments = scheduler.get("init_args") if isinstance(scheduler, Namespace) else None
    if arguments is None or not spans_the_run(arguments.as_dict()):
        return None
    epochs = cli.trainer.max_epochs or 1
    return epochs * batches if model.scheduler_interval == "step" else epochs


def optimizer_and_scheduler(model: ImageClassifier) -> tuple[torch.optim.Optimizer, dict[str, Any] | None]:
    """The optimizer and the scheduler config (or None) of the model's `configure_optimizers`."""
    configured = model.configure_optimizers()
    if isinstance(configured, dict):
        return configured["optimizer"], configured["lr_scheduler"]
    return configured, None


def classic_loader(data_dir: str, batch_size: int, workers: int) -> DataLoader:
    """The pipeline of PyTorch's own MNIST example and most tutorials, over proj's training split."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = MNIST(data_dir, train=True, transform=transform)
    train_indices, _ = MNISTDataModule(data_dir).split_indices(len(dataset))
    return DataLoader(Subset(dataset, train_indices.tolist()), batch_size, shuffle=True, num_workers=workers)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor) -> Tensor:
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def time_classic(model: ImageClassifier, data_dir: str, batch_size: int, workers: int, epochs: int = 1) -> list[float]:
    loader = classic_loader(data_dir, batch_size, workers)
    optimizer, _ = optimizer_and_scheduler(model)  # the schedule does not change the time of a step
    model.train()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, labels in loader:
            train_step(model, optimizer, images, labels)
        seconds.append(time.perf_counter() - start)
    return seconds


def bare_trainer(timer: pl.Callback, max_epochs: int, **flags: Any) -> pl.Trainer:
    """A Trainer with nothing added (no logger, checkpoint, progress bar, summary or sanity check) but `timer`."""
    return pl.Trainer(
        max_epochs=max_epochs,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        **flags,
    )


def time_proj(model: ImageClassifier, data_dir: str, pipeline: str, batch_size: int, epochs: int = 1) -> list[float]:
    timer = EpochTimer()
    data = MNISTDataModule(data_dir, batch_size=batch_size, pipeline=pipeline)
    bare_trainer(timer, epochs, limit_val_batches=0).fit(model, datamodule=data)
    return timer.seconds


def time_fit(config: str, data_dir: str, batch_size: int, epochs: int = TIMED_EPOCHS) -> list[float]:
    """`epochs` epochs of `python -m proj.fit --config configs/<config>.yaml`, every default callback on, after
    a first epoch that also pays for the start (sanity check, TensorBoard files)."""
    timer = EpochEnds()
    with tempfile.TemporaryDirectory(prefix="proj-bench-logs-") as logs:
        flags = ["--config", str(CONFIGS / f"{config}.yaml"), "--data.data_dir", data_dir]
        flags += ["--data.batch_size", str(batch_size), "--trainer.max_epochs", str(epochs + 1)]
        cli = build([*flags, "--trainer.logger.init_args.save_dir", logs], callbacks=[timer])
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.seconds


def time_lightning(model: ImageClassifier, data_dir: str, batch_size: int, epochs: int = TIMED_EPOCHS) -> list[float]:
    """`epochs` epochs with validation in a Trainer with nothing added, after a first one (as `time_fit`)."""
    timer = EpochEnds()
    bare_trainer(timer, epochs + 1).fit(model, datamodule=MNISTDataModule(data_dir, batch_size=batch_size))
    return timer.seconds


def normalised(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) images, as the data module holds them, as the model sees them."""
    return images.float().div(255).sub(MEAN).div(STD)


def time_validation(model: ImageClassifier, images: Tensor, labels: Tensor, batch_size: int) -> float:
    """Seconds of one forward pass over the validation split, in eval mode, without gradients."""
    images = normalised(images)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in torch.arange(len(labels)).split(batch_size):
            model(images[batch]).argmax(dim=1).eq(labels[batch]).sum()
    seconds = time.perf_counter() - start
    model.train()
    return seconds


def time_ceiling_with_validation(
    model: ImageClassifier,
    images: Tensor,
    labels: Tensor,
    val: tuple[Tensor, Tensor],
    batch_size: int,
    epochs: int = TIMED_EPOCHS,
) -> list[float]:
    """`epochs` epochs of (d) plus a validation pass each."""
    return [
        time_ceiling(model, images, labels, batch_size)[0] + time_validation(model, *val, batch_size)
        for _ in range(epochs)
    ]


def time_ceiling(
    model: ImageClassifier, images: Tensor, labels: Tensor, batch_size: int, epochs: int = 1
) -> list[float]:
    images = normalised(images)
    optimizer, _ = optimizer_and_scheduler(model)
    model.train()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(labels)).split(batch_size):
            train_step(model, optimizer, images[batch], labels[batch])
        seconds.append(time.perf_counter() - start)
    return seconds


def test_accuracy(model: torch.nn.Module, data_dir: str) -> float:
    data = MNISTDataModule(data_dir, batch_size=1000)
    data.setup("test")
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.test_dataloader())
    model.train(was_training)
    return correct / 10_000


class AccuracyClock(pl.Callback):
    """Training seconds and test accuracy after every epoch; the test runs with the clock stopped."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.curve: list[tuple[float, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds, self.resumed = 0.0, time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += time.perf_counter() - self.resumed
        self.curve.append((self.seconds, test_accuracy(pl_module, self.data_dir)))
        self.resumed = time.perf_counter()


def curve_proj(config: str, data_dir: str, logs: str, *flags: str) -> list[tuple[float, float]]:
    args = ["--config", config, "--data.data_dir", data_dir, "--trainer.logger.init_args.save_dir", logs, *flags]
    clock = AccuracyClock(data_dir)
    cli = build(args, callbacks=[clock])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock.curve


def curve_classic(config: str, data_dir: str, workers: int) -> list[tuple[float, float]]:
    cli = configured(config)
    loader = classic_loader(data_dir, cli.datamodule.hparams["batch_size"], workers)
    if (steps := whole_run_steps(cli, len(loader))) is not None:
        cli = configured(config, f"--model.scheduler.init_args.total_steps={steps}")
    model, epochs = cli.model, cli.trainer.max_epochs or 1
    optimizer, scheduler = optimizer_and_scheduler(model)
    model.train()
    seconds, curve = 0.0, []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, labels in loader:
            loss = train_step(model, optimizer, images, labels)
            if scheduler and scheduler["interval"] == "step":
                scheduler["scheduler"].step()
        if scheduler and scheduler["interval"] == "epoch":
            scheduler["scheduler"].step(*([loss.item()] if "monitor" in scheduler else []))
        seconds += time.perf_counter() - start
        curve.append((seconds, test_accuracy(model, data_dir)))
    return curve


def seconds_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, accuracy in curve if accuracy >= target), None)


def race_to_accuracy(configs: Sequence[str], data_dir: str, workers: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as logs:
        for config in configs:
            name = Path(config).stem
            for loop, curve in (
                ("proj", curve_proj(config, data_dir, logs)),
                ("classic", curve_classic(config, data_dir, workers)),
            ):
                results[f"{name}/{loop}"] = {
                    "curve": curve,
                    "seconds_to_98": seconds_to(curve, 0.98),
                    "seconds_to_99": seconds_to(curve, 0.99),
                    "final_accuracy": curve[-1][1],
                    "epochs": len(curve),
                }
    print(f"\n{'config/loop':<20}{'to 98%':>9}{'to 99%':>9}{'final':>9}{'epochs':>8}{'seconds':>9}")
    for key, row in results.items():
        to98, to99 = (f"{row[k]:.1f}" if row[k] is not None else "-" for k in ("seconds_to_98", "seconds_to_99"))
        print(f"{key:<20}{to98:>9}{to99:>9}{row['final_accuracy']:>9.2%}{row['epochs']:>8}{row['curve'][-1][0]:>9.1f}")
    return results


LR_RULES: dict[str, Callable[[float], float]] = {
    "none": lambda ratio: 1.0,
    "linear": lambda ratio: ratio,
    "sqrt": lambda ratio: ratio**0.5,
}


def learning_rate(cli: ProjCLI) -> tuple[str, float]:
    """The flag that sets a config's learning rate (proj.tune's choice: a one-cycle schedule's own max_lr, which
    overrides the optimizer's), and its value."""
    flag = optimizer_lr_flag(cli)
    return flag, float(cli.config["model.init_args." + flag.removeprefix("--model.")])  # the model's own arguments


def batch_table(config: str, data_dir: str, batch_sizes: Sequence[int]) -> dict[str, Any]:
    """The config trained at each batch size with its learning rate unchanged, scaled linearly with the batch,
    or by its square root (from the config's own batch size and rate): seconds per epoch, training seconds to
    98% test accuracy, final accuracy. One run where the rules agree (the config's own batch size)."""
    base = configured(config)
    base_batch = int(base.datamodule.hparams["batch_size"])
    lr_flag, base_lr = learning_rate(base)
    results: dict[str, Any] = {}
    print(f"\n{'batch':>6}{'rule':>8}{'lr':>10}{'s/epoch':>9}{'to 98%':>9}{'final':>9}")
    with tempfile.TemporaryDirectory() as logs:
        for batch_size in batch_sizes:
            done: dict[float, dict[str, Any]] = {}
            for rule, scale in LR_RULES.items():
                lr = base_lr * scale(batch_size / base_batch)
                if lr not in done:
                    flags = ["--data.batch_size", str(batch_size), lr_flag, str(lr)]
                    curve = curve_proj(config, data_dir, logs, *flags, "--trainer.enable_progress_bar", "false")
                    done[lr] = {
                        "lr": lr,
                        "seconds_per_epoch": curve[-1][0] / len(curve),
                        "seconds_to_98": seconds_to(curve, 0.98),
                        "final_accuracy": curve[-1][1],
                        "curve": curve,
                    }
                row = results.setdefault(str(batch_size), {})[rule] = done[lr]
                to98 = f"{row['seconds_to_98']:.1f}" if row["seconds_to_98"] is not None else "-"
                print(
                    f"{batch_size:>6}{rule:>8}{lr:>10.2e}{row['seconds_per_epoch']:>9.2f}{to98:>9}"
                    f"{row['final_accuracy']:>9.2%}",
                    flush=True,
                )
    return results


def has_mnist(data_dir: str, folder: str = "MNIST") -> bool:
    return all((Path(data_dir) / folder / "raw" / name).is_file() for files in SPLIT_FILES.values() for name in files)


def measure_cache(name: str, data_dir: str, scratch: str, images: int = 50_000) -> dict[str, Any]:
    """Decode (cache miss) and load (cache hit) one data set's splits; run in a fresh process for its peak memory."""
    import resource

    from proj.data import CIFAR10DataModule, FashionMNISTDataModule, ImageDataModule, ImageFolderDataModule
    from proj.data.synthetic import write_image_folder, write_synthetic_cifar10, write_synthetic_fashion_mnist

    source = "real"
    data: ImageDataModule
    if name in ("MNIST", "FashionMNIST"):
        if not has_mnist(data_dir, name):
            data_dir, source = scratch, "synthetic"
            writer = write_synthetic_mnist if name == "MNIST" else write_synthetic_fashion_mnist
            writer(scratch, num_train=60_000, num_test=10_000)
        module = MNISTDataModule if name == "MNIST" else FashionMNISTDataModule
        build: Callable[[], ImageDataModule] = partial(module, data_dir, download=False)
    elif name == "CIFAR-format":
        source = "synthetic"
        write_synthetic_cifar10(scratch, num_train=images, num_test=images // 5)
        build = partial(CIFAR10DataModule, scratch, download=False)
    else:
        source = "synthetic PNGs"
        write_image_folder(scratch, classes=[str(i) for i in range(10)], per_class=images // 10, size=(32, 32))
        build = partial(ImageFolderDataModule, scratch)
    data = build()
    if data.cache_path is not None:
        data.cache_path.unlink(missing_ok=True)
    start = time.perf_counter()
    splits = data.decoded()
    decode = time.perf_counter() - start
    start = time.perf_counter()
    build().decoded()  # a new run: the cache file is read
    load = time.perf_counter() - start
    cache = data.cache_path
    return {
        "source": source,
        "images": sum(len(labels) for _, labels in splits.values()),
        "shape": list(data.input_shape),
        "decode_seconds": decode,
        "load_seconds": load,
        "memory_mb": sum(images.nbytes + labels.nbytes for images, labels in splits.values()) / 2**20,
        "cache_file_mb": cache.stat().st_size / 2**20 if cache is not None and cache.is_file() else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
    }


def cache_report(data_dir: str, images: int = 50_000) -> dict[str, Any]:
    import multiprocessing

    results = {}
    print(
        f"{'data set':<14}{'source':<16}{'images':>8}{'shape':>10}{'decode s':>10}{'load s':>8}{'memory MB':>11}"
        f"{'file MB':>9}{'peak RSS MB':>13}"
    )
    context = multiprocessing.get_context("spawn")
    for name in ("MNIST", "FashionMNIST", "CIFAR-format", "ImageFolder"):
        with tempfile.TemporaryDirectory(prefix="proj-bench-") as scratch, context.Pool(1) as pool:
            row = pool.apply(measure_cache, (name, data_dir, scratch, images))
        results[name] = row
        shape = "x".join(str(side) for side in row["shape"])
        print(
            f"{name:<14}{row['source']:<16}{row['images']:>8}{shape:>10}{row['decode_seconds']:>10.2f}"
            f"{row['load_seconds']:>8.2f}{row['memory_mb']:>11.0f}{row['cache_file_mb']:>9.0f}{row['peak_rss_mb']:>13.0f}"
        )
    return results


def measure_growth(data_dir: str, pipeline: str, model: str) -> dict[str, Any]:
    """One training epoch of `configs/<model>.yaml` on the data in `data_dir`, and the process's peak memory; run
    in a fresh process, so that the peak is this pipeline's."""
    import resource

    network, batch_size = build_model(model)
    seconds = time_proj(network, data_dir, pipeline, batch_size)[0]
    return {"epoch_seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}


def growth_report(base: int, model: str = "mlp", scales: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, Any]:
    """How an epoch's time and the peak memory grow with the training images (synthetic, MNIST's shapes), for
    both pipelines: time should grow linearly for both; memory linearly for the resident pipeline, which holds
    the split as one tensor on the device (torchvision's MNIST reader holds the decoded files too)."""
    import subprocess

    def measure(data_dir: str, pipeline: str) -> dict[str, Any]:
        # A process of its own (not a multiprocessing pool's: those may not start DataLoader workers).
        call = f"bench.measure_growth({data_dir!r}, {pipeline!r}, {model!r})"
        code = f"import json; from proj import bench; print(json.dumps({call}))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    results: dict[str, Any] = {}
    print(f"{'pipeline':<13}{'images':>8}{'epoch s':>9}{'x time':>8}{'peak RSS MB':>13}{'x memory':>10}")
    for scale in scales:
        with tempfile.TemporaryDirectory(prefix="proj-bench-growth-") as scratch:
            val_size = 5_000  # MNISTDataModule's default: the training split is `base * scale` images
            write_synthetic_mnist(scratch, num_train=base * scale + val_size, num_test=100)
            for pipeline in ("resident", "torchvision"):
                row = measure(scratch, pipeline)
                first = results.get(pipeline, {}).get("1x", row)
                row["time_growth"] = row["epoch_seconds"] / first["epoch_seconds"]
                row["memory_growth"] = row["peak_rss_mb"] / first["peak_rss_mb"]
                results.setdefault(pipeline, {})[f"{scale}x"] = {"images": base * scale, **row}
                print(
                    f"{pipeline:<13}{base * scale:>8}{row['epoch_seconds']:>9.2f}{row['time_growth']:>8.2f}"
                    f"{row['peak_rss_mb']:>13.0f}{row['memory_growth']:>10.2f}"
                )
    return results


def epoch_table(
    data_dir: str, models: Sequence[str], batch_size: int | None, epochs: int, workers: int, variants: Sequence[str]
) -> dict[str, Any]:
    """Seconds of a training epoch, each variant of each model (see the module's docstring)."""
    source = "real MNIST"
    if not has_mnist(data_dir):
        data_dir, source = tempfile.mkdtemp(prefix="proj-bench-"), "synthetic MNIST-sized data"
        write_synthetic_mnist(data_dir, num_train=60_000, num_test=10_000)
    pl.seed_everything(0, verbose=False)
    data = MNISTDataModule(data_dir, pipeline="resident")
    data.setup("fit")
    train_split, val_split = data.train_set, data.val_set
    assert isinstance(train_split, tuple) and isinstance(val_split, tuple)  # the resident pipeline's tensors
    train_images, train_labels = train_split
    samples = len(train_labels)
    print(
        f"{source} in {data_dir}: {samples} training images per epoch, "
        f"{torch.get_num_threads()} threads, fastest of {epochs} epochs"
    )

    results: dict[str, Any] = {"data": source, "samples_per_epoch": samples}
    for name in models:
        pristine, config_batch_size = build_model(name)
        size = batch_size or config_batch_size
        timers: dict[str, Callable[[ImageClassifier], list[float]]] = {
            "a_classic": partial(time_classic, data_dir=data_dir, workers=workers, batch_size=size),
            "b_torchvision": partial(time_proj, data_dir=data_dir, pipeline="torchvision", batch_size=size),
            "c_resident": partial(time_proj, data_dir=data_dir, pipeline="resident", batch_size=size),
            "d_ceiling": partial(time_ceiling, images=train_images, labels=train_labels, batch_size=size),
            "e_fit": lambda model: time_fit(name, data_dir, size),  # noqa: B023 (called in this iteration)
            "f_ceiling_val": partial(
                time_ceiling_with_validation,
                images=train_images,
                labels=train_labels,
                val=val_split,
                batch_size=size,
            ),
            "g_lightning_val": partial(time_lightning, data_dir=data_dir, batch_size=size),
        }
        # Rounds of one epoch per variant, interleaved, so that drift in the machine's speed (other load,
        # clock changes) reaches every variant alike; each epoch starts from the same initial weights.
        epoch_times: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(epochs):
            for variant in variants:
                epoch_times[variant] += timers[variant](copy.deepcopy(pristine))
        seconds = {variant: min(times) for variant, times in epoch_times.items()}
        ratios = {
            f"{top[0]}/{bottom[0]}": seconds[top] / seconds[bottom]
            for top, bottom in RATIOS
            if top in seconds and bottom in seconds
        }
        results[name] = {
            "batch_size": size,
            "epoch_seconds": seconds,
            # Every timed epoch: on a shared machine the spread says how far to trust the fastest.
            "every_epoch_seconds": epoch_times,
            "samples_per_second": {k: samples / v for k, v in seconds.items()},
            "ratios": ratios,
        }
        print(f"\n{name} (batch {size}): {'variant':<15}{'epoch s':>9}{'samples/s':>11}")
        for variant, value in seconds.items():
            print(f"{'':<5}{variant:<15}{value:>9.2f}{samples / value:>11.0f}")
        print("     " + "   ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
        if "c/a" in ratios:
            print(f"     resident is {1 / ratios['c/a']:.1f}x faster than the classic loop")
    return results


def run(
    data_dir: str = "data",
    models: Sequence[Model] = ("mlp", "cnn"),
    batch_size: int | None = None,
    epochs: int = 3,
    num_workers: int = 2,
    variants: Sequence[Variant] = VARIANTS,
    output: str = "bench.json",
    time_to_accuracy: Sequence[str] | None = None,
    cache: bool = False,
    cache_images: int = 50_000,
    growth: int | None = None,
    batch_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Measure what the flags ask for (by default the epoch table), print it and write it to `output` as JSON.

    Args:
        data_dir: folder holding MNIST/raw (else synthetic data)
        models: configs/<model>.yaml to time (--growth and --batch_sizes take the first)
        batch_size: for every model (default: each config's own)
        epochs: rounds of one epoch per variant; the fastest counts
        num_workers: DataLoader workers of the classic loop and (b)
        variants: what to time
        output: where the figures are written as JSON
        time_to_accuracy: config files to race to 98% and 99% test accuracy
        cache: time and size the resident cache of four data sets
        cache_images: training images of the two 3x32x32 sets of --cache
        growth: BASE: epoch time and memory at 1-8x BASE images
        batch_sizes: train configs/<model>.yaml at these batch sizes
    """
    if batch_sizes:
        if not has_mnist(data_dir):
            raise UserError(f"--batch_sizes needs real MNIST in {data_dir}: set --data_dir")
        report = batch_table(str(CONFIGS / f"{models[0]}.yaml"), data_dir, batch_sizes)
    elif growth:
        report = growth_report(growth, models[0])
    elif cache:
        report = cache_report(data_dir, cache_images)
    elif time_to_accuracy:
        if not has_mnist(data_dir):
            raise UserError(f"--time_to_accuracy needs real MNIST in {data_dir}: set --data_dir")
        report = race_to_accuracy(time_to_accuracy, data_dir, num_workers)
    else:
        report = epoch_table(data_dir, models, batch_size, epochs, num_workers, variants)
    Path(output).write_text(json.dumps(report, indent=2))
    print(f"\nfigures written to {output}")
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m proj.bench`: a bad flag or value is one `error: ...` line and exit status 2, as in proj's CLI."""
    return run_command(run, argv, "python -m proj.bench", __doc__)


if __name__ == "__main__":
    main()
