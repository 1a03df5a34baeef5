"""Macro-F1, the per-class test table and the class-named figures, on predictions chosen by the test."""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
from fractions import Fraction
from typing import Any

import lightning.pytorch.cli
import numpy
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

import proj.callbacks.confusion_matrix
import proj.callbacks.figures
import proj.callbacks.prediction_grid
from conftest import quick_trainer
from proj.callbacks import ConfusionMatrix, PredictionGrid
from proj.callbacks.confusion_matrix import cell_colour, confusion_figure
from proj.callbacks.figures import Drawing
from proj.callbacks.prediction_grid import CAPTION, MIN_SIDE, MISTAKE, RIGHT, prediction_figure
from proj.errors import UserError
from proj.models import ImageClassifier, MLPClassifier
from proj.models.base import per_class_table

SHAPE = (3, 4, 6)  # colour, not square
NAMES = ("T-shirt/top", "Trouser", "Ankle boot", "Bag")
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
PREDS = torch.tensor([0, 0, 1, 2, 1, 1, 2, 0, 3, 1])
# By hand, per class (tp, fp, fn) -> F1 = 2tp / (2tp + fp + fn):
# 0: (2, 1, 2) -> 4/7; 1: (2, 2, 0) -> 2/3; 2: (1, 1, 1) -> 1/2; 3: (1, 0, 1) -> 2/3
F1_MACRO = float((Fraction(4, 7) + Fraction(2, 3) + Fraction(1, 2) + Fraction(2, 3)) / 4)
TABLE = [  # accuracy = tp / images of the class
    "class        accuracy  images",
    "T-shirt/top    50.00%       4",
    "Trouser       100.00%       2",
    "Ankle boot     50.00%       2",
    "Bag            50.00%       2",
]


