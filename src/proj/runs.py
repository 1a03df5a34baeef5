"""A run's folder: where a new run goes (logs/<data>/version_N, claimed race-free), and which run a checkpoint
continues (`--ckpt_path last`, `--ckpt_path <run>/checkpoints/X.ckpt` with or without that run's config.yaml).

These work on the parsed config (a jsonargparse Namespace) before anything is built; cli.py calls them.
"""

from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import Namespace

from proj.checkpoints import find_last, version_dirs
from proj.errors import UserError

CKPT_KEYWORDS = ("best", "last", "hpc", "registry")  # --ckpt_path values that are Lightning's words, not files


def checkpoint_file(ckpt_path: str | None) -> Path | None:
    """--ckpt_path as a file, or None when absent or one of Lightning's keywords ("best", "hpc", "registry:..")."""
    if ckpt_path is None or ckpt_path in CKPT_KEYWORDS or str(ckpt_path).startswith("registry:"):
        return None
    return Path(ckpt_path)


def with_run_config(argv: list[str]) -> list[str]:
    """`SUBCOMMAND --ckpt_path <run>/checkpoints/X.ckpt` without `--config`: the run's own config.yaml first, so
    that it goes on with its data and Trainer settings (flags given still override them; Lightning #16014)."""
    if argv[:1] not in (["fit"], ["validate"], ["test"], ["predict"]):
        return argv
    ckpt_path = None
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag == "--config":
            return argv
        if flag == "--ckpt_path":
            ckpt_path = value if equals else next(iter(argv[index + 1 : index + 2]), None)
    if (checkpoint := checkpoint_file(ckpt_path)) is None:
        return argv
    config_file = checkpoint.parent.parent / "config.yaml"
    if not config_file.is_file():
        print(
            f"No config.yaml beside {ckpt_path}: the model comes from the checkpoint, the data and Trainer settings "
            "are the defaults (pass --config <its run>/config.yaml if it has one elsewhere)."
        )
        return argv
    print(f"Settings from {config_file}, the run that wrote {ckpt_path}; flags given override them.")
    return [argv[0], "--config", str(config_file), *argv[1:]]


def logger_args(config: Namespace) -> Namespace | None:
    """The logger's init_args (save_dir, name, version), if the run has a logger given by class."""
    logger = config.get("trainer", Namespace()).get("logger")
    return logger.get("init_args") if isinstance(logger, Namespace) else None


def name_runs_after_data(config: Namespace) -> None:
    """Runs of a logger without a name go under the data set's: logs/mnist, logs/fashionmnist, logs/imagefolder..."""
    init_args = logger_args(config)
    if init_args is not None and "name" in init_args and init_args.name is None:
        data_class = str(config.get("data", Namespace()).get("class_path") or "")
        init_args.name = data_class.rpartition(".")[2].removesuffix("DataModule").lower() or "runs"


def logger_root(config: Namespace) -> Path | None:
    """logs/mnist for the default TensorBoardLogger (any logger with save_dir and name)."""
    init_args = logger_args(config)
    if init_args is None or init_args.get("save_dir") is None:
        return None
    return (Path(init_args.save_dir) / (init_args.get("name") or "")).resolve()


def find_last_checkpoint(config: Namespace) -> Path:
    """What `--ckpt_path last` means: the last.ckpt of the run whose config.yaml was given (`--config
    <run>/config.yaml`), else of --checkpoint.dirpath, else of the newest run under the logger's folder."""
    for config_file in reversed(config.get("config") or []):
        if (last := Path(str(config_file)).parent / "checkpoints" / "last.ckpt").is_file():
            return last
    if config.checkpoint.get("dirpath") and (last := Path(config.checkpoint.dirpath) / "last.ckpt").is_file():
        return last
    root = logger_root(config)
    if root is None:
        raise UserError("--ckpt_path last needs the logger's save_dir (or --checkpoint.dirpath) to look in.")
    return find_last(root)


def continue_in_its_run(config: Namespace) -> bool:
    """A fit resumed from a checkpoint of a run under the logger's folder writes on in that run's folder (whose
    config.yaml stays): the logger is set to that version. Whether it is such a continuation."""
    ckpt_path = checkpoint_file(config.get("ckpt_path"))
    if ckpt_path is None:
        return False
    run = ckpt_path.resolve().parent.parent
    if logger_root(config) != run.parent or not run.name.startswith("version_"):
        return False
    config.trainer.logger.init_args.version = int(run.name.removeprefix("version_"))
    return True


class RunFolder:
    """The version_N folder a new run claims by creating it, which only one process can do: two runs started
    together under one logger root get distinct folders (the logger's own choice, the highest existing number
    plus one, races). A run stopped before writing anything leaves no trace: `release` removes the folder if it
    is still empty, and gives the folder that held it back its modification time."""

    def __init__(self, config: Namespace) -> None:
        self.created: list[Path] = []  # deepest first
        init_args, root = logger_args(config), logger_root(config)
        if root is None or init_args is None or "version" not in init_args or init_args.version is not None:
            return
        if int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)):
            return  # a process launched for distributed training: rank 0 chose the folder and broadcasts it
        missing = [folder for folder in (root, *root.parents) if not folder.exists()]
        existing = (missing[-1] if missing else root / "version_").parent
        self.existing_times = (existing, existing.stat())
        root.mkdir(parents=True, exist_ok=True)
        versions = version_dirs(root)
        version = int(versions[-1].name.removeprefix("version_")) + 1 if versions else 0
        while True:
            try:
                (root / f"version_{version}").mkdir()
                break
            except FileExistsError:
                version += 1
        init_args.version = version
        self.created = [root / f"version_{version}", *missing]

    def release(self) -> None:
        try:
            for folder in self.created:
                folder.rmdir()  # only an empty one
        except OSError:
            return  # the run wrote into its folder: it stays
        if self.created:
            folder, times = self.existing_times
            os.utime(folder, ns=(times.st_atime_ns, times.st_mtime_ns))
