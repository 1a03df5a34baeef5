"""The developer's tools: `make help` lists every target, and the pre-commit hooks run offline and pass."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`command` with this interpreter's folder first on PATH: the hooks' `python3` is the one running the tests."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PATH": path, **env})


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_alone_lists_every_target_with_its_description():
    targets = re.findall(r"^([a-zA-Z_-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert {"help", "install", "test", "lint", "typecheck", "tensorboard", "clean"} <= set(targets)
    done = run("make", "--no-print-directory", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    listed = dict(line.split(maxsplit=1) for line in done.stdout.splitlines())
    assert list(listed) == targets  # each target once, in the Makefile's order, and each with a description


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
