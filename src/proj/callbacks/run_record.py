"""Everything needed to reproduce a run, written into its folder beside the checkpoints."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

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


class RunRecord(SaveConfigCallback):
    """Saves the resolved `config.yaml` (Lightning's SaveConfigCallback) and `run.yaml` beside it.

    run.yaml holds what the config cannot: the seed torch actually used (also when `seed_everything` is
    false), library versions, the git commit of this code (and whether it had uncommitted changes), the
    command line and the hardware. `python -m proj test --config <run>/config.yaml --ckpt_path
    <run>/checkpoints/<best>.ckpt` then evaluates the same model on the same data.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.run_dir = trainer.log_dir  # on every rank: it broadcasts, and save_config runs on rank 0 only
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.run_dir is None:
            return
        record = {
            "stage": str(getattr(stage, "value", stage)),
            "seed_everything": self.config.get("seed_everything"),
            "torch_initial_seed": torch.initial_seed(),
            "command": [Path(sys.executable).name, *sys.argv],
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
        path = Path(self.run_dir) / "run.yaml"
        path.write_text(yaml.safe_dump(record, sort_keys=False))
