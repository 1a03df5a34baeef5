"""Prediction on image files: MNIST-like preprocessing of real images, the CSV, errors, and the entry point.

Models on other data (colour, other sizes, named classes): test_predict_generic.py."""

from __future__ import annotations

import csv
import inspect
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import proj.cli
import proj.predict
from conftest import NUM_TRAIN, VAL_SIZE, datamodule, run_fit, run_python, user_error
from proj.checkpoints import load_classifier
from proj.data import MNISTDataModule
from proj.data.images import MAX_SIDE, Preprocess, Source, prepare, read_gray
from proj.data.mnist import MEAN, STD
from proj.errors import UserError
from proj.models import MLPClassifier
from proj.predict import columns, find_images, predict_files, resolve_device

SEVEN = [(0.1, 0.0), (0.9, 0.0), (0.35, 1.0)]  # a "7" (top bar, then the diagonal) in units of its box
ONE = [(0.5, 0.0), (0.5, 1.0)]
FULL_EPOCH = str((NUM_TRAIN - VAL_SIZE) // 32)
TINY_MODELS = {  # the MLP learns the synthetic labels; the CNN (for export) only needs trained batch norm statistics
    "mlp": ["--model", "MLPClassifier", "--model.hidden_sizes", "[32]", "--trainer.limit_train_batches", FULL_EPOCH],
    "cnn": ["--model", "CNNClassifier", "--model.channels", "[4, 8]", "--model.hidden_size", "16"],
}


FITTED: dict[tuple[Path, str], Path] = {}
MNIST = MNISTDataModule(num_workers=0).description()  # what an MNIST checkpoint holds
DIGITS = [str(digit) for digit in range(10)]


def to_mnist(source: Source, preprocess: Preprocess = "digit") -> torch.Tensor:
    """An image as an MNIST model's input, the way proj.predict prepares it."""
    return prepare(source, MNIST, preprocess)


def trained_checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, model: str) -> Path:
    """last.ckpt of a seconds-long CLI fit (so it records `_class_path`, which load_classifier needs), once per
    session and model: test_export uses it too."""
    if (data_dir, model) not in FITTED:
        logs = tmp_path_factory.mktemp(f"fit_{model}")
        quick = ["--trainer.max_epochs", "3", "--model.optimizer.lr", "0.01", "--trainer.callbacks", "[]"]
        run_fit(data_dir, logs, *quick, *TINY_MODELS[model], "--test_after_fit", "false")
        FITTED[data_dir, model] = logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    return FITTED[data_dir, model]


@pytest.fixture(scope="session")
def mlp_checkpoint(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(mnist_dir, tmp_path_factory, "mlp")


def draw(
    size: tuple[int, int],
    box: tuple[float, float, float],
    ink: object = 255,
    paper: object = 0,
    mode: str = "L",
    points: list[tuple[float, float]] = SEVEN,
) -> Image.Image:
    """A thick polyline digit in a `box` (left, top, side) on a `size` canvas."""
    image = Image.new(mode, size, paper)
    left, top, side = box
    xy = [(left + x * side, top + y * side) for x, y in points]
    ImageDraw.Draw(image).line(xy, fill=ink, width=max(1, round(0.15 * side)), joint="curve")
    return image


def reference(points: list[tuple[float, float]] = SEVEN) -> Image.Image:
    """The digit as MNIST has it, built independently of proj: white on black, 28x28, anti-aliased, longer side
    20 px, centre of mass on pixel (14, 14). Measured on a large drawing, drawn 10x to fit, then reduced."""
    probe = np.asarray(draw((1000, 1000), (300, 300, 400), points=points), dtype=np.float64)
    rows, cols = np.nonzero(probe)
    scale = 200 / (max(np.ptp(rows), np.ptp(cols)) + 1)  # the drawing scales with its box's side
    mass, index = probe.sum(), np.arange(1000)
    centre_y, centre_x = (probe.sum(1) * index).sum() / mass, (probe.sum(0) * index).sum() / mass
    # Pixel 14 of 28 is pixels 140..149 of 280, whose mean index is 144.5.
    box = (144.5 - (centre_x - 300) * scale, 144.5 - (centre_y - 300) * scale, 400 * scale)
    return draw((280, 280), box, points=points).resize((28, 28), Image.Resampling.BOX)


def pixels(normalised: torch.Tensor) -> torch.Tensor:
    """Model input back to (28, 28) pixels in [0, 1]."""
    return (normalised * STD + MEAN)[0]


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    index = torch.arange(28, dtype=torch.float32)
    mass = image.sum()
    return float((image.sum(1) * index).sum() / mass), float((image.sum(0) * index).sum() / mass)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def as_pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)) / 255