class FirstPixels(nn.Module):
    """Logits read off the image: its first `num_classes` values, so a test chooses every prediction."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1)[:, : self.num_classes]


class Scripted(ImageClassifier):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = FirstPixels(self.hparams["num_classes"])


def images_predicted_as(preds: Tensor) -> Tensor:
    torch.manual_seed(0)
    images = torch.randn(len(preds), *SHAPE) * 0.1
    images.view(len(preds), -1)[:, : len(NAMES)] += 5 * F.one_hot(preds, len(NAMES))
    return images


def loader() -> DataLoader:
    """Three batches (4, 4, 2): the metrics must cover the epoch, not average its batches."""
    return DataLoader(TensorDataset(images_predicted_as(PREDS), LABELS), batch_size=4)


class NamedData(LightningDataModule):
    class_names = NAMES
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    def train_dataloader(self) -> DataLoader:
        return loader()

    def val_dataloader(self) -> DataLoader:
        return loader()

    def test_dataloader(self) -> DataLoader:
        return loader()


def scripted() -> Scripted:
    model = Scripted(input_shape=SHAPE, num_classes=len(NAMES))
    assert torch.equal(model(images_predicted_as(PREDS)).argmax(1), PREDS)
    return model


def test_val_and_test_log_macro_f1_over_the_epoch():
    model = scripted()
    (val,) = quick_trainer(limit_val_batches=None).validate(model, datamodule=NamedData(), verbose=False)
    (test,) = quick_trainer(limit_test_batches=None).test(model, datamodule=NamedData(), verbose=False)
    for stage, logged in (("val", val), ("test", test)):
        assert logged[f"{stage}/f1_macro"] == pytest.approx(F1_MACRO, rel=1e-6)
        assert logged[f"{stage}/acc"] == pytest.approx(0.6)
        assert logged[f"{stage}/loss"] > 0


def test_test_prints_per_class_accuracy_with_the_data_modules_names(capsys):
    quick_trainer(limit_test_batches=None).test(scripted(), datamodule=NamedData(), verbose=False)
    out = capsys.readouterr().out
    assert f"\nTest accuracy per class:\n{chr(10).join(TABLE)}\n" in out
    assert out.count("Test accuracy per class") == 1


def test_per_class_names_come_from_the_checkpoint_or_are_indices(capsys):
    model = scripted()
    quick_trainer(limit_test_batches=None).test(model, dataloaders=loader(), verbose=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("Test accuracy per class:") + 1 :][:5] == [
        "class  accuracy  images",
        "0        50.00%       4",
        "1       100.00%       2",
        "2        50.00%       2",
        "3        50.00%       2",
    ]
    model.data_description = {"class_names": list(NAMES)}  # as loaded from a checkpoint
    quick_trainer(limit_test_batches=None).test(model, dataloaders=loader(), verbose=False)
    assert "\n".join(TABLE) in capsys.readouterr().out


def test_per_class_table_only_on_global_rank_zero(capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "is_global_zero", property(lambda self: False))
    quick_trainer(limit_test_batches=None).test(scripted(), datamodule=NamedData(), verbose=False)
    assert "accuracy per class" not in capsys.readouterr().out


def test_per_class_table_matches_torchmetrics_and_marks_classes_without_images():
    preds, labels = torch.tensor([0, 1, 1, 0, 2]), torch.tensor([0, 1, 0, 0, 1])
    accuracy = MulticlassAccuracy(4, average=None)(preds, labels)
    table = per_class_table(["zero", "one", "two", "three"], accuracy, torch.tensor([3, 2, 0, 0]))
    assert table.splitlines() == [
        "class  accuracy  images",
        "zero     66.67%       3",
        "one      50.00%       2",
        "two           -       0",
        "three         -       0",
    ]


def test_fit_logs_what_logged_metrics_promises():
    torch.manual_seed(0)
    for l1 in (0.0, 1e-4):
        model = MLPClassifier(input_shape=SHAPE, num_classes=len(NAMES), hidden_sizes=(8,), l1=l1)
        trainer = quick_trainer(limit_train_batches=2, limit_val_batches=2)
        trainer.fit(model, datamodule=NamedData())
        logged = trainer.callback_metrics.keys()
        assert set(model.logged_metrics) <= logged
        assert {"val/f1_macro", "val/acc_best"} <= set(model.logged_metrics)
        assert ("train/l1" in logged) == ("train/l1" in model.logged_metrics) == (l1 > 0)
        assert not any(key.startswith("train/f1") for key in logged)  # accuracy and loss only for train


@pytest.mark.parametrize(("monitor", "l1"), [("val/f1_macro", 0.0), ("train/l1", 1e-5)])
def test_plateau_may_monitor_the_new_keys(monitor, l1):
    plateau = functools.partial(lightning.pytorch.cli.ReduceLROnPlateau, monitor=monitor, mode="max")
    model = MLPClassifier(input_shape=SHAPE, num_classes=4, hidden_sizes=(8,), scheduler=plateau, l1=l1)
    assert model.configure_optimizers()["lr_scheduler"]["monitor"] == monitor


def test_plateau_refuses_train_l1_without_a_penalty():
    plateau = functools.partial(lightning.pytorch.cli.ReduceLROnPlateau, monitor="train/l1")
    model = MLPClassifier(input_shape=SHAPE, num_classes=4, hidden_sizes=(8,), scheduler=plateau)
    with pytest.raises(UserError, match=r"'train/l1', which is never logged.*val/f1_macro"):
        model.configure_optimizers()


def test_confusion_figure_is_labelled_with_class_names():
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    matrix = torch.randint(0, 1000, (10, 10))
    drawing = confusion_figure(matrix, fashion)
    texts = [text for text, _ in drawing.texts]
    assert [text for text in texts if text in fashion] == [name for name in fashion for _ in ("row", "column")]
    counts = [(int(text), xy) for text, xy in drawing.texts if text.isdigit()]
    assert [value for value, _ in counts] == matrix.flatten().tolist()  # row by row, one in each cell
    (x0, _), (x1, _) = counts[0][1], counts[1][1]
    side, largest = round(x1 - x0), int(matrix.max())
    for value, (x, y) in counts:  # each cell shaded by its count: the largest darkest
        corner = drawing.canvas.getpixel((round(x - side / 2) + 2, round(y - side / 2) + 2))
        assert corner == cell_colour(value / largest), (value, corner)
    assert cell_colour(1.0) == (8, 48, 107) and cell_colour(0.0) == (255, 255, 255)
    width, height = drawing.canvas.size
    assert all(0 <= x < width and 0 <= y < height for _, (x, y) in drawing.texts)


def recorded(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Drawing]:
    """Every drawing `module.name` makes from now on."""
    drawings, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kwargs: drawings.append(real(*args, **kwargs)) or drawings[-1])
    return drawings


def tensorboard_images(log_dir: str) -> dict[str, tuple[int, int]]:
    """The (width, height) of the last image TensorBoard holds under each tag."""
    events = EventAccumulator(log_dir, size_guidance={"images": 0})
    events.Reload()
    return {tag: (events.Images(tag)[-1].width, events.Images(tag)[-1].height) for tag in events.Tags()["images"]}


def test_callbacks_draw_class_names_and_colour(monkeypatch, tmp_path):
    matrices = recorded(monkeypatch, proj.callbacks.confusion_matrix, "confusion_figure")
    grids = recorded(monkeypatch, proj.callbacks.prediction_grid, "prediction_figure")
    callbacks = [ConfusionMatrix(), PredictionGrid(num_images=6)]
    logger = TensorBoardLogger(tmp_path, name="")
    quick_trainer(limit_val_batches=None, callbacks=callbacks, logger=logger).validate(
        scripted(), datamodule=NamedData()
    )

    texts = [text for text, _ in matrices[0].texts]
    assert [text for text in texts if text in NAMES] == [name for name in NAMES for _ in ("row", "column")]
    assert sorted({int(text) for text in texts if text.isdigit()}) == [0, 1, 2]  # ten images: the whole epoch
    captions = [text for text, _ in grids[0].texts[1:]]
    assert captions == [f"{p} ({q})" for p, q in zip(*short(PREDS[:4], LABELS[:4]), strict=True)]  # first batch: 4
    pixels = torch.as_tensor(numpy.asarray(grids[0].canvas)).float()
    assert (pixels[..., 0] - pixels[..., 2]).abs().max() > 50  # in colour
    assert tensorboard_images(logger.log_dir) == {  # as drawn, in TensorBoard's IMAGES tab
        "val/confusion_matrix": matrices[0].canvas.size,
        "val/predictions": grids[0].canvas.size,
    }


def short(preds: Tensor, labels: Tensor) -> tuple[list[str], list[str]]:
    cut = {"T-shirt/top": "T-shirt…", "Ankle boot": "Ankle b…"}
    names = [cut.get(name, name) for name in NAMES]
    return [names[i] for i in preds.tolist()], [names[i] for i in labels.tolist()]


def test_prediction_figure_shows_colour_images_as_stored():
    torch.manual_seed(0)
    stored = torch.rand(5, 3, 7, 9)  # pixels in [0, 1], colour, not square
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (stored - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    preds, labels = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 2, 0, 3])
    drawing = prediction_figure(normalised, labels, preds, columns=4, names=NAMES, mean=mean, std=std)
    assert [text for text, _ in drawing.texts[1:]] == [
        "T-shirt… (T-shirt…)",
        "Trouser (Trouser)",
        "Ankle b… (Ankle b…)",
        "Bag (T-shirt…)",
        "T-shirt… (Bag)",
    ]
    # Each image enlarged by a whole factor (to about 64 pixels), centred above its caption, its pixels as stored.
    scale = math.ceil(MIN_SIDE / 9)
    pixels = torch.as_tensor(numpy.asarray(drawing.canvas)).permute(2, 0, 1)
    shown, backgrounds = [], []
    for _, (x, y) in drawing.texts[1:]:  # each caption's centre
        left, top = round(x) - 9 * scale // 2, round(y) - CAPTION // 2 - 7 * scale
        shown.append(pixels[:, top : top + 7 * scale : scale, left : left + 9 * scale : scale])
        backgrounds.append(tuple(pixels[:, top + 7 * scale + 1, left + 1].tolist()))
    torch.testing.assert_close(torch.stack(shown), stored.mul(255).round().byte(), atol=0, rtol=0)
    assert backgrounds == [RIGHT, RIGHT, RIGHT, MISTAKE, MISTAKE]  # red: wrong
    # without names or normalisation: indices, and the images stretched to their full range, in gray
    plain = prediction_figure(torch.randn(3, 1, 5, 5), torch.arange(3), torch.arange(3))
    assert [text for text, _ in plain.texts[1:]] == ["0 (0)", "1 (1)", "2 (2)"]
    gray = torch.as_tensor(numpy.asarray(plain.canvas)).permute(2, 0, 1)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    side, cells = 5 * math.ceil(MIN_SIDE / 5), []
    for _, (x, y) in plain.texts[1:]:
        bottom, left = round(y) - CAPTION // 2, round(x) - side // 2
        cells.append(gray[0, bottom - side : bottom, left : left + side])
    assert (torch.stack(cells).min().item(), torch.stack(cells).max().item()) == (0, 255)  # the batch's range


def test_figures_are_drawn_off_the_training_loop_and_all_written_by_the_end(monkeypatch, tmp_path):
    """Drawing and sending (to a tracker's server, maybe) happen off the loop: the validation hook returns before
    its figure is drawn (the drawing waits for the hook's return here, so a hook that drew itself would find it
    never came), and every epoch's figure is with the loggers when the run ends (FigureCallback waits in teardown)."""
    steps, drawn_inside_the_hook = [], []
    monkeypatch.setattr(
        proj.callbacks.figures, "log_image", lambda loggers, tag, image, step: steps.append((tag, step, image.dtype))
    )
    real = proj.callbacks.confusion_matrix.confusion_figure
    hook_returned = threading.Event()

    def after_the_hook(matrix, names):
        drawn_inside_the_hook.append(not hook_returned.wait(timeout=5))
        return real(matrix, names)

    monkeypatch.setattr(proj.callbacks.confusion_matrix, "confusion_figure", after_the_hook)

    class Watched(ConfusionMatrix):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            hook_returned.clear()
            super().on_validation_epoch_end(trainer, pl_module)
            hook_returned.set()

    for _ in range(2):
        trainer = quick_trainer(
            limit_val_batches=None, callbacks=[Watched()], max_epochs=1, logger=TensorBoardLogger(tmp_path)
        )
        trainer.validate(scripted(), datamodule=NamedData())
    assert drawn_inside_the_hook == [False, False]
    assert steps == [("val/confusion_matrix", 0, numpy.uint8), ("val/confusion_matrix", 0, numpy.uint8)]


class TorchOps(TorchDispatchMode):
    """Every torch op of the thread that enters it (the mode stack is per thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_figure_thread_runs_no_torch_op(tmp_path):
    """A torch op on the figure thread gave OpenMP a second team of worker threads for the rest of the process, and
    with more OpenMP threads than cores every later training step waited on thread wake-ups: the CNN's epoch 1.3-1.6x
    slower on 2 cores. Both figures are drawn and written to TensorBoard with no torch op on that thread."""
    watch, sending = TorchOps(), proj.callbacks.figures._SENDING
    sending.submit(watch.__enter__).result()  # the figure thread's ops are seen from now on
    try:
        logger = TensorBoardLogger(tmp_path, name="")
        callbacks = [ConfusionMatrix(), PredictionGrid()]
        quick_trainer(limit_val_batches=None, callbacks=callbacks, logger=logger).validate(
            scripted(), datamodule=NamedData()
        )
        sending.submit(lambda: torch.zeros(2).add(1)).result()  # a torch op: the mode sees what this thread runs
    finally:
        sending.submit(watch.__exit__, None, None, None).result()
    assert set(tensorboard_images(logger.log_dir)) == {"val/confusion_matrix", "val/predictions"}
    assert [op for op in watch.ops if not op.startswith(("aten.zeros", "aten.add"))] == [], watch.ops
    assert any(op.startswith("aten.add") for op in watch.ops)


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own priority is set on Linux only")
def test_the_figure_thread_yields_to_training():
    """Drawing and encoding the figures (~70 ms of CPU an epoch) runs at the lowest priority, so that on a machine
    with few cores the training step's threads get the cores first; the main thread keeps its own priority."""
    sending = proj.callbacks.figures._SENDING
    nice = sending.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    assert nice == proj.callbacks.figures.BACKGROUND == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19


def test_figures_skip_loggers_without_images(monkeypatch, tmp_path):
    """A CSV logger alone takes no images: nothing is drawn."""
    matrices = recorded(monkeypatch, proj.callbacks.confusion_matrix, "confusion_figure")
    trainer = quick_trainer(limit_val_batches=None, callbacks=[ConfusionMatrix()], logger=CSVLogger(tmp_path))
    trainer.validate(scripted(), datamodule=NamedData())
    assert matrices == []
