"""An evaluation's samples files: ``samples/<benchmark>.seed<k>.jsonl``, one JSON line per sample.

Lines are appended chunk by chunk as an evaluation goes, each write flushed to disk with SIGINT/SIGTERM held
back, so an interrupted evaluation keeps every finished sample; ``kill -9`` can tear at most the last line,
which :func:`read_samples` drops.

Example:
    >>> import tempfile
    >>> path = samples_file(Path(tempfile.mkdtemp()), "gsm8k", 0)
    >>> path.parent.mkdir()
    >>> append_samples(path, [{"problem_index": 0, "sample": 0, "reward": 1.0}])
    >>> read_samples(path)
    [{'problem_index': 0, 'sample': 0, 'reward': 1.0}]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlsteer.errors import json_object, writing
from rlsteer.interrupt import held
from rlsteer.io import write_atomically

SAMPLES = "samples"


def samples_file(out: Path, benchmark: str, seed: int) -> Path:
    """Where an evaluation in ``out`` keeps one benchmark's samples for one seed."""
    return out / SAMPLES / f"{benchmark}.seed{seed}.jsonl"


def sample_seed(seed: int, benchmark: str, problem: int, sample: int) -> int:
    """A distinct, reproducible sampling seed per (evaluation seed, benchmark, problem, sample).

    Example:
        >>> sample_seed(0, "gsm8k", 3, 1) != sample_seed(0, "gsm8k", 3, 2)
        True
    """
    bench = int.from_bytes(hashlib.sha256(benchmark.encode()).digest()[:3], "big")
    return (((seed * 16_777_259 + bench) * 100_003 + problem) * 1_031 + sample) % (2**63)


def read_samples(path: Path, *, repair: bool = False,
                 warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The sound records of a samples file, in order.

    A line cut short at the end of the file (an interrupted write) is cut off the file. Any other damaged
    line (cut in the middle of the file, not JSON, not a sample record, bytes that are not UTF-8) is left
    out and reported to ``warn`` as ``file:line``; with ``repair`` it is also removed from the file, so that
    its sample is drawn again by a resumed evaluation.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the last write was interrupted: keep only whole records
        with path.open("r+b") as f:
            f.truncate(end)
    records, kept, damaged = [], [], []
    for line_no, raw in enumerate(data[:end].splitlines(keepends=True), start=1):
        if not raw.strip():
            continue
        record, problem = _record(raw)
        if record is None:
            damaged.append(f"{path}:{line_no}: {problem}")
        else:
            records.append(record)
            kept.append(raw)
    for line in damaged:
        if warn is not None:
            warn(f"{line}; the line is dropped{' and its sample drawn again' if repair else ''}")
    if damaged and repair:
        write_atomically(path, b"".join(kept))
    return records


def _record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """A samples line as a record, or None and what is wrong with it."""
    record, problem = json_object(raw, "sample record")
    if record is None:
        return None, problem
    for key in ("problem_index", "sample"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None, f"{key} is {value!r}, not an index"
    reward = record.get("reward", 0.0)
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        return None, f"reward is {reward!r}, not a number"
    return record, ""


def append_samples(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append whole lines and flush them to disk; SIGINT/SIGTERM wait for them (``kill -9`` can tear the last
    line, which :func:`read_samples` then drops)."""
    with writing(path), held(), path.open("a") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
