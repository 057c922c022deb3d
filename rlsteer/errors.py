"""The one base class of every error rlsteer raises for bad input: the CLI prints its message on one line.

:class:`OutputError` is the error of a write that failed (a read-only folder, a full disk); :func:`writing`
turns an ``OSError`` inside a block into one, naming the path.

Example:
    >>> try:
    ...     with writing("/no/such/dir/x.json"):
    ...         open("/no/such/dir/x.json", "w")
    ... except OutputError as err:
    ...     print(err)
    cannot write /no/such/dir/x.json: No such file or directory; choose another output folder
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RlsteerError(ValueError):
    """A problem with the user's input or environment; the message names it and says how to fix it.

    The message is always one line: line breaks (say, from a key or value the user typed) become spaces.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(" ".join(a.splitlines()) if isinstance(a, str) else a for a in args))


def decode_utf8(data: bytes, origin: str | os.PathLike[str]) -> str:
    """``data`` (the bytes of the file ``origin``) as text; bytes that are not UTF-8 are one
    :class:`RlsteerError` line naming the file, the line and the byte offset.

    Example:
        >>> decode_utf8(b"ok\\n\\xff", "data.jsonl")
        Traceback (most recent call last):
        ...
        rlsteer.errors.RlsteerError: data.jsonl is not UTF-8 text: byte 0xff at offset 3 (line 2); save it as UTF-8
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise RlsteerError(f"{os.fspath(origin)} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset "
                           f"{err.start} (line {line}); save it as UTF-8") from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors.

    Example:
        >>> first_line(OSError("disk full\\nmore detail")), first_line(KeyError())
        ('disk full', 'KeyError')
    """
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class OutputError(RlsteerError):
    """A file or folder rlsteer cannot write: the message names the path, the cause and the fix."""


_FIXES = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some disk space (quota) or write elsewhere",
    errno.EACCES: "choose a writable folder or fix its permissions",
    errno.EPERM: "choose a writable folder or fix its permissions",
    errno.EROFS: "choose a folder on a writable file system",
}


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block (which writes ``path``) into a one-line :class:`OutputError`."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err).strip() or type(err).__name__
        fix = _FIXES.get(err.errno or 0, "choose another output folder")
        raise OutputError(f"cannot write {os.fspath(path)}: {reason}; {fix}") from None


def json_object(raw: bytes, what: str = "record") -> tuple[dict[str, Any] | None, str]:
    """One JSONL line as a dict, or None and what is wrong with it (for readers that skip damaged lines).

    Example:
        >>> json_object(b'{"step": 1}'), json_object(b'[1]')[1], json_object(b'{"st')[1]
        (({'step': 1}, ''), 'a JSON list, not a record', 'not a whole JSON line (Unterminated string starting at)')
    """
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"byte 0x{raw[err.start]:02x} at offset {err.start} of the line is not UTF-8"
    except json.JSONDecodeError as err:
        return None, f"not a whole JSON line ({err.msg})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not a {what}"
    return record, ""
