"""`proj.transfer`: the tasks it writes from Fashion-MNIST's IDX files, and its experiment end to end at a tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import user_error
from proj import transfer
from proj.data import FashionMNISTDataModule, ImageFolderDataModule
from proj.data.synthetic import write_synthetic_fashion_mnist

SOURCE = ["Coat", "Dress", "Pullover", "T-shirt_top", "Trouser"]  # Fashion's classes 0-4, as folders (sorted)
TARGET = ["Ankle boot", "Bag", "Sandal", "Shirt", "Sneaker"]  # 5-9


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory):
    """Synthetic Fashion-MNIST: 100 training and 20 test images a class."""
    return write_synthetic_fashion_mnist(tmp_path_factory.mktemp("fashion"), num_train=1000, num_test=200)


def files(folder):
    return {path.parent.name: sorted(p.name for p in path.parent.iterdir()) for path in folder.glob("*/*.png")}


def test_writes_the_class_folders_and_counts_it_claims(fashion_dir, tmp_path):
    root = tmp_path / "tasks"
    argv = ["--data_dir", str(fashion_dir), "--root", str(root), "--only_data"]
    report = transfer.main([*argv, "--source_per_class", "30", "--target_per_class", "4", "10"])

    assert set(report["tasks"]) == {"source", "target-4", "target-10"}
    expected = {
        "source": ({name: 30 for name in SOURCE}, {name: 20 for name in SOURCE}),
        "target-4": ({name: 4 for name in TARGET}, {name: 20 for name in TARGET}),
        "target-10": ({name: 10 for name in TARGET}, {name: 20 for name in TARGET}),
    }
    for task, (train, test) in expected.items():
        assert report["tasks"][task]["images_per_class"] == {"train": train, "test": test}
        for split, counts in (("train", train), ("test", test)):  # what is on disk is what the report says
            on_disk = {name: len(names) for name, names in files(root / task / split).items()}
            assert on_disk == counts, (task, split)
    small, large = files(root / "target-4" / "train"), files(root / "target-10" / "train")
    assert all(set(small[name]) < set(large[name]) for name in TARGET)  # the smaller set is part of the larger

    # Each file is the IDX image of its name, in the class folder of its label.
    data = FashionMNISTDataModule(data_dir=fashion_dir, download=False)
    images, labels = data.read_split("train")
    for task in ("source", "target-10"):
        for path in (root / task / "train").glob("*/*.png"):
            index = int(path.stem)
            assert transfer.folder_name(data.CLASS_NAMES[int(labels[index])]) == path.parent.name
            assert np.array_equal(np.asarray(Image.open(path)), images[index, 0].numpy())

    # proj.fit's folder data module reads them as 1x28x28 grayscale, 5 classes, with the test split.
    folder = ImageFolderDataModule(root=str(root / "target-10"))
    assert folder.input_shape == (1, 28, 28)
    assert folder.class_names == tuple(TARGET)
    assert folder.has_test_split()

    # The same command again reuses the folder; other settings are refused, the folder kept.
    before = (root / "source" / "train" / "Coat").stat().st_mtime_ns
    assert transfer.main([*argv, "--source_per_class", "30", "--target_per_class", "4", "10"]) == report
    assert (root / "source" / "train" / "Coat").stat().st_mtime_ns == before


def test_bad_settings_are_one_line_each(fashion_dir, tmp_path, capsys):
    root = tmp_path / "tasks"
    argv = ["--data_dir", str(fashion_dir), "--root", str(root), "--only_data"]
    transfer.main([*argv, "--source_per_class", "5", "--target_per_class", "2"])
    err = user_error(capsys, transfer.main, *argv, "--source_per_class", "6", "--target_per_class", "2")
    assert "holds tasks written with other settings" in err and "choose another --root" in err
    assert len(list((root / "source" / "train" / "Coat").iterdir())) == 5  # kept

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my own files")
    err = user_error(capsys, transfer.main, "--data_dir", str(fashion_dir), "--root", str(tmp_path / "mine"))
    assert "was not written by python -m proj.transfer" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my own files"

    err = user_error(capsys, transfer.main, *argv, "--target_classes", "4", "5", "6")
    assert "share [4]" in err
    other = ["--data_dir", str(fashion_dir), "--root", str(tmp_path / "new"), "--source_per_class", "5"]
    err = user_error(capsys, transfer.main, *other, "--target_per_class", "101")  # after the source is written
    assert "101 images a class asked for" in err and "has 100" in err
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()  # nothing half-written
    err = user_error(capsys, transfer.main, "--data_dir", str(tmp_path / "none"), "--root", str(tmp_path / "new"))
    assert "FashionMNIST not found" in err


@pytest.mark.slow
def test_experiment_runs_every_arm_and_reports_them(fashion_dir, tmp_path, capsys):
    """Tiny: 20 source and 10 target images a class, one epoch each, one seed; each arm from the source's checkpoint."""
    output = tmp_path / "transfer.json"
    report = transfer.main(
        [
            *("--data_dir", str(fashion_dir), "--root", str(tmp_path / "tasks"), "--output", str(output)),
            *("--source_per_class", "20", "--target_per_class", "10", "--pretrain_epochs", "1", "--epochs", "1"),
            *("--seeds", "1", "--arms", "scratch", "finetune", "frozen", "--logs", str(tmp_path / "logs")),
            *("--", "--trainer.limit_test_batches", "1", "--data.num_workers", "0"),
        ]
    )
    assert json.loads(output.read_text()) == report
    source = report["source"]
    assert source["command"].startswith("python -m proj.fit --model TimmClassifier --model.arch mobilenetv3_small_050")
    assert source["checkpoint"].startswith(str(tmp_path / "logs" / "source"))
    runs = {run["arm"]: run for run in report["runs"]}
    assert sorted(runs) == ["finetune", "frozen", "scratch"]
    assert "--model.weights" not in runs["scratch"]["command"]
    assert f"--model.weights {source['checkpoint']}" in runs["finetune"]["command"]
    assert "--model.freeze_backbone=true" in runs["frozen"]["command"]
    assert all(0 <= run["test_acc"] <= 1 and run["images_per_class"] == 10 for run in runs.values())
    row = report["summary"][0]
    assert row["images_per_class"] == 10 and row["test_acc"]["finetune"] == {
        "mean": runs["finetune"]["test_acc"],
        "sd": None,
    }
    out = capsys.readouterr().out
    assert "| images a class | epochs | scratch | finetune | frozen |" in out
    assert f"| 10 | 1 | {runs['scratch']['test_acc']:.2%} |" in out
