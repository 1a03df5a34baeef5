"""Prediction on models of any data: colour and grayscale images of any size prepared for a 3x32x32 model with
named classes, the CSV's columns, `--preprocess`, and checkpoints that do not describe their data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

import proj.export
import proj.predict
from conftest import info_lines, quick_trainer, user_error
from proj.checkpoints import load_classifier
from proj.data.images import centre_digit, ink, prepare, read_gray, resolve_preprocess
from proj.errors import UserError
from proj.models import CNNClassifier, ImageClassifier, MLPClassifier
from proj.predict import columns, data_description, predict_files
from test_predict import MNIST, SEVEN, draw, read_csv

CLASSES = ["cat", "dog", "owl"]
COLOUR: dict[str, Any] = {
    "class_path": "proj.data.folder.ImageFolderDataModule",
    "input_shape": [3, 32, 32],
    "class_names": CLASSES,
    "mean": [0.5, 0.4, 0.3],
    "std": [0.25, 0.2, 0.3],
    "digits": False,
}
HEADER = ["path", "prediction", "class_index", "confidence", "pcat", "pdog", "powl", "error"]


def save_checkpoint(model: ImageClassifier, path: Path, description: dict[str, Any] | None) -> Path:
    """`model` saved as a checkpoint that load_classifier reads: with the data `description` (None: without one)
    and the class path the CLI records. Batch norm statistics are made non-trivial, so that eval mode matters."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    model.data_description = description
    trainer = quick_trainer()
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"].update(
        _class_path=f"proj.models.{type(model).__name__}", _instantiator="lightning.pytorch.cli.instantiate_module"
    )
    torch.save(checkpoint, path)
    return path


def colour_model() -> CNNClassifier:
    torch.manual_seed(0)
    return CNNClassifier(input_shape=(3, 32, 32), num_classes=3, channels=(4, 8), hidden_size=16)


@pytest.fixture(scope="session")
def colour_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3x32x32 CNN of 3 named classes, as proj.fit would save it on a folder of colour images."""
    return save_checkpoint(colour_model(), tmp_path_factory.mktemp("colour") / "colour.ckpt", COLOUR)


def colour_images(folder: Path) -> list[Path]:
    """Colour images of several sizes, modes and formats, a grayscale one, and a corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = {
        "wide.png": Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)),
        "tall.jpg": Image.fromarray(rng.integers(0, 256, (90, 30, 3), dtype=np.uint8)),
        "small.bmp": Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)),
        "exact.png": Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        "alpha.png": Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 256, (50, 60), dtype=np.uint8)),
    }
    paths = []
    for name, image in images.items():
        image.save(folder / name)
        paths.append(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return [*paths, folder / "broken.png"]


def reference_input(path: Path, description: dict[str, Any]) -> torch.Tensor:
    """What training fed the model for this file, computed without proj: RGB, cover-resized and centre-cropped
    with Pillow, scaled to [0, 1], standardised per channel."""
    channels, height, width = description["input_shape"]
    with Image.open(path) as image:
        fitted = ImageOps.fit(
            image.convert("RGB" if channels == 3 else "L"), (width, height), Image.Resampling.BILINEAR
        )
    pixels = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255).reshape(height, width, channels)
    mean, std = torch.tensor(description["mean"]), torch.tensor(description["std"])
    return ((pixels - mean) / std).permute(2, 0, 1)


def test_colour_model_csv_names_classes_and_matches_the_model(tmp_path, capsys, colour_checkpoint):
    paths = colour_images(tmp_path / "in")
    output = tmp_path / "predictions.csv"
    proj.predict.main(["--ckpt_path", str(colour_checkpoint), "--input", str(tmp_path / "in"), "--output", str(output)])
    header, rows = read_csv(output)
    assert header == HEADER
    assert [row["path"] for row in rows] == [str(path) for path in sorted(paths)]
    assert "7 files, 1 errors" in capsys.readouterr().out

    model = load_classifier(colour_checkpoint)
    good = [row for row in rows if not row["error"]]
    assert len(good) == 6
    with torch.inference_mode():
        expected = model(torch.stack([reference_input(Path(row["path"]), COLOUR) for row in good])).softmax(1)
    for row, probabilities in zip(good, expected, strict=True):
        found = torch.tensor([float(row[f"p{name}"]) for name in CLASSES])
        assert found.sum().item() == pytest.approx(1, abs=1e-5)
        torch.testing.assert_close(found, probabilities, atol=2e-6, rtol=0)  # the CSV holds 6 decimals
        index = int(row["class_index"])
        assert index == int(probabilities.argmax()) and row["prediction"] == CLASSES[index]
        assert float(row["confidence"]) == pytest.approx(float(found.max()), abs=1e-6)
    (broken,) = [row for row in rows if row["error"]]
    assert broken["path"].endswith("broken.png") and "not a readable image" in broken["error"]
    assert all(broken[key] == "" for key in HEADER if key not in ("path", "error"))


