"""`python -m proj.export --ckpt_path CKPT --format onnx|torchscript --output FILE`: the model, to serve without proj.

The exported graph is the network alone, without preprocessing:
- input `images`: float32 (B, C, H, W), the model's input shape, any batch size B, pixels scaled to [0, 1] then
  standardised per channel with the training data's mean and std, exactly as in training
  (proj.data.images.prepare makes such a tensor from a real image);
- output `logits`: float32 (B, num_classes), in the order of the class names; softmax gives the probabilities.
What a consumer needs to feed it is stored in the file (ONNX metadata_props, or the TorchScript extra file
proj.json), every value a string: proj.input_shape, proj.class_names, proj.mean and proj.std as JSON,
proj.preprocess ("digit": prepared like MNIST digits, or "resize"), and proj.model/proj.input/proj.output in words.

ONNX uses torch.onnx's default exporter (torch.export based, `dynamo=True`), weights inside the one file.
TorchScript (torch.jit.trace) still works, but PyTorch deprecates it (torch 2.14 warns on every torch.jit
call; export_torchscript warns once instead): prefer ONNX for new deployments.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from proj.commands import run_command
from proj.data.images import resolve_preprocess
from proj.errors import UserError
from proj.models import ImageClassifier
from proj.outputs import atomic_output, check_output
from proj.predict import data_description, load_checkpoint

Format = Literal["onnx", "torchscript"]
INPUT, OUTPUT = "images", "logits"
TORCHSCRIPT_DEPRECATED = (
    "TorchScript (torch.jit) is deprecated by PyTorch and may stop working in a later release; "
    "the file loads with torch.jit.load today, but prefer --format onnx"
)


def network(model: ImageClassifier) -> nn.Module:
    """What gets exported: the plain network when the model's forward is the base one (`self.net(images)`).

    The LightningModule itself does not trace (torch.jit reads its `trainer` property, which raises when
    no Trainer is attached), and its metrics are no part of inference.
    """
    return model.net if type(model).forward is ImageClassifier.forward else model


def example_batch(shape: Sequence[int]) -> torch.Tensor:
    """Zeros of the model's input shape (C, H, W), a batch of 2: torch.export treats a dimension of size 1 as a
    constant, so the batch would not stay dynamic."""
    return torch.zeros(2, *shape)


def metadata(model: ImageClassifier, data: dict[str, Any] | None = None) -> dict[str, str]:
    """What a consumer of the file needs to know to feed it, stored inside it (strings; lists as JSON)."""
    data = data_description(model, data)
    channels, height, width = data["input_shape"]
    names = data["class_names"]
    return {
        "proj.model": f"{type(model).__module__}.{type(model).__qualname__}",
        "proj.input": (
            f"{INPUT}: float32 (batch, {channels}, {height}, {width}), pixels in [0, 1], then (x - mean) / std per "
            "channel"
        ),
        "proj.output": f"{OUTPUT}: float32 (batch, {len(names)}) in the order of proj.class_names; softmax for "
        "probabilities",
        "proj.input_shape": json.dumps(data["input_shape"]),
        "proj.class_names": json.dumps(names),
        "proj.mean": json.dumps(data["mean"]),
        "proj.std": json.dumps(data["std"]),
        "proj.preprocess": resolve_preprocess("auto", data),
    }


def stored_description(properties: dict[str, str], source: str) -> dict[str, Any]:
    """The data description that `metadata` stored in an exported file, read back (and checked: data_description);
    a file without it (not written by proj.export) is a UserError."""
    try:
        description = {
            key: json.loads(properties[f"proj.{key}"]) for key in ("input_shape", "class_names", "mean", "std")
        }
        description["digits"] = properties["proj.preprocess"] == "digit"
    except (KeyError, ValueError) as err:
        raise UserError(
            f"{source} does not hold proj's metadata ({type(err).__name__}: {err}): export the checkpoint with "
            "python -m proj.export --format onnx"
        ) from err
    return data_description(None, description, source=source)


def export_onnx(model: ImageClassifier, path: Path, data: dict[str, Any] | None = None) -> None:
    """ONNX with a dynamic batch dimension named "batch", weights in the file itself; `data` (default: the model's
    data_description) goes into its metadata."""
    data = data_description(model, data)  # a model that does not describe its data fails before the export
    properties = metadata(model, data)
    missing = [name for name in ("onnx", "onnxscript") if find_spec(name) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install 'proj[export]'")
    program = torch.onnx.export(
        network(model),
        (example_batch(data["input_shape"]),),
        dynamo=True,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the program
    program.model.metadata_props.update(properties)
    with atomic_output(path) as partial:
        # external_data=False: the default would put the weights into "<name>.data" beside the file, under the
        # temporary name, which the renamed .onnx would then point to.
        program.save(partial, external_data=False)


def export_torchscript(model: ImageClassifier, path: Path, data: dict[str, Any] | None = None) -> None:
    """TorchScript by tracing (the networks have no data-dependent control flow); torch.jit.load reads it. `data`
    (default: the model's data_description) goes into the extra file proj.json."""
    data = data_description(model, data)
    properties = metadata(model, data)
    # torch warns three times (trace, trace_method, save) that torch.jit is deprecated: one warning says it.
    warnings.warn(TORCHSCRIPT_DEPRECATED, FutureWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.(trace|trace_method|save)` is deprecated", FutureWarning)
        traced = torch.jit.trace(network(model), example_batch(data["input_shape"]))
        with atomic_output(path) as partial:
            torch.jit.save(traced, str(partial), _extra_files={"proj.json": json.dumps(properties)})


def run(ckpt_path: str, format: Format, output: str, data: str | None = None, model: Sequence[str] = ()) -> None:
    """Export a checkpoint's network to a file; its parameters are the command's flags.

    Args:
        ckpt_path: checkpoint written by proj.fit (a .ckpt file)
        format: onnx (for onnxruntime) or torchscript
        output: file to write, e.g. model.onnx or model.pt
        data: the data the model was trained on, when its checkpoint does not say: mnist, fashion_mnist, cifar10,
            or a JSON file holding a data module's description(), as for proj.predict; replaces the checkpoint's own
        model: a model class outside proj that the checkpoint may name: importing a class runs its package's code,
            so only proj's own are loaded unless named here; may be repeated
    """
    path = check_output(output, "--output")
    classifier, description = load_checkpoint(ckpt_path, data, trusted=model)
    if format == "onnx":
        export_onnx(classifier, path, description)
    else:
        export_torchscript(classifier, path, description)
    shape = ", ".join(str(side) for side in description["input_shape"])
    classes = len(description["class_names"])
    print(f"Exported {type(classifier).__name__} to {path} ({format}): {INPUT} (B, {shape}) -> {OUTPUT} (B, {classes})")


def main(args: Sequence[str] | None = None) -> None:
    """Run from the command line; a problem the user can fix exits with its message and status 2."""
    run_command(run, args, "python -m proj.export", __doc__ or "")


if __name__ == "__main__":
    main()
