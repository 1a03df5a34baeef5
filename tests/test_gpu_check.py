"""make gpu-check: says so and passes on a machine without a GPU; the same checks run end to end on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_python
from proj import gpu_check
from proj.data.synthetic import write_synthetic_fashion_mnist, write_synthetic_mnist


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs for real")
def test_without_a_gpu_it_says_so_and_checks_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main([]) == {}
    out = capsys.readouterr().out
    assert "make gpu-check needs a CUDA GPU, and this machine has none" in out
    assert not list(Path.cwd().iterdir())  # no run folder, no file


@pytest.mark.slow
def test_every_check_runs_on_the_cpu(tmp_path: Path) -> None:
    # val_size is 5000 in the configs: enough training images for it, two batches of each kept per epoch.
    data = tmp_path / "data"
    write_synthetic_mnist(data, num_train=5200, num_test=100)
    write_synthetic_fashion_mnist(data, num_train=5200, num_test=100)
    flags = ["--accelerator", "cpu", "--epochs", "1", "--limit_batches", "2", "--data_dir", str(data)]
    result = run_python("-m", "proj.gpu_check", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("CPU, 1 epochs each") :].splitlines()
    rows = {line.split()[0]: line.split() for line in table[2:] if line.strip()}
    assert set(rows) == {"cnn", "timm_small", "cnn_bf16"}
    for name, row in rows.items():
        assert row[-1] == "yes", (name, row)
        assert float(row[1]) > 0  # an epoch was timed
