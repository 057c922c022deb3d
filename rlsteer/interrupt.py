"""SIGINT and SIGTERM as clean stops: finish the write in progress, keep what is finished, say how to resume.

* :func:`interruptible` turns both signals into :class:`Interrupted` (a ``KeyboardInterrupt``) inside a block;
  ``rlsteer train`` and ``rlsteer eval`` run in one, save what they finished and exit with 128 + the signal
  number (130 for SIGINT, 143 for SIGTERM) and one line saying how to resume.
* :func:`held` makes a block run to its end before a signal that arrives during it takes effect; every
  file write goes through it (:mod:`rlsteer.io`), so a signal never leaves half a file or a stray temporary one.

Both restore the previous handlers when the block ends and do nothing outside the main thread (Python runs
signal handlers in the main thread only). ``kill -9`` cannot be caught: what survives it is that every file
appears atomically and the append-only logs drop a torn last line, so resuming still works.

Example:
    >>> import os, signal
    >>> try:
    ...     with interruptible():
    ...         with held():
    ...             os.kill(os.getpid(), signal.SIGTERM)
    ...             print("the write finishes first")
    ... except Interrupted as stop:
    ...     print(f"{stop} (exit {stop.exit_code})")
    the write finishes first
    interrupted by SIGTERM (exit 143)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any] | int | None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived inside :func:`interruptible`.

    ``detail`` says what was saved and ``resume`` the command that continues the work; the code that
    catches the exception on its way out fills them in.
    """

    def __init__(self, signum: int, detail: str = "", resume: str = "") -> None:
        super().__init__(signum)
        self.signum, self.detail, self.resume = signum, detail, resume

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def __str__(self) -> str:
        parts = [f"interrupted by {signal.Signals(self.signum).name}", self.detail,
                 f"resume with: {self.resume}" if self.resume else ""]
        return "; ".join(p for p in parts if p)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` where the main thread is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Handler] = {}
    try:
        _install(_raise, previous)
        yield
    finally:
        _restore(previous)


@contextmanager
def held() -> Iterator[None]:
    """Run the block to its end, then deliver the first SIGINT/SIGTERM that arrived during it (if any) to the
    handler that was in place before: :class:`Interrupted` inside :func:`interruptible`, else Python's own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, Handler] = {}
    try:
        _install(lambda signum, frame: pending.append(signum), previous)
        yield
    finally:
        _restore(previous)
        if pending:
            signal.raise_signal(pending[0])


def _install(handler: Callable[[int, FrameType | None], Any], previous: dict[int, Handler]) -> None:
    """Install ``handler`` for SIGINT and SIGTERM, noting each one it replaces in ``previous`` as it goes (so a
    signal in the middle still lets the caller put back exactly what was replaced)."""
    for signum in SIGNALS:
        previous[signum] = signal.signal(signum, handler)


def _restore(previous: dict[int, Handler]) -> None:
    for signum, handler in previous.items():
        # None: a handler installed outside Python, which cannot be put back; the default is the closest
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
