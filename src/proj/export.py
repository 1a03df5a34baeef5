"""`python -m proj.export --ckpt_path CKPT --format onnx|torchscript --output FILE`: the model, to serve without proj.

The exported graph is the network alone, without preprocessing:
- input `images`: float32 (B, 1, 28, 28), any batch size B, pixels scaled to [0, 1] then standardised with
  proj.data.mnist.MEAN and STD, exactly as in training (proj.data.images.to_mnist makes such a tensor from a
  real image);
- output `logits`: float32 (B, num_classes); softmax gives the class probabilities.
The mean and std are also stored in the file: ONNX metadata_props, or the TorchScript extra file proj.json.

ONNX uses torch.onnx's default exporter (torch.export based, `dynamo=True`), weights inside the one file.
TorchScript (torch.jit.trace) still works, but PyTorch deprecates it (torch 2.14 warns on every torch.jit
call; export_torchscript warns once instead): prefer ONNX for new deployments.
"""

from __future__ import annotations

import argparse
import json
import warnings
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from proj.checkpoints import load_classifier
from proj.data.images import SIZE
from proj.data.mnist import MEAN, STD
from proj.errors import UserError, exit_on_user_error
from proj.models import ImageClassifier
from proj.outputs import atomic_output, check_output

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


def example_batch() -> torch.Tensor:
    # A batch of 2: torch.export treats a dimension of size 1 as a constant, so the batch would not stay dynamic.
    return torch.zeros(2, 1, SIZE, SIZE)


def metadata(model: ImageClassifier) -> dict[str, str]:
    """What a consumer of the file needs to know to feed it, stored inside it."""
    return {
        "proj.model": f"{type(model).__module__}.{type(model).__qualname__}",
        "proj.input": f"{INPUT}: float32 (batch, 1, {SIZE}, {SIZE}), pixels in [0, 1], then (x - mean) / std",
        "proj.output": f"{OUTPUT}: float32 (batch, num_classes); softmax for probabilities",
        "proj.mean": str(MEAN),
        "proj.std": str(STD),
    }


def export_onnx(model: ImageClassifier, path: Path) -> None:
    """ONNX with a dynamic batch dimension named "batch", weights in the file itself."""
    missing = [name for name in ("onnx", "onnxscript") if find_spec(name) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install 'proj[export]'")
    program = torch.onnx.export(
        network(model),
        (example_batch(),),
        dynamo=True,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the program
    program.model.metadata_props.update(metadata(model))
    with atomic_output(path) as partial:
        # external_data=False: the default would put the weights into "<name>.data" beside the file, under the
        # temporary name, which the renamed .onnx would then point to.
        program.save(partial, external_data=False)


def export_torchscript(model: ImageClassifier, path: Path) -> None:
    """TorchScript by tracing (the networks have no data-dependent control flow); torch.jit.load reads it."""
    # torch warns three times (trace, trace_method, save) that torch.jit is deprecated: one warning says it.
    warnings.warn(TORCHSCRIPT_DEPRECATED, FutureWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.(trace|trace_method|save)` is deprecated", FutureWarning)
        traced = torch.jit.trace(network(model), example_batch())
        with atomic_output(path) as partial:
            torch.jit.save(traced, str(partial), _extra_files={"proj.json": json.dumps(metadata(model))})


def parse_args(args: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proj.export",
        description=(
            f"Export a checkpoint's network. Input '{INPUT}': float32 (B, 1, {SIZE}, {SIZE}), any batch size, pixels "
            f"in [0, 1] standardised as in training: (x - {MEAN}) / {STD}. Output '{OUTPUT}': (B, num_classes) "
            "logits (softmax for probabilities). TorchScript is deprecated in recent torch; prefer onnx."
        ),
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by proj.fit (a .ckpt file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (for onnxruntime) or torchscript")
    parser.add_argument("--output", required=True, help="file to write, e.g. model.onnx or model.pt")
    return parser.parse_args(args)


def run(options: argparse.Namespace) -> None:
    output = check_output(options.output, "--output")
    model = load_classifier(options.ckpt_path)
    if options.format == "onnx":
        export_onnx(model, output)
    else:
        export_torchscript(model, output)
    print(f"Exported {type(model).__name__} to {output} ({options.format}): {INPUT} (B, 1, 28, 28) -> {OUTPUT}")


def main(args: list[str] | None = None) -> None:
    """Run from the command line; a problem the user can fix exits with its message and status 2."""
    with exit_on_user_error():
        run(parse_args(args))


if __name__ == "__main__":
    main()
