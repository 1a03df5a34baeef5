"""A checkpoint names the class that wrote it, and importing a class runs its package's code: only proj's own
classes, or one the user names, are imported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import proj.cli
import proj.export
import proj.predict
from conftest import VAL_SIZE, user_error
from test_predict import trained_checkpoint

EVIL = "evil_pkg.models.Net"


@pytest.fixture
def evil_checkpoint(mnist_dir, tmp_path_factory, tmp_path, monkeypatch) -> Path:
    """A real checkpoint whose `_class_path` names a module that, once imported, leaves a marker file."""
    package = tmp_path / "site" / "evil_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    marker = tmp_path / "imported"
    (package / "models.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Net:\n    pass\n")
    monkeypatch.syspath_prepend(str(package.parent))
    checkpoint = torch.load(trained_checkpoint(mnist_dir, tmp_path_factory, "mlp"), weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = EVIL
    path = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, path)
    return path


def imported(tmp_path: Path) -> bool:
    return (tmp_path / "imported").exists()


def test_predict_and_export_refuse_a_class_outside_proj_without_importing_it(evil_checkpoint, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    err = user_error(capsys, proj.predict.main, "--ckpt_path", str(evil_checkpoint), "--input", str(image))
    assert f"names its model class {EVIL}, outside proj" in err and f"--model {EVIL}" in err
    out = str(tmp_path / "m.onnx")
    err = user_error(capsys, proj.export.main, "--ckpt_path", str(evil_checkpoint), "--format", "onnx", "--output", out)
    assert "outside proj" in err
    assert not imported(tmp_path)
    # Named by the user, the class is imported (and then found not to be a classifier).
    err = user_error(
        capsys, proj.predict.main, "--ckpt_path", str(evil_checkpoint), "--input", str(image), "--model", EVIL
    )
    assert "not an ImageClassifier" in err
    assert imported(tmp_path)


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_the_cli_refuses_it_too(evil_checkpoint, mnist_dir, tmp_path, capsys, subcommand):
    data = ["--data.data_dir", str(mnist_dir), "--data.val_size", str(VAL_SIZE)]
    err = user_error(capsys, proj.cli.main, subcommand, *data, "--ckpt_path", str(evil_checkpoint))
    assert f"names its model class {EVIL}, outside proj" in err
    assert not imported(tmp_path)
