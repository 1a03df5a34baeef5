"""`python -m proj.predict --ckpt_path CKPT --input PATH... [--output predictions.csv]`: classify your own images.

Inputs are image files and folders (searched recursively for .png, .jpg, .jpeg and .bmp, in sorted order).
Each image is made to look like an MNIST digit (proj.data.images: grayscale, dark ink on light paper
inverted, cropped to the digit, scaled to 20 px, centred by mass in 28x28, normalised as in training) and
classified by the checkpoint's model in batches. The CSV holds one row per file, in input order:
`path,prediction,confidence,p0,...,p9,error`; a file that cannot be used gets a row with only its error
and the run goes on.

In a notebook: `predict_files(load_classifier(ckpt), paths)` returns the same rows as dicts.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proj.checkpoints import load_classifier
from proj.data.images import PREPROCESS, SIZE, SUFFIXES, Preprocess, to_mnist
from proj.errors import UserError, exit_on_user_error
from proj.outputs import atomic_output, check_output

Row = dict[str, Any]


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, in order, with each folder replaced by the image files under it (sorted).

    Hidden files and folders (.ipynb_checkpoints, macOS "._" copies) are skipped inside folders; a file
    named explicitly is always taken, whatever its name (it gets an error row if it is no image).
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                file
                for file in path.rglob("*")
                if file.suffix.lower() in SUFFIXES
                and file.is_file()
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
            )
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"input {str(path)!r} does not exist: pass image files or folders holding images")
    if not found:
        names = ", ".join(repr(str(item)) for item in inputs)
        raise UserError(f"no image files ({', '.join(SUFFIXES)}) found in {names}: pass files or folders of images")
    return found


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for a name; "auto" is the GPU when there is one, else the CPU. A bad name is a UserError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"unknown device {str(device)!r} ({err}): use auto, cpu or cuda") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r}: no CUDA GPU is available here; use --device cpu (or auto)")
    return resolved


def columns(num_classes: int) -> list[str]:
    """The CSV header, which is also the keys of every row dict."""
    return ["path", "prediction", "confidence", *(f"p{index}" for index in range(num_classes)), "error"]


def predict_files(
    model: nn.Module,
    paths: Sequence[str | Path],
    batch_size: int = 256,
    device: str | torch.device = "auto",
    preprocess: Preprocess = "digit",
) -> list[Row]:
    """One row per path, in order: prediction (class index), confidence (its probability), p0... (all class
    probabilities) and error ("" for a good file; for a bad one, why, with the other values None).

    Images are read and preprocessed one batch at a time, so memory does not grow with the number of files.
    The model is put in eval mode on `device`.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    target = resolve_device(device)
    model = model.to(target).eval()
    with torch.inference_mode():
        num_classes = model(torch.zeros(1, 1, SIZE, SIZE, device=target)).shape[1]
    empty = dict.fromkeys(columns(num_classes))
    rows: list[Row] = []
    for start in range(0, len(paths), batch_size):
        images, predicted = [], []
        for path in paths[start : start + batch_size]:
            row = {**empty, "path": str(path), "error": ""}
            try:
                images.append(to_mnist(path, preprocess))
                predicted.append(row)
            except UserError as err:
                row["error"] = str(err)
            rows.append(row)
        if not images:
            continue
        with torch.inference_mode():
            probabilities = model(torch.stack(images).to(target)).float().softmax(dim=1).cpu()
        confidences, predictions = probabilities.max(dim=1)
        for row, probs, prediction, confidence in zip(
            predicted, probabilities.tolist(), predictions.tolist(), confidences.tolist(), strict=True
        ):
            row.update({"prediction": prediction, "confidence": confidence})
            row.update({f"p{index}": value for index, value in enumerate(probs)})
    return rows


def write_csv(rows: list[Row], path: Path) -> None:
    """The rows as CSV (probabilities to 6 decimals, None as an empty cell), replacing `path` atomically."""
    fields = list(rows[0]) if rows else columns(10)
    with atomic_output(path) as partial, partial.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})


def parse_args(args: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proj.predict",
        description=(__doc__ or "").split("\n\nIn a notebook")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by proj.fit (a .ckpt file)")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        action="extend",
        metavar="PATH",
        help="image files and/or folders (searched recursively); may be repeated",
    )
    parser.add_argument("--output", default="predictions.csv", help="CSV to write (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=256, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:1...")
    parser.add_argument(
        "--preprocess",
        choices=PREPROCESS,
        default="digit",
        help="digit: make any image MNIST-like (default); none: the images are already 28x28, light on dark",
    )
    return parser.parse_args(args)


def run(options: argparse.Namespace) -> None:
    output = check_output(options.output, "--output")
    if options.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {options.batch_size}")
    paths = find_images(options.input)
    device = resolve_device(options.device)  # before loading the model: a wrong device fails fast
    model = load_classifier(options.ckpt_path)
    rows = predict_files(model, paths, options.batch_size, device, options.preprocess)
    write_csv(rows, output)
    errors = sum(1 for row in rows if row["error"])
    note = " (see the error column)" if errors else ""
    print(f"{len(rows)} files, {errors} errors{note}: predictions written to {output}")


def main(args: list[str] | None = None) -> None:
    """Run from the command line; a problem the user can fix exits with its message and status 2."""
    with exit_on_user_error():
        run(parse_args(args))


if __name__ == "__main__":
    main()
