"""The command lines of proj's tools (predict, export, tune, sweep, bench): a function's parameters as flags.

jsonargparse builds each from the function's signature (the defaults) and docstring (the help), as LightningCLI
does for the fit, and a bad flag or value is one `error: ...` line (proj.errors). Two argparse habits of the
documented commands are kept: a list flag takes several words (`--input a.png b/`, `--models mlp cnn`) and may be
repeated to add more (`--model X --model Y`), and a bool flag alone means true (`--cache`). A tool that builds a
fit passes every flag that is not its own on to it (`split_flags`).
"""

from __future__ import annotations

import json
import sys
from argparse import ArgumentError, RawDescriptionHelpFormatter
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any, get_args, get_origin, get_type_hints

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace

from proj.errors import UserError, exit_on_user_error, summarize_parse_error


class HelpFormatter(DefaultHelpFormatter, RawDescriptionHelpFormatter):
    """jsonargparse's help (each flag's type and default) under the description as it is written."""


def function_parser(
    function: Callable[..., Any], prog: str | None, description: str | None, skip: Iterable[str] = (), **kwargs: Any
) -> ArgumentParser:
    """A parser whose flags are `function`'s parameters (but those in `skip`)."""
    parser = ArgumentParser(
        prog=prog, description=description, formatter_class=HelpFormatter, exit_on_error=False, **kwargs
    )
    parser.add_function_arguments(function, skip=set(skip), as_group=False)
    return parser


def argparse_words(argv: Sequence[str], function: Callable[..., Any]) -> list[str]:
    """The command line as argparse took it, in the words jsonargparse takes: a list flag's first words replace its
    default (`--models mlp cnn` -> `--models=["mlp", "cnn"]`), a repeated one appends (`--model+=Y`); a bool flag
    without a value is true (`--cache` -> `--cache=true`). jsonargparse's own forms (`--models [mlp,cnn]`,
    `--models+ cnn`, `--cache false`) pass unchanged."""
    hints = {f"--{name}": hint for name, hint in get_type_hints(function).items()}
    lists = {
        flag for flag, hint in hints.items() if any(get_origin(h) in (list, Sequence) for h in (hint, *get_args(hint)))
    }
    groups: list[list[str]] = []
    for word, following in zip(argv, [*argv[1:], "-"], strict=False):  # the last word is followed by no value
        flag, equals, value = word.partition("=")
        if hints.get(word) is bool and following.startswith("-"):
            groups.append([f"{word}=true"])
        elif flag in lists and equals and not value.startswith("["):
            groups.append([flag, value])
        elif groups and groups[-1][0] in lists and not word.startswith(("-", "[")):
            groups[-1].append(word)
        else:
            groups.append([word])
    words, given = [], set()
    for flag, *values in groups:
        if flag in lists and values:
            words += [f"{flag}+={value}" for value in values] if flag in given else [f"{flag}={json.dumps(values)}"]
            given.add(flag)
        else:
            words += [flag, *values]
    return words


def split_flags(argv: Sequence[str], names: Iterable[str]) -> tuple[list[str], list[str]]:
    """A tool's own flags in argv (`--NAME VALUE` or `--NAME=VALUE` for each NAME of `names`, and --help), and the
    rest, the flags of the fit: what argparse's parse_known_args did, which jsonargparse has no equivalent of."""
    flags = {f"--{name}" for name in names}
    own: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        flag, equals, _ = arg.partition("=")
        if arg in ("-h", "--help"):
            own.append(arg)
        elif flag in flags:
            own += [arg, *islice(args, 0 if equals else 1)]
        else:
            rest.append(arg)
    return own, rest


def parse(parser: ArgumentParser, argv: Sequence[str]) -> Namespace:
    """The tool's own flags; an error is one line, as the main CLI's, naming the tool's --help (not proj fit's)."""
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as err:
        raise UserError(summarize_parse_error(str(err), f"`{parser.prog} --help` lists every flag")) from err


def run_command(function: Callable[..., Any], args: Sequence[str] | None, prog: str, description: str | None) -> Any:
    """Call `function` with its parameters read from the command line `args` (default: sys.argv[1:]); a problem
    the user can fix exits with one line and status 2."""
    with exit_on_user_error():
        argv = argparse_words(sys.argv[1:] if args is None else args, function)
        return function(**parse(function_parser(function, prog, description), argv).as_dict())
