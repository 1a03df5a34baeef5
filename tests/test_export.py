"""Export to ONNX and TorchScript: the files compute what the model computes, at any batch size, for MNIST and for a
3-channel 32x32 model, carry what a consumer needs to feed them, and fail cleanly."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch

import proj.export
from conftest import run_python, user_error
from proj.checkpoints import load_classifier
from proj.data.mnist import MEAN, STD
from test_predict import TINY_MODELS, trained_checkpoint
from test_predict_generic import COLOUR, colour_model, save_checkpoint

MODELS = [*sorted(TINY_MODELS), "colour"]  # CLI-trained on MNIST (1x28x28, digits), and a 3x32x32 one of 3 classes
EXPECTED_METADATA = {
    "mnist": {
        "proj.input_shape": [1, 28, 28],
        "proj.class_names": [str(digit) for digit in range(10)],
        "proj.mean": [MEAN],
        "proj.std": [STD],
    },
    "colour": {
        key: COLOUR[key.removeprefix("proj.")]
        for key in ("proj.input_shape", "proj.class_names", "proj.mean", "proj.std")
    },
}


@pytest.fixture(scope="module")
def checkpoints(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLI-trained checkpoint per model (its batch norm statistics are no longer the initial ones), and the
    colour model (with non-trivial batch norm statistics)."""
    found = {name: trained_checkpoint(mnist_dir, tmp_path_factory, name) for name in TINY_MODELS}
    found["colour"] = save_checkpoint(colour_model(), tmp_path_factory.mktemp("export") / "colour.ckpt", COLOUR)
    return found


def input_shape(checkpoint: Path) -> tuple[int, ...]:
    return tuple(load_classifier(checkpoint).hparams["input_shape"])


def check_metadata(properties: dict[str, str], model: str) -> None:
    """The stored input shape, class names, mean and std (JSON strings) are the model's data's."""
    expected = EXPECTED_METADATA["colour" if model == "colour" else "mnist"]
    assert {key: json.loads(properties[key]) for key in expected} == expected
    assert properties["proj.preprocess"] == ("resize" if model == "colour" else "digit")
    shape = ", ".join(str(side) for side in expected["proj.input_shape"])
    assert f"(batch, {shape})" in properties["proj.input"]


def export(checkpoint: Path, format: str, output: Path) -> None:
    proj.export.main(["--ckpt_path", str(checkpoint), "--format", format, "--output", str(output)])


def expected_logits(checkpoint: Path, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return load_classifier(checkpoint)(batch)


BATCHES = (8, 3)  # the example traced has 2: other sizes prove the batch dimension is dynamic


@pytest.mark.parametrize("model", MODELS)
def test_onnx_matches_pytorch(tmp_path, capsys, checkpoints, model):
    output = tmp_path / "model.onnx"
    export(checkpoints[model], "onnx", output)
    printed, classes = ("3, 32, 32", 3) if model == "colour" else ("1, 28, 28", 10)
    assert f"): images (B, {printed}) -> logits (B, {classes})" in capsys.readouterr().out  # the model's own shape
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]  # weights inside, no partial file

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (input_spec,), (output_spec,) = session.get_inputs(), session.get_outputs()
    assert (input_spec.name, output_spec.name) == ("images", "logits")
    shape = input_shape(checkpoints[model])
    assert input_spec.shape[1:] == list(shape) and isinstance(input_spec.shape[0], str)
    generator = torch.Generator().manual_seed(0)
    for size in BATCHES:
        batch = torch.randn(size, *shape, generator=generator)
        (logits,) = session.run(None, {"images": batch.numpy()})
        torch.testing.assert_close(
            torch.from_numpy(logits), expected_logits(checkpoints[model], batch), atol=1e-4, rtol=0
        )

    properties = {prop.key: prop.value for prop in onnx.load(str(output)).metadata_props}
    check_metadata(properties, model)


@pytest.mark.parametrize("model", MODELS)
def test_torchscript_matches_pytorch(tmp_path, checkpoints, model):
    output = tmp_path / "model.pt"
    with pytest.warns(FutureWarning, match="TorchScript") as record:
        export(checkpoints[model], "torchscript", output)
    assert sum("deprecated" in str(warning.message) for warning in record) == 1  # torch's three are one
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]

    extra_files = {"proj.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated too
        loaded = torch.jit.load(str(output), _extra_files=extra_files)
    generator = torch.Generator().manual_seed(0)
    for size in BATCHES:
        batch = torch.randn(size, *input_shape(checkpoints[model]), generator=generator)
        with torch.inference_mode():
            logits = loaded(batch)
        torch.testing.assert_close(logits, expected_logits(checkpoints[model], batch), atol=1e-4, rtol=0)
    stored = json.loads(extra_files["proj.json"])
    check_metadata(stored, model)


def error_exit(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return user_error(capsys, proj.export.main, *args)


def test_user_errors_exit_2(tmp_path, capsys, checkpoints):
    good = str(checkpoints["mlp"])
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(checkpoints["mlp"].read_bytes()[:1000])
    err = error_exit(capsys, "--ckpt_path", str(corrupt), "--format", "onnx", "--output", str(tmp_path / "m.onnx"))
    assert err.startswith("error: checkpoint") and "corrupt.ckpt" in err
    err = error_exit(capsys, "--ckpt_path", good, "--format", "tflite", "--output", str(tmp_path / "m.tflite"))
    assert "error: argument --format: invalid choice: 'tflite'" in err and "onnx" in err
    err = error_exit(capsys, "--ckpt_path", good, "--format", "onnx", "--output", str(tmp_path / "nodir" / "m.onnx"))
    assert err.startswith("error: --output") and "nodir" in err and "does not exist" in err
    err = error_exit(capsys, "--ckpt_path", good, "--format", "onnx", "--output", str(tmp_path))
    assert err.startswith("error: --output") and "is a folder" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corrupt.ckpt"]


def test_failed_export_leaves_previous_file(tmp_path, checkpoints, monkeypatch):
    output = tmp_path / "model.pt"
    output.write_bytes(b"previous")

    def fail(*args: object, **kwargs: object) -> None:
        Path(args[1]).write_bytes(b"half a fi")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", fail)
    with pytest.raises(SystemExit), pytest.warns(FutureWarning):
        export(checkpoints["mlp"], "torchscript", output)
    assert output.read_bytes() == b"previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.slow
def test_entry_point_subprocess(tmp_path, checkpoints):
    result = run_python(
        "-m", "proj.export", "--ckpt_path", str(checkpoints["cnn"]), "--format", "onnx", "--output", "m.onnx"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exported CNNClassifier" in result.stdout
    assert "images (B, 1, 28, 28) -> logits (B, 10)" in result.stdout
    assert (tmp_path / "m.onnx").is_file()
