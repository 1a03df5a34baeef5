"""Everything needed to reproduce a run, written into its folder beside the checkpoints (and given to its trackers)."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from proj.outputs import atomic_output
from proj.trackers import log_config

PACKAGES = ("proj", "torch", "torchvision", "lightning", "torchmetrics", "jsonargparse", "tensorboard", "numpy")


def git_state(folder: Path) -> dict[str, Any]:
    """The commit checked out in `folder` and whether files differed from it; empty outside a git clone."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True)
        return result.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


NOT_SETTINGS = ("ckpt_path", "config", "weights_from", "trainer.logger.init_args.version")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"trainer.max_epochs": 3, ...} from nested mappings; other values (lists included) are leaves."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_values(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings that differ between two configs, by their flag names, without the ones naming files or the
    run folder itself."""
    old, new = flatten(before), flatten(after)
    return {
        key: {"before": old.get(key), "after": new.get(key)}
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and key not in NOT_SETTINGS
    }


class RunRecord(SaveConfigCallback):
    """Saves the resolved `config.yaml` (Lightning's SaveConfigCallback) and `run.yaml` beside it.

    run.yaml holds what the config cannot: the seed torch actually used (also when `seed_everything` is
    false), library versions, the git commit of this code (and whether it had uncommitted changes), the
    command line and the hardware. `python -m proj test --config <run>/config.yaml --ckpt_path
    <run>/checkpoints/<best>.ckpt` then evaluates the same model on the same data.

    A continued run keeps the config.yaml it started with; each continuation is appended to run.yaml's
    `continued` list (time, command, checkpoint, changed settings).

    Args:
        continues: the checkpoint (`path`, `epoch`, `global_step`) a fit continues in its own run folder.
        weights_from: the checkpoint a new run took its starting weights from (`--weights_from`).
    """

    def __init__(
        self,
        *args: Any,
        continues: dict[str, Any] | None = None,
        weights_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.continues, self.weights_from = continues, weights_from

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.run_dir = trainer.log_dir  # on every rank: it broadcasts, and save_config runs on rank 0 only
        config_file = Path(self.run_dir or ".") / self.config_filename
        if self.continues is not None and self.run_dir is not None and config_file.is_file():
            if trainer.is_global_zero and not self.already_saved:  # once, not again for the test after the fit
                self.record_continuation(config_file)
                self.log_config(trainer)
            self.already_saved = True
            return
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.run_dir is None:
            return
        record = {
            "stage": str(getattr(stage, "value", stage)),
            "seed_everything": self.config.get("seed_everything"),
            "torch_initial_seed": torch.initial_seed(),
            "command": [Path(sys.executable).name, *sys.argv],
            **({"weights_from": self.weights_from} if self.weights_from else {}),
            "git": git_state(Path(__file__).resolve().parent),
            "versions": package_versions(),
            "torch_build": str(torch.__version__),  # e.g. 2.14.1+cu130: which CUDA the wheel was built for
            "hardware": {
                "platform": platform.platform(),
                "accelerator": type(trainer.accelerator).__name__,
                "devices": trainer.num_devices,
                "nodes": trainer.num_nodes,
                "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
        }
        with atomic_output(Path(self.run_dir) / "run.yaml") as partial:
            partial.write_text(yaml.safe_dump(record, sort_keys=False))
        self.log_config(trainer)

    def log_config(self, trainer: Trainer) -> None:
        """The config to the trackers too (an MLflow artifact, W&B's run config)."""
        config_file = Path(str(self.run_dir)) / self.config_filename
        log_config(trainer.loggers, config_file, yaml.safe_load(config_file.read_text()))

    def record_continuation(self, config_file: Path) -> None:
        """Appends this continuation to run.yaml; config.yaml stays the record of how the run started."""
        run_file = config_file.with_name("run.yaml")
        record = (yaml.safe_load(run_file.read_text()) if run_file.is_file() else None) or {}
        started_with = yaml.safe_load(config_file.read_text()) or {}
        now = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        assert self.continues is not None
        record.setdefault("continued", []).append(
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": [Path(sys.executable).name, *sys.argv],
                "checkpoint": self.continues,
                "changed": changed_values(started_with, now),
            }
        )
        with atomic_output(run_file) as partial:
            partial.write_text(yaml.safe_dump(record, sort_keys=False))
