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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rlsteer.errors import RlsteerError, json_object, writing
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


#: what every record holds and the report plots; a line where one of these is not a number is damaged
NUMBERS = ("reward_mean", "accuracy", "len_mean", "truncated")


def read_metrics(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every sound record of a metrics file, in order. A torn last line (a ``kill -9`` during its write) is
    ignored quietly; any other damaged line (cut, not JSON, not a record, a value of the wrong type, bytes
    that are not UTF-8) is skipped and reported to ``warn`` as ``file:line: what is wrong``."""
    records = []
    for line_no, record, problem in _lines(path):
        if record is not None:
            records.append(record)
        elif warn is not None and problem != _TORN:
            warn(f"{path}:{line_no}: {problem}; the line is skipped")
    return records


def truncate_metrics(path: Path, last_step: int) -> list[str]:
    """Keep only the records of steps ≤ ``last_step`` (used when resuming from a checkpoint), atomically.

    Returns a sentence for each damaged line dropped in the kept range, naming the step whose metrics it held
    (told from its neighbours); the run itself resumes from its checkpoint whatever its log holds.
    """
    lines = _lines(path)
    steps = [(n, int(r["step"])) for n, r, _ in lines if r is not None]
    lost = []
    for line_no, record, problem in lines:
        if record is not None or problem == _TORN:
            continue
        before = max((s for n, s in steps if n < line_no), default=0)
        after = min((s for n, s in steps if n > line_no), default=None)
        if before >= last_step:
            continue
        missing = range(before + 1, min(after if after is not None else before + 2, last_step + 1))
        which = (f"step {missing[0]}" if len(missing) == 1 else f"steps {missing[0]}–{missing[-1]}" if missing
                 else "no step")
        lost.append(f"{path}:{line_no} is damaged ({problem}) and was dropped: the metrics of {which} are lost "
                    "(the vectors resume from the checkpoint all the same)")
    kept = [r for _, r, _ in lines if r is not None and r["step"] <= last_step]
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))
    return lost


_TORN = "cut short at the end of the file"


def _lines(path: Path) -> list[tuple[int, dict[str, Any] | None, str]]:
    """(line number, record or None, what is wrong) for every non-blank line of a metrics file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    out: list[tuple[int, dict[str, Any] | None, str]] = []
    raw_lines = data.split(b"\n")
    for line_no, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        last = line_no == len(raw_lines)  # no newline after it: its write did not finish
        record, problem = _record(raw)
        out.append((line_no, record, _TORN if last and record is None else problem))
    return out


def _record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    record, problem = json_object(raw)
    if record is None:
        return None, problem
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        return None, f"step is {step!r}, not a step number"
    for key, value in record.items():
        if (key in NUMBERS or key.startswith("norm/")) and (isinstance(value, bool)
                                                            or not isinstance(value, (int, float))):
            return None, f"{key} is {value!r}, not a number"
    return record, ""


def format_record(r: dict[str, Any]) -> str:
    """One training step's metrics record as its log line."""
    parts = "".join(f"  {k.removeprefix('reward/')} {v:+.3f}" for k, v in r.items() if k.startswith("reward/"))
    return (f"step {r['step']:>4}  reward {r['reward_mean']:+.3f}{parts}  acc {r['accuracy']:.3f}  "
            f"len {r['len_mean']:.0f}  trunc {r['truncated']:.2f}  |g| {r['grad_norm']:.3g}  "
            f"gen {r['time_generate']:.1f}s  rew {r['time_reward']:.1f}s  bwd {r['time_backward']:.1f}s  "
            f"{r['tokens_per_s']:.0f} tok/s")

