"""Callbacks that record what a `python -m proj.fit` subprocess did, for the slow tests to check (tests/ is on its
PYTHONPATH): which process trained which samples, and in which dtype the layers computed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from proj.data.resident import ResidentLoader


class RankShards(Callback):
    """Each rank writes `folder`/<rank>-<epoch>.json: its process id, and the rank, world size, number of batches
    and sample indices of its (resident) training loader that epoch."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.train_dataloader
        assert isinstance(loader, ResidentLoader)
        shard = {"pid": os.getpid(), "rank": loader.rank, "world_size": loader.world_size, "len": len(loader)}
        shard["indices"] = loader.indices().tolist()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{trainer.global_rank}-{trainer.current_epoch}.json").write_text(json.dumps(shard))


class LayerDtypes(Callback):
    """Writes `path`: the dtypes the outputs of the model's Linear and Conv2d layers had in training steps, by layer
    type (autocast shows there: under bf16-mixed they compute in bfloat16, the weights staying float32)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seen: dict[str, set[str]] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if pl_module.training:
                self.seen.setdefault(type(module).__name__, set()).add(str(output.dtype))

        for module in pl_module.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                module.register_forward_hook(record)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path.write_text(json.dumps({name: sorted(dtypes) for name, dtypes in self.seen.items()}))
