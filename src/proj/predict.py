"""`python -m proj.predict --ckpt_path CKPT --input PATH... [--output predictions.csv]`: classify your own images.

Inputs are image files and folders (searched recursively for .png, .jpg, .jpeg and .bmp, in sorted order).
Each image is prepared the way the checkpoint's training images were (proj.data.images.prepare, from the data
description the checkpoint holds): for digit models (MNIST) made to look like an MNIST digit (grayscale, dark ink
on light paper inverted, cropped to the digit, scaled, centred by mass); for the others converted to the model's
channels, resized to cover its input size and centre-cropped. Then it is normalised as in training and classified
in batches. The CSV holds one row per file, in input order: `path,prediction,class_index,confidence,p<class>...,error`
(one probability column per class, "p" + its name: p0...p9 for MNIST); a file that cannot be used gets a row with
only its error and the run goes on.

In a notebook: `predict_files(load_classifier(ckpt), paths)` returns the same rows as dicts.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proj.checkpoints import load_classifier
from proj.commands import run_command
from proj.data import CIFAR10DataModule, FashionMNISTDataModule, ImageDataModule, MNISTDataModule
from proj.data.images import SUFFIXES, Preprocess, image_files, prepare, resolve_preprocess, say_skipped
from proj.errors import UserError
from proj.models import ImageClassifier
from proj.outputs import atomic_output, check_output

Row = dict[str, Any]


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, in order, with each folder replaced by the image files under it (sorted).

    Hidden files and folders (.ipynb_checkpoints, macOS "._" copies) are skipped inside folders, other files
    whose suffix is not an image's too, counted in one line; a file named explicitly is always taken, whatever its
    name (it gets an error row if it is no image).
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += image_files(path, skipped)
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"input {str(path)!r} does not exist: pass image files or folders holding images")
    say_skipped(skipped)
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


# Data sets whose description needs no files: `--data NAME` supplies it for a checkpoint that lacks one.
BUILT_IN_DATA: dict[str, type[ImageDataModule]] = {
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
}


def read_data_option(value: str) -> dict[str, Any]:
    """The description `--data` names: a built-in data set's, or one read from a JSON file."""
    if value in BUILT_IN_DATA:
        return BUILT_IN_DATA[value](num_workers=0).description()
    path = Path(value)
    if not path.is_file():
        raise UserError(
            f"--data {value!r} is neither a built-in data set ({', '.join(BUILT_IN_DATA)}) nor a JSON file: pass "
            "one of those names, or a file holding json.dumps(YourDataModule(...).description())"
        )
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--data {value!r} cannot be read as JSON ({err}): pass a data module's description()") from err
    if not isinstance(description, dict):
        raise UserError(f"--data {value!r} holds no JSON object: pass a data module's description()")
    return description


def data_description(
    model: nn.Module | None, description: Mapping[str, Any] | None = None, source: str = "the model"
) -> dict[str, Any]:
    """The data the model was trained on, checked against the model: `description` if given, else the model's
    own `data_description` (from its checkpoint); `model` None (an exported file, which holds `description`): only
    the description's own checks. Keys: input_shape [C, H, W], class_names, mean and std (one per channel), digits
    (bool). A model without one, or one that does not fit, is a UserError saying how to fix it.
    """
    if description is None:
        description = getattr(model, "data_description", None)
    if description is None:
        raise UserError(
            f"{source} does not describe the data it was trained on (input shape, class names, normalisation), "
            "which preparing and labelling images needs. Use a checkpoint written by proj.fit, or say which data "
            "it was: --data " + "|".join(BUILT_IN_DATA) + "|FILE.json on the command line, "
            "predict_files(..., description=YourDataModule(...).description()) in Python."
        )
    hparams = getattr(model, "hparams", {})
    try:
        shape = [int(side) for side in description["input_shape"]]
        names = [str(name) for name in description["class_names"]]
        mean, std = [float(value) for value in description["mean"]], [float(value) for value in description["std"]]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"the data description of {source} is incomplete ({type(err).__name__}: {err}): it needs input_shape "
            "[C, H, W], class_names, mean and std (one per channel), as ImageDataModule.description() gives"
        ) from err
    problems = []
    if len(shape) != 3 or min(shape) < 1 or shape[0] not in (1, 3):
        problems.append(f"input_shape {shape} is not [C, H, W] with 1 or 3 channels")
    elif "input_shape" in hparams and list(hparams["input_shape"]) != shape:
        problems.append(f"input_shape {shape} differs from the model's {list(hparams['input_shape'])}")
    if len(names) < 2 or len(set(names)) != len(names):
        problems.append(f"class_names {names} are not at least 2 distinct names")
    elif "num_classes" in hparams and hparams["num_classes"] != len(names):
        problems.append(f"{len(names)} class names for a model of {hparams['num_classes']} classes")
    if not len(mean) == len(std) == (shape[0] if shape else 0) or min(std, default=0) <= 0:
        problems.append(f"mean {mean} and std {std} are not one per channel (std > 0)")
    if problems:
        raise UserError(f"the data description of {source} does not fit it: {'; '.join(problems)}")
    digits = bool(description.get("digits", False))
    return {**description, "input_shape": shape, "class_names": names, "mean": mean, "std": std, "digits": digits}


def columns(classes: Sequence[str] | int) -> list[str]:
    """The CSV header, which is also the keys of every row dict: one probability column per class, "p" + its
    name (`classes` a count: the names "0", "1"...)."""
    names = [str(index) for index in range(classes)] if isinstance(classes, int) else [str(name) for name in classes]
    header = ["path", "prediction", "class_index", "confidence", *(f"p{name}" for name in names), "error"]
    if len(set(header)) != len(header):
        clash = next(name for name in header if header.count(name) > 1)
        raise UserError(f"the class names {names} give the CSV two columns named {clash!r}: rename that class")
    return header