def assert_close_to(processed: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to anti-aliasing and a sub-pixel shift (MNIST centres to whole pixels)."""
    assert (processed - expected).abs().mean() < 0.04
    assert ((processed > 0.5) == (expected > 0.5)).float().mean() > 0.95


@pytest.mark.parametrize("points", [SEVEN, ONE], ids=["seven", "one"])
def test_dark_digit_on_large_white_rgb_equals_centred_white_on_black(points):
    photo = draw((300, 200), (190, 20, 90), ink=(20, 20, 20), paper=(250, 250, 250), mode="RGB", points=points)
    assert_close_to(pixels(to_mnist(photo)), as_pixels(reference(points)))


def test_mnist_like_image_is_nearly_unchanged():
    original = as_pixels(reference())
    assert (pixels(to_mnist(reference())) - original).abs().mean() < 0.01


def test_geometry_matches_mnist():
    """Background exactly 0 (-MEAN/STD once normalised), longer side of the ink 20 px, centre of mass at 14."""
    for points, box in [(SEVEN, (10, 5, 60)), (ONE, (250, 130, 60))]:
        normalised = to_mnist(draw((300, 200), box, ink=0, paper=255, points=points))
        assert normalised.shape == (1, 28, 28)
        assert normalised.min().item() == pytest.approx(-MEAN / STD)
        image = pixels(normalised)
        rows, cols = (image > 0.05).any(1).nonzero()[:, 0], (image > 0.05).any(0).nonzero()[:, 0]
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)
        assert centre_of_mass(image) == pytest.approx((14, 14), abs=1)
    thin = pixels(to_mnist(draw((300, 200), (250, 130, 60), points=ONE)))
    assert (thin > 0.05).any(0).sum() < 8  # a "1" keeps its aspect ratio: narrow, not stretched to 20 px


def small(mode: str, ink: object, paper: object) -> Image.Image:
    return draw((120, 90), (30, 10, 60), ink=ink, paper=paper, mode=mode)


STYLES = {
    "blue-on-yellow": lambda: small("RGB", (0, 0, 160), (250, 240, 120)),
    "black-on-transparent": lambda: small("RGBA", (0, 0, 0, 255), (0, 0, 0, 0)),  # an HTML canvas drawing
    "white-on-transparent": lambda: small("RGBA", (255, 255, 255, 255), (0, 0, 0, 0)),
    "opaque-rgba": lambda: small("RGBA", (0, 0, 0, 255), (255, 255, 255, 255)),
    "palette": lambda: small("L", 30, 220).convert("P"),
    "bilevel": lambda: small("L", 0, 255).convert("1"),
    "16-bit": lambda: Image.fromarray(np.asarray(small("L", 255, 0), dtype=np.uint16) * 257),
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_colour_alpha_and_depth_through_files(tmp_path, style):
    image = STYLES[style]()
    path = tmp_path / "digit.png"
    image.save(path)
    assert Image.open(path).mode == image.mode
    assert_close_to(pixels(to_mnist(path)), as_pixels(reference()))


def test_16_bit_png_keeps_its_scale(tmp_path):
    pixels16 = np.zeros((30, 30), dtype=np.uint16)
    pixels16[5:25, 12:16] = 40000  # Pillow's own conversion to 8 bits would clip this to 255
    Image.fromarray(pixels16).save(tmp_path / "deep.png")
    assert read_gray(tmp_path / "deep.png").max().item() == pytest.approx(40000 / 65535)


def test_large_photo_jpeg_is_reduced_on_reading(tmp_path):
    rng = np.random.default_rng(0)
    photo = draw((3000, 2000), (1800, 300, 900), ink=(40, 35, 30), paper=(215, 210, 200), mode="RGB")
    noisy = np.asarray(photo, dtype=np.float32) + rng.normal(0, 6, (2000, 3000, 1))
    path = tmp_path / "photo.jpg"
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=80)
    assert max(read_gray(path).shape) <= MAX_SIDE
    assert_close_to(pixels(to_mnist(path)), as_pixels(reference()))


def test_unusable_images_are_user_errors(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(png_bytes(reference())[:60])
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (40, 30), (200, 200, 200)).save(tmp_path / "blank.png")
    for name, message in [
        ("corrupt.png", "not a readable image"),
        ("text.png", "not a readable image"),
        ("blank.png", "blank"),
    ]:
        with pytest.raises(UserError, match=message):
            to_mnist(tmp_path / name)
    with pytest.raises(UserError, match="28x28"):
        to_mnist(draw((40, 40), (5, 5, 30)), preprocess="none")


def write_inputs(folder: Path) -> list[Path]:
    """Two good digits and a corrupt file between them, in a nested folder."""
    (folder / "sub").mkdir(parents=True)
    paths = [folder / "a.png", folder / "sub" / "b.jpg", folder / "sub" / "c.bmp"]
    draw((100, 80), (20, 10, 60), ink=(0, 0, 0), paper=(255, 255, 255), mode="RGB").save(paths[0])
    paths[1].write_bytes(b"\xff\xd8 truncated jpeg")
    reference(ONE).save(paths[2])
    return paths


def test_predict_files_keeps_order_and_reports_bad_files(tmp_path):
    paths = write_inputs(tmp_path)
    model = MLPClassifier(input_shape=(1, 28, 28), num_classes=10, hidden_sizes=(16,))
    model.data_description = MNIST
    rows = predict_files(model, paths, batch_size=2, device="cpu")
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    assert [bool(row["error"]) for row in rows] == [False, True, False]
    assert "not a readable image" in rows[1]["error"]
    assert rows[1]["prediction"] is None and rows[1]["class_index"] is None and rows[1]["p0"] is None
    assert not model.training  # predicted in eval mode
    for row in (rows[0], rows[2]):
        assert list(row) == columns(10) == columns(DIGITS)
        probabilities = [row[f"p{index}"] for index in range(10)]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert row["class_index"] == int(np.argmax(probabilities))
        assert row["prediction"] == str(row["class_index"])  # MNIST's class names are its digits
        assert row["confidence"] == max(probabilities)
        with torch.inference_mode():
            expected = model(to_mnist(row["path"])[None]).softmax(1)[0]
        torch.testing.assert_close(torch.tensor(probabilities), expected)
    one_batch = predict_files(model, paths, batch_size=256, device="cpu")  # batching changes nothing (but rounding)
    assert [(row["path"], row["prediction"], row["class_index"], row["error"]) for row in one_batch] == [
        (row["path"], row["prediction"], row["class_index"], row["error"]) for row in rows
    ]
    torch.testing.assert_close(one_batch[0]["p0"], rows[0]["p0"])


def test_find_images_recurses_sorted_and_keeps_input_order(tmp_path):
    (tmp_path / "d" / "z").mkdir(parents=True)
    (tmp_path / "d" / ".hidden").mkdir()
    for name in ["d/b.PNG", "d/a.jpeg", "d/z/c.bmp", "d/notes.txt", "d/.hidden/x.png", "d/._y.png", "e.gif"]:
        (tmp_path / name).write_bytes(b"")
    found = find_images([tmp_path / "e.gif", tmp_path / "d"])
    assert found == [tmp_path / name for name in ["e.gif", "d/a.jpeg", "d/b.PNG", "d/z/c.bmp"]]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.parametrize("entry", ["proj.predict", "python -m proj predict"])
def test_cli_writes_csv(tmp_path, capsys, mlp_checkpoint, entry):
    paths = write_inputs(tmp_path / "in")
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    args = ["--ckpt_path", str(mlp_checkpoint), "--input", str(tmp_path / "in"), "--output", str(output)]
    if entry == "proj.predict":
        proj.predict.main(args)
    else:  # the full CLI hands `predict --input ...` to proj.predict
        proj.cli.main(["predict", *args])
    header, rows = read_csv(output)
    assert header == [
        "path", "prediction", "class_index", "confidence", *(f"p{index}" for index in range(10)), "error"
    ]  # fmt: skip
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    bad = rows[1]
    assert bad["error"] and all(bad[key] == "" for key in header if key not in ("path", "error"))
    for row in (rows[0], rows[2]):
        assert row["error"] == ""
        assert int(row["prediction"]) in range(10)
        assert row["class_index"] == row["prediction"]
        assert sum(float(row[f"p{index}"]) for index in range(10)) == pytest.approx(1, abs=1e-4)
    assert "3 files, 1 errors" in capsys.readouterr().out
    assert sorted(path.name for path in output.parent.iterdir()) == ["predictions.csv"]  # no partial file left


def test_files_predict_as_the_model_does_on_the_dataset(tmp_path, mnist_dir, mlp_checkpoint):
    """Synthetic test images written as PNGs, predicted through the CLI, match the model on the data module's own
    tensors: same preprocessing and normalisation as training, and the labels are learnt."""
    data = datamodule(mnist_dir, pipeline="torchvision")
    data.setup("test")
    test_set = data.test_set
    count = 40
    folder = tmp_path / "digits"
    folder.mkdir()
    for index in range(count):
        Image.fromarray(test_set.data[index].numpy()).save(folder / f"{index:03d}.png")
    output = tmp_path / "predictions.csv"
    proj.predict.main(
        ["--ckpt_path", str(mlp_checkpoint), "--input", str(folder), "--output", str(output), "--preprocess", "none"]
    )
    _, rows = read_csv(output)

    model = load_classifier(mlp_checkpoint)
    images, labels = zip(*(test_set[index] for index in range(count)), strict=True)
    with torch.inference_mode():
        expected = model(torch.stack(images)).softmax(1)
    predicted = torch.tensor([int(row["prediction"]) for row in rows])
    probabilities = torch.tensor([[float(row[f"p{index}"]) for index in range(10)] for row in rows])
    assert torch.equal(predicted, expected.argmax(1))
    torch.testing.assert_close(probabilities, expected, atol=1e-6, rtol=0)
    assert (predicted == torch.tensor(labels)).float().mean() > 0.9


def error_exit(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return user_error(capsys, proj.predict.main, *args)


def test_user_errors_exit_2(tmp_path, capsys, mlp_checkpoint):
    paths = write_inputs(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(mlp_checkpoint.read_bytes()[:1000])
    ckpt, good = str(mlp_checkpoint), str(paths[0])
    err = error_exit(capsys, "--ckpt_path", ckpt, "--input", str(tmp_path / "empty"))
    assert err.startswith("error: no image files") and "empty" in err
    err = error_exit(capsys, "--ckpt_path", ckpt, "--input", str(tmp_path / "missing.png"))
    assert err.startswith("error: input") and "missing.png" in err and "does not exist" in err
    err = error_exit(capsys, "--ckpt_path", str(corrupt), "--input", good)
    assert err.startswith("error: checkpoint") and "corrupt.ckpt" in err
    err = error_exit(capsys, "--ckpt_path", ckpt, "--input", good, "--output", str(tmp_path / "nodir" / "p.csv"))
    assert err.startswith("error: --output") and "nodir" in err and "does not exist" in err
    err = error_exit(capsys, "--ckpt_path", ckpt, "--input", good, "--batch_size", "0")
    assert err.startswith("error: --batch_size")
    err = error_exit(capsys, "--ckpt_path", ckpt, "--input", good, "--device", "tpu9")
    assert err.startswith("error: unknown device 'tpu9'")
    assert not (tmp_path / "predictions.csv").exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--batch_size", "many"], ["error: --batch_size expects int, got 'many'."]),
        (["--preprocess", "fancy"], ["error: argument --preprocess: invalid choice: 'fancy'", "'digit'"]),
        (["--outptu", "p.csv"], ["error: unrecognized arguments '--outptu p.csv'", "python -m proj.predict --help"]),
        ([], ["error: the following arguments are required: --ckpt_path", "python -m proj.predict --help"]),
    ],
)
def test_bad_flags_give_one_error_line(capsys, flags, words):
    """jsonargparse's parse errors, shortened as the main CLI's are; the checkpoint is never read."""
    args = ["--ckpt_path", "nowhere.ckpt", "--input", "a.png"] if flags else []
    err = error_exit(capsys, *args, *flags)
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


def test_list_flags_take_several_words_and_repeat(capsys, monkeypatch):
    """`--input A B` (argparse's nargs="+", and repeatable) and a repeated `--model`, as users' scripts pass them."""
    seen = {}
    monkeypatch.setattr(proj.predict, "find_images", lambda inputs: seen.setdefault("input", inputs))

    def load_checkpoint(ckpt_path: str, data: str | None, trusted: list[str]) -> None:
        seen.update(ckpt_path=ckpt_path, data=data, trusted=list(trusted))
        raise UserError("stop here")

    monkeypatch.setattr(proj.predict, "load_checkpoint", load_checkpoint)
    args = ["--input", "a.png", "b/", "--model", "x.A", "--ckpt_path", "c.ckpt", "--input=c.png", "--model", "y.B"]
    assert error_exit(capsys, *args, "--device", "cpu").startswith("error: stop here")
    assert seen == {"input": ["a.png", "b/", "c.png"], "ckpt_path": "c.ckpt", "data": None, "trusted": ["x.A", "y.B"]}


def test_help_shows_the_signature_defaults_and_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        proj.predict.main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    parameters = inspect.signature(proj.predict.run).parameters
    for name in ("output", "batch_size", "device", "preprocess"):
        assert f"--{name} " in help_text and f"default: {parameters[name].default})" in help_text, name
    assert "images per forward pass (type: int, default: 256)" in help_text
    assert "--input" in help_text and "may be repeated" in help_text


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.slow
def test_entry_point_subprocess(tmp_path, mlp_checkpoint):
    paths = write_inputs(tmp_path / "in")
    result = run_python(
        "-m", "proj.predict", "--ckpt_path", str(mlp_checkpoint), "--input", str(paths[2]), str(paths[0])
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, rows = read_csv(tmp_path / "predictions.csv")
    assert [row["path"] for row in rows] == [str(paths[2]), str(paths[0])]
