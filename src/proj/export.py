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

import argparse
import json
import warnings
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proj.checkpoints import load_classifier
from proj.data.images import resolve_preprocess
from proj.errors import UserError, exit_on_user_error
from proj.models import ImageClassifier
from proj.outputs import atomic_output, check_output
from proj.predict import DATA_HELP, MODEL_HELP, data_description, read_data_option

FORMATS = ("onnx", "torchscript")
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


def parse_args(args: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proj.export",
        description=(
            f"Export a checkpoint's network. Input '{INPUT}': float32 (B, C, H, W), the model's input shape, any "
            "batch size, pixels in [0, 1] standardised per channel as in training: (x - mean) / std. Output "
            f"'{OUTPUT}': (B, num_classes) logits (softmax for probabilities). The input shape, class names, mean "
            "and std are stored in the file (ONNX metadata_props, TorchScript extra file proj.json). TorchScript "
            "is deprecated in recent torch; prefer onnx."
        ),
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by proj.fit (a .ckpt file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (for onnxruntime) or torchscript")
    parser.add_argument("--output", required=True, help="file to write, e.g. model.onnx or model.pt")
    parser.add_argument("--data", metavar="NAME|FILE.json", help=DATA_HELP)
    parser.add_argument("--model", metavar="CLASS_PATH", action="append", default=[], help=MODEL_HELP)
    return parser.parse_args(args)


def run(options: argparse.Namespace) -> None:
    output = check_output(options.output, "--output")
    model = load_classifier(options.ckpt_path, trusted=options.model)
    description = read_data_option(options.data) if options.data is not None else None
    data = data_description(model, description, source=f"checkpoint {options.ckpt_path!r}")
    if options.format == "onnx":
        export_onnx(model, output, data)
    else:
        export_torchscript(model, output, data)
    shape = ", ".join(str(side) for side in data["input_shape"])
    classes = len(data["class_names"])
    print(
        f"Exported {type(model).__name__} to {output} ({options.format}): {INPUT} (B, {shape}) -> {OUTPUT} "
        f"(B, {classes})"
    )


def main(args: list[str] | None = None) -> None:
    """Run from the command line; a problem the user can fix exits with its message and status 2."""
    with exit_on_user_error():
        run(parse_args(args))


if __name__ == "__main__":
    main()
