"""`proj.bench` runs end to end on tiny data and reports every variant and ratio (figures are not asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import MNIST_SHAPE
from proj import bench
from proj.data.synthetic import write_synthetic_mnist
from proj.models import CNNClassifier

pytestmark = pytest.mark.slow


def test_bench_reports_all_variants_and_ratios(tmp_path, capsys):
    data_dir = write_synthetic_mnist(tmp_path / "data", num_train=5300, num_test=100)
    output = tmp_path / "bench.json"
    bench.main(["--data_dir", str(data_dir), "--models", "mlp", "--epochs", "1", "--output", str(output)])

    results = json.loads(output.read_text())
    assert results["samples_per_epoch"] == 300  # the data module's training split, for every variant
    mlp = results["mlp"]
    variants = {"a_classic", "b_torchvision", "c_resident", "d_ceiling", "e_fit", "f_ceiling_val"}
    assert set(mlp["epoch_seconds"]) == variants
    assert all(seconds > 0 for seconds in mlp["epoch_seconds"].values())
    assert mlp["ratios"]["c/d"] == pytest.approx(mlp["epoch_seconds"]["c_resident"] / mlp["epoch_seconds"]["d_ceiling"])
    assert mlp["ratios"]["e/f"] == pytest.approx(mlp["epoch_seconds"]["e_fit"] / mlp["epoch_seconds"]["f_ceiling_val"])
    out = capsys.readouterr().out
    assert "c/a = " in out and "e/f = " in out


def test_time_to_accuracy_needs_real_data(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--data_dir", str(tmp_path), "--time_to_accuracy", "configs/mlp.yaml"])


def test_ceiling_trains_a_cnn_on_the_data_modules_images():
    """(d) takes the training split as the data module holds it: uint8 (N, 1, 28, 28), the layout a CNN needs."""
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = CNNClassifier(**MNIST_SHAPE, channels=(4, 8), hidden_size=16)
    seconds = bench.time_ceiling(model, images, torch.randint(0, 10, (64,)), batch_size=32, epochs=2)
    assert len(seconds) == 2 and all(second > 0 for second in seconds)


def test_cache_report_sizes_every_data_set(tmp_path, capsys):
    """`make bench-cache`: four data sets, each decoded and reloaded in a fresh process; memory is N x C x H x W."""
    data_dir = write_synthetic_mnist(tmp_path / "data", num_train=300, num_test=100)
    output = tmp_path / "cache.json"
    bench.main(["--cache", "--cache_images", "200", "--data_dir", str(data_dir), "--output", str(output)])

    results = json.loads(output.read_text())
    assert list(results) == ["MNIST", "FashionMNIST", "CIFAR-format", "ImageFolder"]
    expected = {"MNIST": (400, [1, 28, 28]), "FashionMNIST": (70_000, [1, 28, 28])}
    expected |= {"CIFAR-format": (240, [3, 32, 32]), "ImageFolder": (200, [3, 32, 32])}
    for name, (count, shape) in expected.items():
        row = results[name]
        assert (row["images"], row["shape"]) == (count, shape), name
        pixels = count * shape[0] * shape[1] * shape[2]
        assert row["memory_mb"] == pytest.approx((pixels + 8 * count) / 2**20), name  # uint8 images, int64 labels
        assert row["decode_seconds"] > 0 and row["load_seconds"] > 0 and row["peak_rss_mb"] > 0
        assert row["cache_file_mb"] >= pixels / 2**20
    assert "decode s" in capsys.readouterr().out


def test_growth_reports_time_and_memory_for_both_pipelines_at_each_scale(tmp_path, capsys):
    output = tmp_path / "growth.json"
    bench.main(["--growth", "1100", "--models", "mlp", "--output", str(output)])  # >= 2 batches of 512
    results = json.loads(output.read_text())
    for pipeline in ("resident", "torchvision"):
        assert list(results[pipeline]) == ["1x", "2x", "4x", "8x"]
        assert [row["images"] for row in results[pipeline].values()] == [1100, 2200, 4400, 8800]
        assert results[pipeline]["1x"]["time_growth"] == 1.0
        assert all(row["epoch_seconds"] > 0 and row["peak_rss_mb"] > 100 for row in results[pipeline].values())
    assert "x memory" in capsys.readouterr().out


def test_batch_table_rules_and_real_data(tmp_path):
    assert {rule: scale(4.0) for rule, scale in bench.LR_RULES.items()} == {"none": 1.0, "linear": 4.0, "sqrt": 2.0}
    with pytest.raises(SystemExit):  # the table's accuracies mean something on real MNIST only
        bench.main(["--data_dir", str(tmp_path), "--batch_sizes", "64"])
