"""An evaluation's samples files: ``samples/<benchmark>.seed<k>.jsonl``, one JSON line per sample.

Lines are appended chunk by chunk as an evaluation goes, each write flushed to disk with SIGINT/SIGTERM held
back, so an interrupted evaluation keeps every finished sample; ``kill -9`` can tear at most the last line,
which :func:`read_samples` drops.

Example:
    >>> import tempfile
    >>> path = samples_file(Path(tempfile.mkdtemp()), "gsm8k", 0)
    >>> append_samples(path, [{"problem_index": 0, "sample": 0, "reward": 1.0}])
    >>> read_samples(path)
    [{'problem_index': 0, 'sample': 0, 'reward': 1.0}]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlsteer.errors import writing
from rlsteer.interrupt import held

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


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a samples file; a line cut short by an interruption is dropped from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the last write was interrupted: keep only whole records
        with path.open("r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def append_samples(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append whole lines and flush them to disk; SIGINT/SIGTERM wait for them (``kill -9`` can tear the last
    line, which :func:`read_samples` then drops)."""
    with writing(path), held(), path.open("a") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