def test_a_folder_of_webp_tiff_ppm_and_pgm_is_predicted_and_other_files_counted(
    tmp_path, capsys, lightning_info, colour_checkpoint
):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a.webp", "b.tif", "c.tiff", "d.ppm"):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(folder / "e.pgm")
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(folder / "f.gif")
    (folder / "g.txt").write_text("notes")
    output = tmp_path / "predictions.csv"
    proj.predict.main(["--ckpt_path", str(colour_checkpoint), "--input", str(folder), "--output", str(output)])
    _, rows = read_csv(output)
    assert [Path(row["path"]).name for row in rows] == ["a.webp", "b.tif", "c.tiff", "d.ppm", "e.pgm"]
    assert "5 files, 0 errors" in capsys.readouterr().out
    model = load_classifier(colour_checkpoint)
    with torch.inference_mode():
        expected = model(torch.stack([reference_input(Path(row["path"]), COLOUR) for row in rows])).softmax(1)
    found = torch.tensor([[float(row[f"p{name}"]) for name in CLASSES] for row in rows])
    torch.testing.assert_close(found, expected, atol=2e-6, rtol=0)  # the CSV holds 6 decimals
    assert info_lines(lightning_info) == [
        "Skipped 2 files that are not images proj reads: 1 .gif, 1 .txt (readable suffixes: "
        ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)."
    ]


def test_grayscale_images_become_three_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 70), dtype=np.uint8)).save(path)
    prepared = prepare(path, COLOUR)
    assert prepared.shape == (3, 32, 32)
    pixels = prepared * torch.tensor(COLOUR["std"])[:, None, None] + torch.tensor(COLOUR["mean"])[:, None, None]
    torch.testing.assert_close(pixels[0], pixels[1])  # the same gray in every channel, normalised per channel
    torch.testing.assert_close(pixels[0], pixels[2])
    torch.testing.assert_close(prepared, reference_input(path, COLOUR), atol=1e-5, rtol=0)
    one_channel = {**COLOUR, "input_shape": [1, 32, 32], "mean": [0.5], "std": [0.25]}
    colour = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(colour)
    assert prepare(colour, one_channel).shape == (1, 32, 32)  # and colour becomes grayscale for a 1-channel model


def test_preprocess_modes(tmp_path):
    assert resolve_preprocess("auto", COLOUR) == "resize"
    assert resolve_preprocess("auto", MNIST) == "digit"
    with pytest.raises(ValueError, match="preprocess"):
        resolve_preprocess("crop", COLOUR)
    exact, wide = tmp_path / "exact.png", tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(exact)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(wide)
    torch.testing.assert_close(prepare(exact, COLOUR, "none"), prepare(exact, COLOUR, "resize"))
    with pytest.raises(UserError, match=r"image is 40x30; preprocess 'none' takes 32x32 images only \(use 'resize'\)"):
        prepare(wide, COLOUR, "none")
    model = colour_model()
    rows = predict_files(model, [exact, wide], device="cpu", preprocess="none", description=COLOUR)
    assert rows[0]["error"] == "" and rows[0]["prediction"] in CLASSES
    assert "32x32" in rows[1]["error"] and rows[1]["prediction"] is None


def test_digit_preparation_scales_with_the_model_size():
    """A digit model of 56x56 inputs gets MNIST's construction at twice the size: a 40 px box, centred at 28."""
    description = {**MNIST, "input_shape": [1, 56, 56]}
    photo = draw((300, 200), (190, 20, 90), ink=(20, 20, 20), paper=(250, 250, 250), mode="RGB", points=SEVEN)
    prepared = prepare(photo, description)
    assert prepared.shape == (1, 56, 56)
    image = prepared[0] * MNIST["std"][0] + MNIST["mean"][0]
    rows, cols = (image > 0.05).any(1).nonzero()[:, 0], (image > 0.05).any(0).nonzero()[:, 0]
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (40, 41)
    index = torch.arange(56, dtype=torch.float32)
    centre = float((image.sum(1) * index).sum() / image.sum()), float((image.sum(0) * index).sum() / image.sum())
    assert centre == pytest.approx((28, 28), abs=1)
    small = centre_digit(ink(read_gray(photo)), (28, 28))  # MNIST's own field: the same digit at half the size
    # Pooled in pairs (27, 28), (29, 30)...: the centre pixel 28 lands on MNIST's centre pixel 14.
    halved = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(image, (1, 0, 1, 0))[None, :56, :56], 2)[0]
    assert (halved - small).abs().mean() < 0.02


