"""What the user sees when their input is wrong: one exception type, one way to report it, short parser errors."""

import re
import sys
from argparse import ArgumentError
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException


class UserError(Exception):
    """A problem the user can fix (a path, a file, a value); the CLI prints it without a traceback."""


HELP = "`python -m proj fit --help` lists every key"


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Every entry point's ending for input the user can fix: `error: ...` on stderr, exit status 2.

    jsonargparse reports a bad flag or config key as an ArgumentError tens of lines long: shortened to one (the
    tools name their own --help: proj.commands.parse).
    Lightning reports bad Trainer settings as MisconfigurationException; a GPU asked for where torch sees
    none gets the fix appended.
    """
    try:
        yield
    except ValueError as err:  # jsonargparse wraps what a class raised while it instantiates an optional argument
        if (cause := user_error_in(err)) is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
    except (UserError, MisconfigurationException, ArgumentError) as err:
        message = summarize_parse_error(str(err)) if isinstance(err, ArgumentError) else str(err)
        asks_for_gpu = isinstance(err, MisconfigurationException) and re.search("gpu|cuda", message, re.I)
        if asks_for_gpu and not torch.cuda.is_available():
            message += " This machine has no GPU torch can use: run with --trainer.accelerator cpu (or auto)."
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def user_error_in(err: BaseException) -> UserError | None:
    """The UserError that caused `err`, following its chain of causes, if any did."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return err


# jsonargparse explains a bad flag or config key as a tree of union alternatives, tens of lines long.
# These patterns find the line that matters; the key is the chain of `Parser key "..."` above it.
CLASS_HINTS = {
    "model": "MLPClassifier, CNNClassifier or TimmClassifier (or a full import path)",
    "data": "MNISTDataModule, FashionMNISTDataModule, CIFAR10DataModule or ImageFolderDataModule (or an import path)",
    "optimizer": "a torch.optim class such as SGD, Adam or AdamW",
    "scheduler": "a torch.optim.lr_scheduler class such as StepLR or CosineAnnealingLR, or proj.schedulers.WarmupDecay",
    "logger": "TensorBoardLogger, CSVLogger, MLFlowLogger or WandbLogger (or an import path; presets: configs/logger/)",
}


def summarize_parse_error(message: str, help_hint: str = HELP) -> str:
    """One line naming the bad key or value and the fix, from jsonargparse's error message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    key = ".".join(re.findall(r'Parser key "([^"]+)"', message))
    for line in lines:
        if match := re.search(r"Expected a dot import path string: (\S+)", line):
            hint = CLASS_HINTS.get(key.rpartition(".")[2], "a class name or full import path")
            return f"--{key} {match.group(1)}: no such class; use {hint}."
        if match := re.search(r"Option '([^']+)' is not accepted", line):
            return f"unknown key {key}.{match.group(1)}: check its spelling; {help_hint}."
        if match := re.search(r"does not accept option '([^']+)'", line):
            return f"unknown key {match.group(1)}: check its spelling; {help_hint}."
        if match := re.search(r"Expected a <class '(\w+)'>\. Got value: (.+)", line):
            return f"--{key} expects {match.group(1)}, got {match.group(2)!r}."
        if match := re.match(r"Expected a typing\.Literal\[(.+)\]\. Got value: (.+)", line):  # as argparse said it
            return f"argument --{key}: invalid choice: {match.group(2)!r} (choose from {match.group(1)})"
        if match := re.search(r"the following arguments are required: (.+)", line):
            flags = ", ".join("--" + ".".join(filter(None, (key, name))) for name in match.group(1).split(", "))
            return f"the following arguments are required: {flags}; {help_hint}."
        if match := re.search(r"File does not exist: '([^']+)'", line):
            return f"--{key} {match.group(1)}: no such file; check the path."
        if match := re.search(r"unrecognized arguments: (.+)", line):
            return f"unrecognized arguments {match.group(1)!r}: check their spelling; {help_hint}."
    # A plain value for an optional setting (`int | None`...): the types it takes, and what was given.
    subtypes = re.search(r"Subtypes: \[((?:<class '(?:int|float|str|bool|NoneType)'>(?:, )?)+)\]", message)
    given = re.search(r"Given value: (.+)$", message)
    if subtypes and given:
        names = [name.replace("NoneType", "null") for name in re.findall(r"<class '(\w+)'>", subtypes.group(1))]
        return f"--{key} expects {' or '.join(names)}, got {given.group(1)!r}."
    return f"{lines[0] if lines else message} ({help_hint})"
