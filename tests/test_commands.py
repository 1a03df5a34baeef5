"""The tools' command lines (proj.commands): argparse's words, jsonargparse's parse, one-line errors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from proj.commands import argparse_words, run_command


def tool(paths: list[str], names: Sequence[str] = ("a", "b"), fast: bool = False, count: int = 1) -> dict:
    """A tool with a list flag that has no default, one that has one, a switch and a number.

    Args:
        paths: files to read
        names: what to call them
        fast: go fast
        count: how many times
    """
    return {"paths": paths, "names": list(names), "fast": fast, "count": count}


def test_list_flags_take_several_words_the_first_replace_the_default_and_a_repeat_adds():
    assert run_command(tool, ["--paths", "x", "y", "--names", "c", "--fast", "--paths=z"], "tool", None) == {
        "paths": ["x", "y", "z"],
        "names": ["c"],  # replaced, not added to ("a", "b")
        "fast": True,
        "count": 1,
    }


def test_jsonargparse_forms_pass_unchanged():
    argv = ["--paths", "[x, y]", "--paths+", "z", "--fast", "false", "--count=3"]
    assert argparse_words(argv, tool) == argv
    assert run_command(tool, argv, "tool", None) == {
        "paths": ["x", "y", "z"],
        "names": ["a", "b"],
        "fast": False,
        "count": 3,
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--paths", "x", "--count", "many"], "error: --count expects int, got 'many'."),
        (
            ["--paths", "x", "--cuont", "2"],
            "error: unrecognized arguments '--cuont 2': check their spelling; `tool --help`",
        ),
        ([], "error: the following arguments are required: --paths; `tool --help` lists every flag."),
    ],
)
def test_a_bad_command_line_is_one_error_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_command(tool, argv, "tool", None)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
