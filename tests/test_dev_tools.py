"""The developer's tools: `make help` lists every target, the pre-commit hooks run offline and pass, and under CI a
test that cannot run fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`command` with this interpreter's folder first on PATH: the hooks' `python3` is the one running the tests."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PATH": path, **env})


def test_make_alone_lists_every_target_with_its_description():
    if shutil.which("make") is None:
        skip_or_fail_in_ci("no make")
    targets = re.findall(r"^([a-zA-Z_-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert {"help", "install", "test", "lint", "typecheck", "tensorboard", "clean"} <= set(targets)
    done = run("make", "--no-print-directory", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    listed = dict(line.split(maxsplit=1) for line in done.stdout.splitlines())
    assert list(listed) == targets  # each target once, in the Makefile's order, and each with a description


@pytest.mark.parametrize(
    ("ci", "outcome", "message"),
    [
        (None, pytest.skip.Exception, "no widget"),
        ("false", pytest.skip.Exception, "no widget"),
        ("true", pytest.fail.Exception, "CI=true, and this test cannot run: no widget"),
    ],
)
def test_a_test_missing_a_part_skips_but_fails_under_ci(monkeypatch, ci, outcome, message):
    """skip_or_fail_in_ci: a developer's machine may lack a PostgreSQL server or a tmpfs; CI may not."""
    monkeypatch.delenv("CI", raising=False)
    if ci is not None:
        monkeypatch.setenv("CI", ci)
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)) as raised:  # caught either way: a skip
        skip_or_fail_in_ci("no widget")  # that escaped would skip this test instead of failing it
    assert type(raised.value) is outcome
    assert raised.value.msg == message


def test_pre_commit_config_is_valid():
    done = run(sys.executable, "-m", "pre_commit", "validate-config", cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pre_commit_hooks_run_offline_and_pass_on_the_repository(tmp_path):
    """In a copy (the format hook rewrites files): local hooks only, so nothing is cloned into PRE_COMMIT_HOME."""
    copy, home = tmp_path / "copy", tmp_path / "pre-commit-home"
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    assert run("git", "init", "-q", cwd=copy).returncode == 0
    assert run("git", "add", ".", cwd=copy).returncode == 0
    done = run(sys.executable, "-m", "pre_commit", "run", "--all-files", cwd=copy, PRE_COMMIT_HOME=str(home))
    assert done.returncode == 0, done.stdout + done.stderr
    for hook in ("ruff check", "ruff format", "notebooks stored without outputs"):
        assert re.search(rf"^{hook}\.+Passed$", done.stdout, flags=re.MULTILINE), done.stdout
    assert not (home / "repos").exists() and not list(home.glob("repo*"))  # no hook repository was fetched


def test_readme_layout_names_every_module():
    """The README's layout is where a newcomer looks first: every module of src/proj is in it."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("src/proj/\n")
    named = set(re.findall(r"\w+\.py", readme[start : readme.index("configs/ ", start)]))
    modules = {
        path.name
        for path in (ROOT / "src" / "proj").rglob("*.py")
        if path.name != "__init__.py" and path.parent.name != "callbacks"  # listed together under callbacks/
    }
    assert modules - named == set()