def test_mnist_model_keeps_digit_columns(tmp_path):
    path = tmp_path / "seven.png"
    draw((100, 80), (20, 10, 60), ink=(0, 0, 0), paper=(255, 255, 255), mode="RGB").save(path)
    model = MLPClassifier(input_shape=(1, 28, 28), num_classes=10, hidden_sizes=(8,))
    (row,) = predict_files(model, [path], device="cpu", description=MNIST)
    assert list(row) == ["path", "prediction", "class_index", "confidence", *(f"p{d}" for d in range(10)), "error"]
    assert row["prediction"] == str(row["class_index"]) and row["prediction"] in [str(d) for d in range(10)]


def test_columns():
    assert columns(CLASSES) == HEADER
    assert columns(3) == ["path", "prediction", "class_index", "confidence", "p0", "p1", "p2", "error"]
    assert columns(["T-shirt/top", "Sneaker"])[4:6] == ["pT-shirt/top", "pSneaker"]
    with pytest.raises(UserError, match="'path'"):
        columns(["ath", "dog"])  # "p" + "ath" would be a second "path" column


def test_data_description_checks(tmp_path):
    model = colour_model()
    with pytest.raises(UserError, match="does not describe the data") as info:
        data_description(model)
    assert "--data" in str(info.value) and "description=" in str(info.value)
    model.data_description = COLOUR
    assert data_description(model)["class_names"] == CLASSES
    for change, message in [
        ({"input_shape": [3, 28, 28]}, "differs from the model's"),
        ({"class_names": ["cat", "dog"]}, "2 class names for a model of 3 classes"),
        ({"class_names": ["cat", "cat", "owl"]}, "distinct"),
        ({"mean": [0.5]}, "one per channel"),
        ({"std": [0.2, 0.0, 0.3]}, "std > 0"),
        ({"input_shape": [2, 32, 32]}, "1 or 3 channels"),
    ]:
        with pytest.raises(UserError, match=message):
            data_description(model, {**COLOUR, **change})
    with pytest.raises(UserError, match="incomplete"):
        data_description(model, {"input_shape": [3, 32, 32]})


def test_checkpoint_without_description(tmp_path, capsys):
    """One error line, exit 2, saying what to pass; --data supplies the description, checked against the model."""
    torch.manual_seed(0)
    bare = save_checkpoint(
        MLPClassifier(input_shape=(3, 32, 32), num_classes=3, hidden_sizes=(8,)), tmp_path / "b.ckpt", None
    )
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    args = ["--ckpt_path", str(bare), "--input", str(image), "--output", str(tmp_path / "p.csv")]
    err = user_error(capsys, proj.predict.main, *args)
    assert err.startswith("error: checkpoint") and "does not describe the data" in err and "--data" in err
    assert len(err.strip().splitlines()) == 1
    err = user_error(capsys, proj.export.main, "--ckpt_path", str(bare), "--format", "onnx", "--output", "m.onnx")
    assert err.startswith("error: checkpoint") and "does not describe the data" in err
    err = user_error(capsys, proj.predict.main, *args, "--data", "cifar10")
    assert err.startswith("error: the data description") and "10 class names for a model of 3 classes" in err
    err = user_error(capsys, proj.predict.main, *args, "--data", "imagenet")
    assert err.startswith("error: --data 'imagenet' is neither") and "mnist" in err
    (tmp_path / "bad.json").write_text("{not json")
    err = user_error(capsys, proj.predict.main, *args, "--data", str(tmp_path / "bad.json"))
    assert err.startswith("error: --data") and "JSON" in err
    assert not (tmp_path / "p.csv").exists() and not Path("m.onnx").exists()

    (tmp_path / "colour.json").write_text(json.dumps(COLOUR))
    proj.predict.main([*args, "--data", str(tmp_path / "colour.json")])
    header, rows = read_csv(tmp_path / "p.csv")
    assert header == HEADER and rows[0]["prediction"] in CLASSES


def test_mnist_data_option_for_a_bare_digit_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = MLPClassifier(input_shape=(1, 28, 28), num_classes=10, hidden_sizes=(8,))
    bare = save_checkpoint(model, tmp_path / "digits.ckpt", None)
    image = tmp_path / "seven.png"
    draw((100, 80), (20, 10, 60), ink=(0, 0, 0), paper=(255, 255, 255), mode="RGB").save(image)
    output = tmp_path / "p.csv"
    proj.predict.main(["--ckpt_path", str(bare), "--input", str(image), "--output", str(output), "--data", "mnist"])
    header, rows = read_csv(output)
    assert header == columns(10) and rows[0]["error"] == ""
    with torch.inference_mode():
        expected = load_classifier(bare)(prepare(image, MNIST, "digit")[None]).softmax(1)[0]
    found = torch.tensor([float(rows[0][f"p{digit}"]) for digit in range(10)])
    torch.testing.assert_close(found, expected, atol=2e-6, rtol=0)
