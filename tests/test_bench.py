"""`proj.bench` runs end to end on tiny data and reports every variant and ratio (figures are not asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import MNIST_SHAPE
from proj import bench
from proj.commands import argparse_words, function_parser
from proj.data.synthetic import write_synthetic_mnist
from proj.models import CNNClassifier


@pytest.mark.slow
def test_bench_reports_all_variants_and_ratios(tmp_path, capsys):
    data_dir = write_synthetic_mnist(tmp_path / "data", num_train=5300, num_test=100)
    output = tmp_path / "bench.json"
    bench.main(["--data_dir", str(data_dir), "--models", "mlp", "--epochs", "1", "--output", str(output)])

    results = json.loads(output.read_text())
    assert results["samples_per_epoch"] == 300  # the data module's training split, for every variant
    mlp = results["mlp"]
    variants = {"a_classic", "b_torchvision", "c_resident", "d_ceiling", "e_fit", "f_ceiling_val", "g_lightning_val"}
    assert set(mlp["epoch_seconds"]) == variants
    # (e) and (g) time the epochs after a first one (2 of a 3-epoch fit), (f) as many; the others one epoch a round.
    assert {name: len(times) for name, times in mlp["every_epoch_seconds"].items()} == {
        name: 2 if name in ("e_fit", "f_ceiling_val", "g_lightning_val") else 1 for name in variants
    }
    assert mlp["epoch_seconds"]["g_lightning_val"] == min(mlp["every_epoch_seconds"]["g_lightning_val"])
    assert all(seconds > 0 for seconds in mlp["epoch_seconds"].values())
    assert mlp["ratios"]["c/d"] == pytest.approx(mlp["epoch_seconds"]["c_resident"] / mlp["epoch_seconds"]["d_ceiling"])
    assert mlp["ratios"]["e/f"] == pytest.approx(mlp["epoch_seconds"]["e_fit"] / mlp["epoch_seconds"]["f_ceiling_val"])
    assert mlp["ratios"]["e/g"] * mlp["ratios"]["g/f"] == pytest.approx(mlp["ratios"]["e/f"])
    out = capsys.readouterr().out
    assert "c/a = " in out and "e/f = " in out and "e/g = " in out


@pytest.mark.slow
def test_time_to_accuracy_needs_real_data(tmp_path):
    with pytest.raises(SystemExit) as exit:
        bench.main(["--data_dir", str(tmp_path), "--time_to_accuracy", "configs/mlp.yaml"])
    assert exit.value.code == 2


@pytest.mark.slow
def test_ceiling_trains_a_cnn_on_the_data_modules_images():
    """(d) takes the training split as the data module holds it: uint8 (N, 1, 28, 28), the layout a CNN needs."""
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = CNNClassifier(**MNIST_SHAPE, channels=(4, 8), hidden_size=16)
    seconds = bench.time_ceiling(model, images, torch.randint(0, 10, (64,)), batch_size=32, epochs=2)
    assert len(seconds) == 2 and all(second > 0 for second in seconds)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_batch_table_rules_and_real_data(tmp_path):
    assert {rule: scale(4.0) for rule, scale in bench.LR_RULES.items()} == {"none": 1.0, "linear": 4.0, "sqrt": 2.0}
    with pytest.raises(SystemExit) as exit:  # the table's accuracies mean something on real MNIST only
        bench.main(["--data_dir", str(tmp_path), "--batch_sizes", "64"])
    assert exit.value.code == 2


def test_batch_table_scales_the_rate_the_config_trains_with():
    """configs/cnn.yaml's OneCycleLR sets the rate from its max_lr: scaling the optimizer's lr would change nothing."""
    cnn, mlp = (bench.configured(str(bench.CONFIGS / f"{name}.yaml")) for name in ("cnn", "mlp"))
    assert bench.learning_rate(cnn) == ("--model.scheduler.init_args.max_lr", 0.1)
    lr = mlp.config.model.init_args.optimizer.init_args.lr
    assert bench.learning_rate(mlp) == ("--model.optimizer.init_args.lr", lr)


def test_flags_take_their_values_as_separate_words():
    """As the Makefile and the README give them: several words for a list, a switch without a value."""
    argv = ["--models", "cnn", "mlp", "--cache", "--batch_sizes", "32", "64", "--time_to_accuracy", "a.yaml", "b.yaml"]
    parser = function_parser(bench.run, "python -m proj.bench", None)
    config = parser.parse_args(argparse_words(argv, bench.run))
    assert config.models == ["cnn", "mlp"] and config.batch_sizes == [32, 64] and config.cache is True
    assert config.time_to_accuracy == ["a.yaml", "b.yaml"]
    assert (config.epochs, config.output, config.growth) == (3, "bench.json", None)  # bench.run's defaults
    assert parser.parse_args(["--cache", "false"]).cache is False


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--epochs", "x"], "--epochs"), (["--models", "mlp", "rnn"], "models"), (["--cache_imgs", "5"], "--cache_imgs")],
)
def test_a_bad_flag_or_value_is_one_error_line(argv, named, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(argv)
    error = capsys.readouterr().err
    assert exit.value.code == 2
    assert error.startswith("error: ") and error.count("\n") == 1 and named in error, error


@pytest.mark.slow
@pytest.mark.parametrize(("interval", "steps"), [("step", 2 * 3), ("epoch", 2)])
def test_classic_loop_sizes_a_schedule_that_spans_the_run(tmp_path, monkeypatch, interval, steps):
    """OneCycleLR without total_steps: the bench gives it the classic loop's length (2 epochs of 3 batches), which
    the loop then steps through to its end (one step past it would raise)."""
    data_dir = write_synthetic_mnist(tmp_path / "data", num_train=5300, num_test=100)  # 300 training images
    config = tmp_path / "onecycle.yaml"
    config.write_text(
        "trainer: {max_epochs: 2}\n"
        "model:\n  class_path: proj.models.MLPClassifier\n  init_args:\n    hidden_sizes: [16]\n"
        f"    scheduler_interval: {interval}\n"
        "    scheduler: {class_path: torch.optim.lr_scheduler.OneCycleLR, init_args: {max_lr: 0.01}}\n"
        "data: {class_path: proj.data.MNISTDataModule, init_args: {batch_size: 100}}\n"
    )
    schedulers = []
    configure = bench.optimizer_and_scheduler

    def spy(model):
        optimizer, scheduler = configure(model)
        schedulers.append(scheduler["scheduler"])
        return optimizer, scheduler

    monkeypatch.setattr(bench, "optimizer_and_scheduler", spy)
    curve = bench.curve_classic(str(config), str(data_dir), workers=0)
    assert len(curve) == 2
    assert [(scheduler.total_steps, scheduler.last_epoch) for scheduler in schedulers] == [(steps, steps)]
