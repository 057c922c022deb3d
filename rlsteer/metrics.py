"""Per-step metrics: ``metrics.jsonl`` always, plus an optional tracker (tensorboard or wandb, as extras).

The trainer calls ``tracker.log(step, metrics)`` unconditionally; the null tracker makes "no tracker" a
tracker, so the loop never branches on it.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> append_metrics(path, {"step": 1, "reward_mean": 0.25})
    >>> read_metrics(path)
    [{'step': 1, 'reward_mean': 0.25}]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from rlsteer.errors import RlsteerError, writing
from rlsteer.interrupt import held
from rlsteer.io import write_atomically


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorboardTracker:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RlsteerError("run.logger=tensorboard needs the tensorboard package: "
                               "pip install 'rlsteer[tensorboard]'") from None
        self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise RlsteerError("run.logger=wandb needs the wandb package: pip install 'rlsteer[wandb]'") from None
        self._run = wandb.init(dir=str(run_dir), config=config, name=run_dir.name, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


def make_tracker(kind: str, run_dir: Path, config: dict[str, Any]) -> Tracker:
    if kind == "tensorboard":
        return TensorboardTracker(run_dir)
    if kind == "wandb":
        return WandbTracker(run_dir, config)
    return NullTracker()


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a killed run keeps every finished step).

    SIGINT/SIGTERM wait for the line; only ``kill -9`` can tear it, and :func:`read_metrics` skips a torn line.
    """
    with writing(path), held(), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics file (a torn last line from a crash is ignored)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records of steps ≤ ``last_step`` (used when resuming from a checkpoint), atomically."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))
