"""Files appear whole or not at all: each is written beside its target under a temporary name, flushed to
disk, then renamed over the target in one step (``os.replace``).

Every file rlsteer writes goes through :func:`write_atomically` (bytes or text), :func:`replacing` (for
writers that want a path, such as safetensors) or :func:`staged_folder` (a folder of files, such as a
checkpoint), all inside :func:`rlsteer.interrupt.held`, so SIGINT/SIGTERM wait for the write to finish. The
exceptions are the append-only logs (``metrics.jsonl``, an evaluation's samples), whose readers drop a torn
last line. ``tests/test_interrupt.py`` scans the package and fails on any other kind of write.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_atomically(folder / "a" / "note.txt", "whole")
    >>> with staged_folder(folder / "ckpt") as staging:
    ...     write_atomically(staging / "state.json", "{}")
    >>> sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    ['a', 'a/note.txt', 'ckpt', 'ckpt/state.json']
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rlsteer.errors import writing
from rlsteer.interrupt import held


def write_atomically(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path``, creating its folder; readers see the old file or the new one."""
    with replacing(path) as tmp, open(tmp, "xb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for the block to write; when the block succeeds the file is
    flushed to disk and replaces ``path`` in one step, when it fails it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with writing(path), held():  # a failed write (read-only folder, full disk) is one OutputError line
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: str | os.PathLike[str], *, keep_existing: bool = False) -> Iterator[Path]:
    """A fresh folder beside ``target`` for the block to fill; when the block succeeds it takes ``target``'s
    place (an existing ``target`` is moved aside first, then deleted), when it fails it is removed.

    With ``keep_existing`` (caches that several processes may fill at once, and that take long to fill) a
    ``target`` that exists when the block ends stays and the staged copy is dropped: the first writer wins.
    A signal then interrupts the filling at once (the staged folder is removed); only the rename waits.
    """
    target = Path(target)
    tag = uuid.uuid4().hex[:8]
    staging, old = target.with_name(f".{target.name}.{tag}.tmp"), target.with_name(f".{target.name}.{tag}.old")
    with writing(target), nullcontext() if keep_existing else held():
        staging.mkdir(parents=True)
        try:
            yield staging
            with held():
                for file in staging.rglob("*"):
                    if file.is_file():
                        _fsync(file)
                if keep_existing:
                    _rename_unless_present(staging, target)
                else:
                    _replace_folder(staging, target, old)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)


def _rename_unless_present(staging: Path, target: Path) -> None:
    try:
        os.rename(staging, target)
    except OSError:  # another writer finished first: keep theirs
        if not target.exists():
            raise


def _replace_folder(staging: Path, target: Path, old: Path) -> None:
    moved = target.exists()
    if moved:
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if moved:  # put the old folder back rather than lose it
            os.replace(old, target)
        raise


def remove_leftovers(folder: str | os.PathLike[str]) -> None:
    """Delete the temporary files and folders that writes killed with ``kill -9`` left directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _LEFTOVER.match(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


_LEFTOVER = re.compile(r"^\..+\.[0-9a-f]{8}\.(tmp|old)$")  # what replacing and staged_folder name their temporaries


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
