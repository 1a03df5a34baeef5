"""Result files (predictions, exported models): checked before the work starts, then written whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from proj.errors import UserError


def check_output(path: str | Path, flag: str) -> Path:
    """`path` as a Path if a file can be written there; a UserError naming `flag` and the fix otherwise.

    Checked up front so that a typo in the output folder fails at once, not after minutes of work.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder: pass a file name, e.g. {str(path / 'out')!r}")
    if not folder.is_dir():
        raise UserError(f"{flag} {str(path)!r}: folder {str(folder)!r} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {str(path)!r}: folder {str(folder)!r} is not writable; write elsewhere")
    return path


@contextmanager
def atomic_write(path: Path, partial: Path | None = None, sync: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write to (`partial`, else `<name>.<pid>.partial`), renamed onto `path`
    when the block ends without an error, and removed in every case (a write error, a KeyboardInterrupt).

    The one writer of every file proj replaces: a rename within one folder is atomic, so readers see the old file
    or the whole new one, never half of it, and a crash leaves at most the temporary file. `sync`: on disk before
    the rename, so that a power cut cannot leave an empty file. Errors pass through, for the caller to word.
    """
    partial = partial or path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        if sync:
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """`atomic_write` for result files: an OSError while writing becomes a UserError naming the path."""
    try:
        with atomic_write(path) as partial:
            yield partial
    except OSError as err:
        raise UserError(f"cannot write {str(path)!r}: {err.strerror or err}") from err
