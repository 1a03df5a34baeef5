"""A run's folder: where a new run goes (logs/<data>/version_N, claimed race-free), and which run a checkpoint
continues (`--ckpt_path last`, `--ckpt_path <run>/checkpoints/X.ckpt` with or without that run's config.yaml).

These work on the parsed config (a jsonargparse Namespace) before anything is built; cli.py calls them.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

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


# Loggers whose files go to save_dir/name/version_N: the run folder is theirs. Any other logger (MLflow, W&B...)
# keeps its own store, and the run's folder is logs/<data>/version_N beside it.
FOLDER_LOGGERS = (TensorBoardLogger, CSVLogger)


def logger_configs(config: Namespace) -> list[Namespace]:
    """The run's loggers given by class (`trainer.logger` is one, a list, or true/false)."""
    logger = config.get("trainer", Namespace()).get("logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [entry for entry in entries if isinstance(entry, Namespace) and entry.get("class_path")]


def logger_class(entry: Namespace) -> type | None:
    """The class a logger's class_path names, or None when it cannot be imported."""
    module, _, name = str(entry.class_path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def is_logger(entry: Namespace, *classes: type) -> bool:
    found = logger_class(entry)
    return found is not None and issubclass(found, classes)


def folder_loggers(config: Namespace) -> list[Namespace]:
    """The init_args of the TensorBoard and CSV loggers among the run's loggers."""
    return [entry.init_args for entry in logger_configs(config) if is_logger(entry, *FOLDER_LOGGERS)]


def data_name(config: Namespace) -> str:
    """mnist, fashionmnist, imagefolder...: the data module's class name, short."""
    data_class = str(config.get("data", Namespace()).get("class_path") or "")
    return data_class.rpartition(".")[2].removesuffix("DataModule").lower() or "runs"


def name_runs_after_data(config: Namespace) -> None:
    """Runs of a logger without a name go under the data set's: logs/mnist, logs/fashionmnist, logs/imagefolder..."""
    for init_args in folder_loggers(config):
        if "name" in init_args and init_args.name is None:
            init_args.name = data_name(config)


def logger_root(config: Namespace) -> Path | None:
    """The folder holding the runs' version_N folders: the first TensorBoard or CSV logger's save_dir/name
    (logs/mnist by default), else logs/<data> for any other logger; None without a logger."""
    if not logger_configs(config):
        return None
    for init_args in folder_loggers(config):
        if init_args.get("save_dir") is not None:
            return (Path(init_args.save_dir) / (init_args.get("name") or "")).resolve()
    return (Path("logs") / data_name(config)).resolve()


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


def continued_run(config: Namespace) -> Path | None:
    """The run folder a fit resumed from one of its checkpoints writes on in (whose config.yaml stays), if the
    checkpoint is in a run under the logger's folder."""
    ckpt_path = checkpoint_file(config.get("ckpt_path"))
    if ckpt_path is None:
        return None
    run = ckpt_path.resolve().parent.parent
    if logger_root(config) != run.parent or not run.name.startswith("version_"):
        return None
    return run


class RunFolder:
    """The run's folder, logs/<data>/version_N, whatever its loggers: TensorBoard and CSV write into it, MLflow
    and W&B name their run after it (`mnist/version_3`; W&B keeps its files in it), and config.yaml, run.yaml
    and checkpoints go there (RunTrainer.log_dir is `path`).

    A new run claims the folder by creating it, which only one process can do: two runs started together under
    one logger root get distinct folders (the logger's own choice, the highest existing number plus one, races).
    A run stopped before writing anything leaves no trace: `release` removes the folder if it is still empty,
    and gives the folder that held it back its modification time."""

    def __init__(self, config: Namespace, continues: Path | None = None) -> None:
        self.path: Path | None = None
        self.created: list[Path] = []  # deepest first
        self.named: list[tuple[Namespace, str, Any]] = []  # the logger settings set here, as they were
        root = logger_root(config)
        if root is None:
            return
        given = [init_args.version for init_args in folder_loggers(config) if init_args.get("version") is not None]
        if continues is not None:
            self.path = continues
        elif given:
            self.path = root / (given[0] if isinstance(given[0], str) else f"version_{given[0]}")
        elif int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)):
            return  # a process launched for distributed training: rank 0 chose the folder and broadcasts it
        else:
            self.path = self._claim(root)
        self._name_logger_runs(config, self.path)

    def _claim(self, root: Path) -> Path:
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
        self.created = [root / f"version_{version}", *missing]
        return self.created[0]

    def _name_logger_runs(self, config: Namespace, run: Path) -> None:
        """Every logger's run is this run: the folder loggers' version, the trackers' run name, and W&B's files
        (its save_dir; W&B's own default is the working folder)."""
        version = int(run.name.removeprefix("version_")) if re.fullmatch(r"version_\d+", run.name) else run.name
        label = f"{run.parent.name}/{run.name}"
        for entry in logger_configs(config):
            if is_logger(entry, *FOLDER_LOGGERS):
                self._set(entry.init_args, "version", version)
            elif is_logger(entry, MLFlowLogger):
                self._set(entry.init_args, "run_name", label)
            elif is_logger(entry, WandbLogger):
                self._set(entry.init_args, "name", label)
                self._set(entry.init_args, "save_dir", str(run), always=True)

    def _set(self, init_args: Namespace, key: str, value: Any, always: bool = False) -> None:
        if always or init_args.get(key) is None:
            self.named.append((init_args, key, init_args.get(key)))
            init_args[key] = value

    def unname(self) -> None:
        """Once the loggers are built: the config names no run (a rerun with a run's config.yaml makes a new one,
        and a continuation's record lists only the settings the user changed)."""
        for init_args, key, before in self.named:
            init_args[key] = before

    def release(self) -> None:
        try:
            for folder in self.created:
                folder.rmdir()  # only an empty one
        except OSError:
            return  # the run wrote into its folder: it stays
        if self.created:
            folder, times = self.existing_times
            os.utime(folder, ns=(times.st_atime_ns, times.st_mtime_ns))
