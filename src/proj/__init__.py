"""proj: MNIST classifiers with PyTorch Lightning, a template to start from.

data/       LightningDataModules (MNIST): files, splits, the resident and torchvision pipelines
models/     LightningModules: one shared base (steps, metrics, optimizers) and the networks
schedulers  learning-rate schedules beyond torch's own
callbacks/  TensorBoard figures and hparams
cli.py      LightningCLI with this project's defaults; fit.py trains and tests; bench.py measures
"""

import os

import lightning.fabric  # noqa: F401  (sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import; see below)
import torch

# Lightning asks torch to check for CUDA through NVML, so that the check does not initialise CUDA before
# loader workers fork. Without an NVIDIA driver, torch then tries to load NVML again at every check, and
# Adam/AdamW check in every `step()`: 0.2-0.4 ms per step on a CPU-only machine. There, nothing can be
# poisoned by the plain check, so use it.
if not torch.cuda.is_available():
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