def predict_files(
    model: nn.Module,
    paths: Sequence[str | Path],
    batch_size: int = 256,
    device: str | torch.device = "auto",
    preprocess: Preprocess = "auto",
    description: Mapping[str, Any] | None = None,
) -> list[Row]:
    """One row per path, in order: prediction (class name), class_index, confidence (its probability), one
    probability per class ("p" + class name) and error ("" for a good file; for a bad one, why, with the other
    values None).

    Images are prepared as the model's training images were (proj.data.images.prepare with `preprocess`; "auto":
    digit models like MNIST digits, others resized and centre-cropped) from `description`, by default the
    model's own `data_description` (set by its checkpoint). They are read one batch at a time, so memory does not
    grow with the number of files. The model is put in eval mode on `device`.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    data = data_description(model, description)
    resolve_preprocess(preprocess, data)  # a wrong name fails before any file is read
    names = data["class_names"]
    empty = dict.fromkeys(columns(names))
    target = resolve_device(device)
    model = model.to(target).eval()
    rows: list[Row] = []
    for start in range(0, len(paths), batch_size):
        images, predicted = [], []
        for path in paths[start : start + batch_size]:
            row = {**empty, "path": str(path), "error": ""}
            try:
                images.append(prepare(path, data, preprocess))
                predicted.append(row)
            except UserError as err:
                row["error"] = str(err)
            rows.append(row)
        if not images:
            continue
        with torch.inference_mode():
            logits = model(torch.stack(images).to(target))
        for row, answer in zip(predicted, answers(logits, names), strict=True):
            row.update({key: answer[key] for key in ("prediction", "class_index", "confidence")})
            row.update({f"p{name}": value for name, value in answer["probabilities"].items()})
    return rows


def answers(logits: torch.Tensor, names: Sequence[str]) -> list[Row]:
    """Per image of a batch of class scores (B, classes): its prediction (class name), class_index, confidence
    (that class's probability) and probabilities by class name: what proj.predict writes and proj.serve answers."""
    if logits.shape[1] != len(names):
        raise UserError(
            f"the model gives {logits.shape[1]} class scores, but its data description names "
            f"{len(names)} classes: pass the description of the data it was trained on"
        )
    probabilities = logits.float().softmax(dim=1).cpu()
    confidences, predictions = probabilities.max(dim=1)
    return [
        {
            "prediction": names[index],
            "class_index": index,
            "confidence": confidence,
            "probabilities": dict(zip(names, probs, strict=True)),
        }
        for probs, index, confidence in zip(
            probabilities.tolist(), predictions.tolist(), confidences.tolist(), strict=True
        )
    ]


def write_csv(rows: list[Row], path: Path, header: list[str] | None = None) -> None:
    """The rows as CSV (probabilities to 6 decimals, None as an empty cell), replacing `path` atomically.
    The header is the rows' keys (`header` for no rows)."""
    fields = list(rows[0]) if rows else header
    if fields is None:
        raise ValueError("write_csv needs rows or a header")
    with atomic_output(path) as partial, partial.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})


def load_checkpoint(ckpt_path: str, data: str | None, trusted: Sequence[str]) -> tuple[ImageClassifier, dict[str, Any]]:
    """A checkpoint's model and the description of its data (`--data`'s if given), checked against each other."""
    model = load_classifier(ckpt_path, trusted=trusted)
    description = read_data_option(data) if data is not None else None
    return model, data_description(model, description, source=f"checkpoint {ckpt_path!r}")


def run(
    ckpt_path: str,
    input: list[str],
    output: str = "predictions.csv",
    batch_size: int = 256,
    device: str = "auto",
    preprocess: Preprocess = "auto",
    data: str | None = None,
    model: Sequence[str] = (),
) -> None:
    """Predict the classes of image files and write them as CSV; its parameters are the command's flags.

    Args:
        ckpt_path: checkpoint written by proj.fit (a .ckpt file)
        input: image files and/or folders (searched recursively): --input a.png photos/ ...; may be repeated
        output: CSV to write
        batch_size: images per forward pass
        device: auto (the GPU if there is one), cpu, cuda, cuda:1...
        preprocess: auto: digit for digit models (MNIST), else resize; digit: make any image look like an MNIST
            digit; resize: convert to the model's channels, resize to cover its input size and centre-crop; none:
            the images already have the model's input size (digit models: light on dark), only converted
        data: the data the model was trained on, when its checkpoint does not say (checkpoints written by proj.fit
            do): mnist, fashion_mnist, cifar10, or a JSON file holding a data module's description() (input_shape,
            class_names, mean, std, digits); replaces the checkpoint's own
        model: a model class outside proj that the checkpoint may name (e.g. mypackage.models.MyClassifier):
            importing a class runs its package's code, so only proj's own are loaded unless named here; may be
            repeated
    """
    csv_path = check_output(output, "--output")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    paths = find_images(input)
    target = resolve_device(device)  # before loading the model: a wrong device fails fast
    classifier, description = load_checkpoint(ckpt_path, data, trusted=model)
    rows = predict_files(classifier, paths, batch_size, target, preprocess, description)
    write_csv(rows, csv_path)
    errors = sum(1 for row in rows if row["error"])
    note = " (see the error column)" if errors else ""
    print(f"{len(rows)} files, {errors} errors{note}: predictions written to {csv_path}")


def main(args: Sequence[str] | None = None) -> None:
    """Run from the command line; a problem the user can fix exits with its message and status 2."""
    run_command(run, args, "python -m proj.predict", (__doc__ or "").split("\n\nIn a notebook")[0])


if __name__ == "__main__":
    main()
