"""One owner per run or evaluation folder: an exclusive lock held while a process writes there.

:func:`owning` creates ``FOLDER/.rlsteer.lock`` (the owner's pid, host and start time, as JSON) and holds an
``fcntl.flock`` on it until the block ends; a second process that asks for the same folder gets one
:class:`LockError` line naming the owner ("in use by pid N on HOST"). The kernel drops the ``flock`` of a
process that dies (``kill -9``, a crash, a power cut), so a lock file left behind is stale by construction
and the next owner takes it over, saying whose it was. The lock file is removed when the block ends, and so
is the folder itself when the block created it and left it empty (a start that failed its checks leaves
nothing behind).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "run"
    >>> with owning(folder, "run"):
    ...     try:
    ...         with owning(folder, "run"):
    ...             pass
    ...     except LockError as err:
    ...         print(str(err).replace(str(folder), "RUN").split(" on ")[0].replace(str(os.getpid()), "N"))
    run RUN is in use by pid N
    >>> folder.exists()  # a failed start leaves nothing behind
    False
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlsteer.errors import RlsteerError, writing

LOCK = ".rlsteer.lock"


class LockError(RlsteerError):
    pass


@contextlib.contextmanager
def owning(folder: str | os.PathLike[str], what: str = "folder", *,
           log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the block; ``what`` names the folder in
    the error (``run``, ``evaluation``). ``log`` hears about a stale lock taken over."""
    folder = Path(folder)
    created = _missing_parents(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd = -1
    try:
        fd, previous = _acquire(path, what, folder)
        if previous and log is not None:
            log(f"{folder} was left locked by pid {previous.get('pid')} on {previous.get('host')}, which is gone; "
                "taking it over")
        yield folder
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)  # releases the flock
        for made in created:  # deepest first: what a failed start created, when it is still empty
            with contextlib.suppress(OSError):
                made.rmdir()


def _acquire(path: Path, what: str, folder: Path) -> tuple[int, dict[str, Any] | None]:
    """Open, lock and fill the lock file; returns its descriptor and the stale owner it replaced (if any)."""
    while True:
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _read(path) or {}
            pid, host = holder.get("pid", "?"), holder.get("host", "?")
            raise LockError(f"{what} {folder} is in use by pid {pid} on {host}; wait for it to finish or stop it "
                            f"(if no such process runs, delete {path})") from None
        try:  # the owner before us may have removed the file between our open and our lock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = _read(path)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        return fd, previous


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing
