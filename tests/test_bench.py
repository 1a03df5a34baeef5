"""`proj.bench` runs end to end on tiny data and reports every variant and ratio (figures are not asserted)."""

from __future__ import annotations

import json

import pytest

from proj import bench
from proj.data.synthetic import write_synthetic_mnist

pytestmark = pytest.mark.slow


def test_bench_reports_all_variants_and_ratios(tmp_path, capsys):
    data_dir = write_synthetic_mnist(tmp_path / "data", num_train=5300, num_test=100)
    output = tmp_path / "bench.json"
    bench.main(["--data_dir", str(data_dir), "--models", "mlp", "--epochs", "1", "--output", str(output)])

    results = json.loads(output.read_text())
    assert results["samples_per_epoch"] == 300  # the data module's training split, for every variant
    mlp = results["mlp"]
    assert set(mlp["epoch_seconds"]) == {"a_classic", "b_torchvision", "c_resident", "d_ceiling"}
    assert all(seconds > 0 for seconds in mlp["epoch_seconds"].values())
    assert mlp["ratios"]["c/d"] == pytest.approx(mlp["epoch_seconds"]["c_resident"] / mlp["epoch_seconds"]["d_ceiling"])
    assert "c/a = " in capsys.readouterr().out


def test_time_to_accuracy_needs_real_data(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--data_dir", str(tmp_path), "--time_to_accuracy", "configs/mlp.yaml"])
