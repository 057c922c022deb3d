"""Where analyses write, and how: tidy records as JSONL and CSV, figures as PNG and PDF, all atomically.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> write_records(out / "lens", [{"layer": 0, "token": "To", "cos": 0.37}])
    >>> sorted(p.name for p in out.iterdir())
    ['lens.csv', 'lens.jsonl']
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from rlsteer.io import write_atomically
from rlsteer.rundir import RunDir


def analysis_dir(vectors: Path, kind: str, out: str | os.PathLike[str] | None = None) -> Path:
    """``out``, else ``<run>/analysis/<kind>`` for a run's vector file, else ``analysis/<stem>/<kind>``."""
    if out is not None:
        return Path(out)
    owner = RunDir.of_vectors(vectors)
    if owner is not None:
        run, step = owner
        return run.analysis_dir(kind, step)
    return Path("analysis") / vectors.stem / kind


def write_records(stem: Path, records: Sequence[dict[str, Any]]) -> None:
    """``stem.jsonl`` and ``stem.csv`` (columns from the first record)."""
    write_atomically(stem.with_suffix(".jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    buf = io.StringIO()
    if records:
        writer = csv.DictWriter(buf, fieldnames=list(records[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    write_atomically(stem.with_suffix(".csv"), buf.getvalue())


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """``stem.png`` (150 dpi) and ``stem.pdf``."""
    paths = []
    formats: tuple[tuple[str, dict[str, Any]], ...] = ((".png", {"dpi": 150}), (".pdf", {}))
    for suffix, kwargs in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], bbox_inches="tight", **kwargs)
        write_atomically(stem.with_suffix(suffix), buf.getvalue())
        paths.append(stem.with_suffix(suffix))
    return paths
