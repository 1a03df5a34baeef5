"""`python -m proj.transfer` (`make bench-transfer`): does pretraining pay on a task with few labels?

Two tasks made from Fashion-MNIST, as class folders a user could have made (ImageFolderDataModule reads them):

    ROOT/source/{train,test}/<class>/*.png     Fashion's classes 0-4 (T-shirt_top, Trouser, Pullover, Dress, Coat):
                                               --source_per_class training images a class, all 1,000 test images
    ROOT/target-N/{train,test}/<class>/*.png   Fashion's classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot): N
                                               training images a class (each --target_per_class; the smaller sets
                                               are the first images of the larger), all 1,000 test images a class

Then a timm network with the small-input stem (--arch) is pretrained on the source task, and trained on each
target set, with --seeds seeds, in each of the --arms, all for the same number of epochs (--epochs):
    scratch     from random weights
    finetune    from the source's best checkpoint (`--model.weights CKPT`) with a new head (`--model.reset_head
                true`: the source's answers other classes), every layer trained
    frozen      the same start, the backbone frozen (`--model.freeze_backbone true`): only the head trains
    gradual     the same start under Lightning's BackboneFinetuning (configs/finetune.yaml: the head alone, then
                the backbone joins at a tenth of the rate from epoch 2)
Each training is `python -m proj.fit` with the flags printed before it (run in this process: the same CLI), its
validation split held out of the target's few images (10%), its test on all the target's test images with the
best checkpoint by val/acc. At the end: one table (test accuracy, mean ± sd over the seeds) and --output as JSON.

The pretraining runs once (seed 0): the seeds vary the target's trainings, not the source model. The images of
each task are drawn once (--data_seed): all arms and seeds see the same few labelled images. Flags after `--` go
to every fit (`-- --trainer.accelerator gpu`, `-- --data.num_workers 0`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch import Tensor

from proj.cli import ProjCLI
from proj.commands import run_command
from proj.data import FashionMNISTDataModule
from proj.errors import UserError
from proj.outputs import atomic_output, check_output

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROG = "python -m proj.transfer"
MARKER = "transfer.json"  # in ROOT: what was written there, so that a second run reuses it
Arm = Literal["scratch", "finetune", "frozen", "gradual"]
ARMS: tuple[Arm, ...] = get_args(Arm)
# The fits run by this tool print no progress bar (a line per fit instead); a user's own fit may drop these.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def folder_name(class_name: str) -> str:
    """A class name as a folder name (Fashion's "T-shirt/top" holds a slash)."""
    return class_name.replace("/", "_")


def sample(labels: Tensor, classes: Sequence[int], count: int | None, generator: torch.Generator) -> dict[int, Tensor]:
    """Per class, the indices of `count` of its images (all of them for None), in a random order drawn once, so that
    a smaller count takes the first images of a larger one."""
    chosen = {}
    for label in classes:
        indices = (labels == label).nonzero()[:, 0]
        indices = indices[torch.randperm(len(indices), generator=generator)]
        if count is not None and count > len(indices):
            raise UserError(f"{count} images a class asked for, but Fashion-MNIST's class {label} has {len(indices)}.")
        chosen[label] = indices[:count]
    return chosen


def write_split(folder: Path, images: Tensor, chosen: dict[int, Tensor], names: Sequence[str]) -> dict[str, int]:
    """`folder/<class>/NNNNN.png` for the chosen images (NNNNN: their index in the IDX file); the count per class."""
    counts = {}
    for label, indices in chosen.items():
        class_folder = folder / folder_name(names[label])
        class_folder.mkdir(parents=True)
        for index in indices.tolist():
            Image.fromarray(images[index, 0].numpy()).save(class_folder / f"{index:05d}.png")
        counts[folder_name(names[label])] = len(indices)
    return counts


def write_tasks(
    data_dir: str,
    root: str,
    source_classes: Sequence[int],
    target_classes: Sequence[int],
    source_per_class: int | None,
    target_per_class: Sequence[int],
    data_seed: int,
) -> dict[str, Any]:
    """Write the source task and a target task per count into `root` (see the module's docstring) from the Fashion-MNIST
    IDX files in `data_dir`, unless `root` already holds them (its MARKER says so); what it holds: each task's folder
    and its images per class, per split."""
    counts = sorted(set(target_per_class))
    settings: dict[str, Any] = {
        "data_dir": str(Path(data_dir).resolve()),
        "source_classes": list(source_classes),
        "target_classes": list(target_classes),
        "source_per_class": source_per_class,
        "target_per_class": counts,
        "data_seed": data_seed,
    }
    check_classes(source_classes, target_classes)
    folder, marker = Path(root), Path(root) / MARKER
    if marker.is_file():
        written = json.loads(marker.read_text())
        if written["settings"] == settings:
            return dict(written["tasks"])
        raise UserError(
            f"--root {root!r} holds tasks written with other settings ({MARKER}: {written['settings']}): remove the "
            "folder, or choose another --root."
        )
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--root {root!r} exists and was not written by {PROG}: choose another --root.")
    data = FashionMNISTDataModule(data_dir=data_dir, download=False, val_size=1)  # read whole: no split
    data.check()  # a clear error for missing or corrupt files
    names = data.CLASS_NAMES
    splits = {split: data.read_split(split) for split in ("train", "test")}
    partial = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a run stopped midway left
    tasks: dict[str, Any] = {}
    try:
        for task, classes, count in [
            ("source", source_classes, source_per_class),
            *[(f"target-{count}", target_classes, count) for count in counts],
        ]:
            written = {}
            for split, found in splits.items():
                assert found is not None  # Fashion-MNIST has both splits
                images, labels = found
                generator = torch.Generator().manual_seed(data_seed)  # one order for every count: smaller sets nest
                chosen = sample(labels, classes, count if split == "train" else None, generator)
                written[split] = write_split(partial / task / split, images, chosen, names)
            tasks[task] = {"root": str(folder / task), "images_per_class": written}
        (partial / MARKER).write_text(json.dumps({"settings": settings, "tasks": tasks}, indent=2))
        if folder.is_dir():
            folder.rmdir()  # empty (checked above): the rename below takes its place
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return tasks


def check_classes(source: Sequence[int], target: Sequence[int]) -> None:
    for flag, classes in (("--source_classes", source), ("--target_classes", target)):
        if len(set(classes)) < 2 or not all(0 <= label <= 9 for label in classes):
            raise UserError(f"{flag} {list(classes)}: give at least two distinct Fashion-MNIST classes, from 0 to 9.")
    if shared := sorted(set(source) & set(target)):
        raise UserError(f"--source_classes and --target_classes share {shared}: a transfer task needs other classes.")


def fit(flags: list[str], what: str) -> dict[str, Any]:
    """`python -m proj.fit FLAGS` in this process: its best checkpoint's test accuracy, the checkpoint, its seconds."""
    command = f"python -m proj.fit {shlex.join(flags)}"
    print(f"\n{what}: {command}", flush=True)
    start = time.perf_counter()
    cli = ProjCLI(args=["fit", "--test_after_fit=true", *flags, *QUIET])
    seconds = time.perf_counter() - start
    checkpoint = cli.trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    accuracy = float(cli.trainer.callback_metrics["test/acc"])
    print(f"{what}: test accuracy {accuracy:.2%} in {seconds:.0f} s", flush=True)
    return {"command": command, "test_acc": accuracy, "checkpoint": best, "seconds": round(seconds, 1)}


def arm_flags(arm: Arm, checkpoint: str) -> list[str]:
    """What each arm adds to the target's fit."""
    weights = ["--model.weights", checkpoint, "--model.reset_head=true"]  # a new task's head, not the source's
    return {
        "scratch": [],
        "finetune": weights,
        "frozen": [*weights, "--model.freeze_backbone=true"],
        "gradual": [*weights, "--config", str(CONFIGS / "finetune.yaml")],
    }[arm]


def summary(accuracies: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (None for one seed)."""
    sd = statistics.stdev(accuracies) if len(accuracies) > 1 else None
    return {"mean": statistics.fmean(accuracies), "sd": sd}


def percent(stats: dict[str, float | None]) -> str:
    mean, sd = stats["mean"], stats["sd"]
    assert mean is not None
    return f"{mean:.2%}" + (f" ± {sd:.2%}" if sd is not None else "")


def table(report: dict[str, Any]) -> str:
    """The target's rows: images a class, epochs, then each arm's test accuracy over the seeds."""
    arms = report["arms"]
    lines = [
        f"| images a class | epochs | {' | '.join(arms)} |",
        f"| --- | --- |{' --- |' * len(arms)}",
    ]
    for row in report["summary"]:
        cells = " | ".join(percent(row["test_acc"][arm]) for arm in arms)
        lines.append(f"| {row['images_per_class']} | {report['epochs']} | {cells} |")
    return "\n".join(lines)


def run(
    data_dir: str = "data",
    root: str = "data/transfer",
    arch: str = "mobilenetv3_small_050",
    source_classes: Sequence[int] = (0, 1, 2, 3, 4),
    target_classes: Sequence[int] = (5, 6, 7, 8, 9),
    source_per_class: int | None = 1000,
    target_per_class: Sequence[int] = (50, 100),
    data_seed: int = 0,
    pretrain_epochs: int = 10,
    epochs: int = 20,
    seeds: int = 3,
    arms: Sequence[Arm] = ("scratch", "finetune", "frozen"),
    lr: float = 0.01,
    batch_size: int = 16,
    threads: int | None = None,
    logs: str = "logs/transfer",
    output: str = "bench-transfer.json",
    only_data: bool = False,
    fit_flags: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the tasks, pretrain, train every arm on every target set with every seed; print the table, write --output.

    Args:
        data_dir: folder holding FashionMNIST/raw/*-ubyte
        root: where the tasks' class folders are written (reused when written with the same settings)
        arch: the timm architecture (TimmClassifier's --model.arch)
        source_classes: Fashion-MNIST classes of the source task
        target_classes: Fashion-MNIST classes of the target task
        source_per_class: training images a class of the source task (null: all 6,000)
        target_per_class: training images a class of each target set
        data_seed: which images are drawn
        pretrain_epochs: epochs on the source task
        epochs: epochs of every target training, whatever the arm
        seeds: target trainings per arm and set, with --seed_everything 0, 1, ...
        arms: scratch, finetune, frozen, gradual (see above)
        lr: Adam's learning rate in every fit (0.01: the best of 0.001, 0.003 and 0.01 for scratch and finetune alike)
        batch_size: of every fit
        threads: torch's compute threads (default: torch's choice); 1 on a machine shared with other work, where
            two OpenMP threads wait for each other whenever one core is taken
        logs: the fits' TensorBoard runs and checkpoints: LOGS/source, LOGS/target-N-ARM
        output: the results as JSON
        only_data: write the tasks and stop
        fit_flags: flags for every fit: what follows `--` on the command line
    """
    for flag, value in (("--pretrain_epochs", pretrain_epochs), ("--epochs", epochs), ("--seeds", seeds)):
        if value < 1:
            raise UserError(f"{flag} {value}: give at least 1.")
    if not target_per_class or min(target_per_class) < 2:
        raise UserError(f"--target_per_class {list(target_per_class)}: give counts of at least 2 images a class.")
    output_path = check_output(output, "--output")
    if threads is not None:
        torch.set_num_threads(threads)
    start, load = time.perf_counter(), list(os.getloadavg())
    tasks = write_tasks(data_dir, root, source_classes, target_classes, source_per_class, target_per_class, data_seed)
    for task in tasks.values():
        counts = task["images_per_class"]
        print(
            f"{task['root']}: {', '.join(counts['train'])}; {per_class(counts['train'])} training images a class, "
            f"{per_class(counts['test'])} test images a class"
        )
    if only_data:
        return {"tasks": tasks}

    def flags(task: str, name: str, epochs: int, seed: int) -> list[str]:
        return [
            *("--model", "TimmClassifier", "--model.arch", arch, "--model.optimizer", "Adam", "--model.optimizer.lr"),
            *(str(lr), "--data", "ImageFolderDataModule", "--data.root", tasks[task]["root"], "--data.batch_size"),
            *(str(batch_size), "--trainer.max_epochs", str(epochs), "--seed_everything", str(seed)),
            *("--trainer.logger.init_args.save_dir", logs, "--trainer.logger.init_args.name", name),
            *fit_flags,
        ]

    source = fit(flags("source", "source", pretrain_epochs, 0), "pretrain on the source task")
    if not source["checkpoint"]:
        raise UserError("the pretraining saved no best checkpoint to fine-tune from: keep its validation on.")
    runs = []
    for task in (name for name in tasks if name != "source"):
        count = per_class(tasks[task]["images_per_class"]["train"])
        for seed in range(seeds):
            for arm in arms:
                command = [*flags(task, f"{task}-{arm}", epochs, seed), *arm_flags(arm, source["checkpoint"])]
                result = fit(command, f"{task} {arm} seed {seed}")
                runs.append({"task": task, "images_per_class": count, "arm": arm, "seed": seed, **result})
    report: dict[str, Any] = {
        "arch": arch,
        "lr": lr,
        "batch_size": batch_size,
        "pretrain_epochs": pretrain_epochs,
        "epochs": epochs,
        "seeds": list(range(seeds)),
        "arms": list(arms),
        "tasks": tasks,
        "source": source,
        "runs": runs,
        "summary": [
            {
                "images_per_class": count,
                "test_acc": {
                    arm: summary([r["test_acc"] for r in runs if r["images_per_class"] == count and r["arm"] == arm])
                    for arm in arms
                },
            }
            for count in sorted({r["images_per_class"] for r in runs})
        ],
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load": [load, list(os.getloadavg())]},
    }
    target = next(task for name, task in tasks.items() if name != "source")["images_per_class"]["test"]
    print(
        f"\n{arch}, pretrained for {pretrain_epochs} epochs on the source task ({source['test_acc']:.2%} of its test "
        f"images); test accuracy on the target task ({len(target)} classes x {per_class(target):,} test images), mean "
        f"± sd over {seeds} seeds:\n"
    )
    print(table(report))
    with atomic_output(output_path) as partial:
        partial.write_text(json.dumps(report, indent=2))
    print(f"\n{report['seconds']:.0f} s in all; figures written to {output}")
    return report


def per_class(counts: dict[str, int]) -> int:
    """The images a class of a split (the smallest class's, should they differ)."""
    return min(counts.values())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m proj.transfer [flags] [-- fit flags]`: a bad flag or value is one `error: ...` line, exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        args, fit_flags = args[: args.index("--")], args[args.index("--") + 1 :]
        args.append(f"--fit_flags={json.dumps(fit_flags)}")
    return run_command(run, args, PROG, __doc__)


if __name__ == "__main__":
    main()
