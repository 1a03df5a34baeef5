"""proj.sweep workers sharing one study on a real, throw-away PostgreSQL server (slow; skipped without PostgreSQL,
failed without it under CI)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial, TrialState, create_trial

import proj.sweep
from conftest import MODEL_CONFIGS, ROOT, skip_or_fail_in_ci, tiny_run_args
from proj.search_space import SearchSpace
from test_sweep import NO_CALLBACKS, SMALL_SPACE, sweep_args, write_space

pytestmark = pytest.mark.slow
PG_USER = "postgres"  # the unprivileged account the server runs as when the tests run as root


def pg_bin() -> Path:
    """The folder of initdb and pg_ctl: Debian's /usr/lib/postgresql/<version>/bin (the newest), else the one on
    PATH (Debian's /usr/bin has wrappers of some of them, not these)."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = debian[-1] if debian else shutil.which("initdb")
    if initdb is None or not (Path(initdb).resolve().parent / "pg_ctl").exists():
        skip_or_fail_in_ci("PostgreSQL not installed: no initdb and pg_ctl in /usr/lib/postgresql/*/bin or on PATH")
    return Path(initdb).resolve().parent


def as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as PG_USER."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        skip_or_fail_in_ci("running as root, and no runuser to start PostgreSQL as an unprivileged user")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        skip_or_fail_in_ci(f"running as root, and no {PG_USER!r} user to start PostgreSQL as")
    return [runuser, "-u", PG_USER, "--"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Callable[[str], str]]:
    """A server on a Unix socket in a private temporary folder (no TCP), fsync off; a function that creates a
    database and returns its URL. Stopped (immediately: nothing in it is kept) after the module."""
    try:
        import psycopg
    except ImportError:
        skip_or_fail_in_ci("no PostgreSQL driver: pip install -e '.[postgres]'")
    bindir, prefix = pg_bin(), as_server_user()
    base = Path(tempfile.mkdtemp(prefix="pg"))  # short: a socket path has at most 107 characters
    if prefix:
        shutil.chown(base, PG_USER)
    data = base / "data"

    def pg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60, check=False)

    def failed(step: str, result: subprocess.CompletedProcess[str]) -> str:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        return f"cannot start PostgreSQL: {step} exited {result.returncode}: {(result.stderr + log).strip()[-500:]}"

    def database(name: str) -> str:
        with psycopg.connect(host=str(base), user="postgres", dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@/{name}?host={base}"  # SQLAlchemy >= 2.1: postgresql:// is psycopg 3

    try:
        initdb = pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        if initdb.returncode:
            skip_or_fail_in_ci(failed("initdb", initdb))
        options = f"-c listen_addresses='' -c unix_socket_directories={base} -c fsync=off -c full_page_writes=off"
        start = pg(str(bindir / "pg_ctl"), "start", "-w", "-D", str(data), "-l", str(base / "log"), "-o", options)
        if start.returncode:
            skip_or_fail_in_ci(failed("pg_ctl start", start))
        yield database
    finally:
        if (data / "postmaster.pid").exists():
            pg(str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(data))
        shutil.rmtree(base, ignore_errors=True)


def test_workers_starting_together_on_a_new_database_open_one_study(postgres):
    """Each worker creates the tables of a new database: those that lose the race must retry, not stop."""
    url = postgres("race")
    workers = 4
    barrier, studies, errors = threading.Barrier(workers), [], []

    def open_it() -> None:
        barrier.wait()
        try:
            studies.append(proj.sweep.open_study(url, "race", "val/acc", "maximize", optuna.pruners.NopPruner()))
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert {study._study_id for study in studies} == {studies[0]._study_id}
    assert len(optuna.get_all_study_names(url)) == 1


def test_best_yaml_written_again_when_another_worker_finds_better(postgres, mnist_dir, tmp_path, monkeypatch):
    """The other worker's trial finished while this one wrote best.yaml, and is better: this one writes it again
    (else, writing last, it would leave its own best there)."""
    url, space = postgres("rewrite"), SearchSpace.parse(SMALL_SPACE)
    fit_args = tiny_run_args(mnist_dir, tmp_path / "logs", "--config", str(MODEL_CONFIGS["mlp"]))
    sweep = proj.sweep.Sweep(space, fit_args, "val/acc", tmp_path)
    sweep.check()
    study = proj.sweep.open_study(url, "rewrite", "val/acc", "maximize", optuna.pruners.NopPruner())
    distributions = {param.key: param.distribution for param in space.params}

    def finish(lr: float, value: float) -> None:
        params = {"model.optimizer.lr": lr, "model.hidden_sizes": "[32]"}
        flags = sweep.flags(space.suggest(FixedTrial(params)))  # type: ignore[arg-type]
        study.add_trial(
            create_trial(params=params, distributions=distributions, value=value, user_attrs={"flags": flags})
        )

    finish(0.01, 0.5)
    atomic_output = proj.sweep.atomic_output

    @contextlib.contextmanager
    def racing(path: Path) -> Iterator[Path]:
        with atomic_output(path) as partial:
            yield partial
        if len(study.trials) == 1:
            finish(0.02, 0.9)  # the other worker's

    monkeypatch.setattr(proj.sweep, "atomic_output", racing)
    assert sweep.write_best(study).number == 1
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.02


def test_two_workers_share_one_study(postgres, mnist_dir, tmp_path):
    """Two `python -m proj.sweep` at once, one study: every trial run once, in its own folder, and best.yaml the
    best of both workers' trials."""
    url, name, asked = postgres("sweep"), "shared", (2, 3)
    out_dir = tmp_path / "sweep"
    args = sweep_args(mnist_dir, out_dir, write_space(tmp_path / "small.yaml", SMALL_SPACE), *NO_CALLBACKS)
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), "OMP_NUM_THREADS": "1"}
    options = ["--storage", url, "--study_name", name, "--sampler", "random"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "proj.sweep", *args, *options, "--n_trials", str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in asked
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name=name, storage=url)
    trials = study.trials
    assert len(trials) == sum(asked)
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * sum(asked)
    assert sorted(trial.number for trial in trials) == list(range(sum(asked)))
    ran = [{int(n) for n in re.findall(r"Trial (\d+) finished", err)} for _, err in outputs]  # Optuna's log lines
    assert [len(numbers) for numbers in ran] == list(asked)
    assert ran[0].isdisjoint(ran[1])
    mine = [[trial for trial in trials if trial.number in numbers] for numbers in ran]
    assert any(  # at the same time, not one after the other
        a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
        for a in mine[0]
        for b in mine[1]
    ), "the two workers' trials did not overlap in time"

    log_dirs = [Path(trial.user_attrs["log_dir"]) for trial in trials]
    assert log_dirs == [out_dir / f"trial_{trial.number:03d}" for trial in trials]
    for log_dir in log_dirs:
        assert (log_dir / "hparams.yaml").is_file()
        assert list(log_dir.glob("events.out.tfevents.*"))

    text = (out_dir / "best.yaml").read_text()
    header = re.search(r"^# Best trial of study 'shared': trial (\d+), val/acc = ", text, re.MULTILINE)
    assert header, text[:500]
    written = study.trials[int(header.group(1))]
    assert written.value == study.best_value  # the best of both workers (a tie may name another trial)
    best = yaml.safe_load(text)
    assert best["model"]["init_args"]["optimizer"]["init_args"]["lr"] == written.params["model.optimizer.lr"]
    assert best["model"]["init_args"]["hidden_sizes"] == yaml.safe_load(written.params["model.hidden_sizes"])
    assert not list(out_dir.glob("*.partial"))
