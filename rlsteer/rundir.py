"""The run directory: the hand-off between ``train``, ``eval``, the analyses and ``report``.

A training run writes one folder::

    RUN/
      config.yaml              the resolved config (``rlsteer train RUN/config.yaml --resume`` continues it)
      metrics.jsonl            one line per finished step
      vectors.safetensors      the latest checkpoint's vectors
      checkpoints/step-N/      state.safetensors + state.json (the trainer's state), vectors.safetensors
      eval/<label>/            evaluations of the run's vectors (protocol.json, samples/, results.*)
      analysis/<kind>/         analyses of its vectors (``<kind>-step-N`` for a checkpoint's)
      selection.json           the checkpoint chosen among evaluated ones (``--step best``)
      holdout.jsonl            training problems kept out of training (``data.holdout``)

This module is the one place that spells that layout: everything else asks a :class:`RunDir`.

Example:
    >>> import tempfile
    >>> run = RunDir(Path(tempfile.mkdtemp()) / "demo")
    >>> run.checkpoint(3).relative_to(run.path).as_posix(), run.is_run()
    ('checkpoints/step-3', False)
    >>> parse_step("step-12"), parse_step("step-x")
    (12, None)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlsteer.errors import RlsteerError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
VECTORS = "vectors.safetensors"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
ANALYSIS = "analysis"
SELECTION = "selection.json"  # the checkpoint chosen by rlsteer.selection
HOLDOUT = "holdout.jsonl"  # training problems kept out of training (data.holdout), for checkpoint selection
#: the trainer state files of a checkpoint folder (its vectors file is :data:`VECTORS`)
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"

_STEP = re.compile(r"^step-(\d+)$")

Step = int | Literal["latest", "all", "best"]


class RunDirError(RlsteerError):
    pass


def step_name(step: int) -> str:
    """The folder name of checkpoint ``step``: ``step-N``."""
    return f"step-{step}"


def parse_step(name: str) -> int | None:
    """The step of a ``step-N`` folder name (None for anything else, e.g. a temporary staging folder)."""
    match = _STEP.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunDir:
    """A run directory at ``path`` (it need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())

    # --------------------------------------------------------------------------------------- files

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def vectors(self) -> Path:
        return self.path / VECTORS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def eval_root(self) -> Path:
        return self.path / EVAL

    @property
    def analysis_root(self) -> Path:
        return self.path / ANALYSIS

    @property
    def selection(self) -> Path:
        return self.path / SELECTION

    @property
    def holdout(self) -> Path:
        return self.path / HOLDOUT

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def checkpoint_vectors(self, step: int) -> Path:
        return self.checkpoint(step) / VECTORS

    def eval_dir(self, label: str) -> Path:
        return self.eval_root / label

    # ------------------------------------------------------------------------------------ questions

    def is_run(self) -> bool:
        """Whether a training run was started here (its config.yaml exists)."""
        return self.config.is_file()

    def has_records(self) -> bool:
        """Whether there is anything of a run to report (its config or its metrics)."""
        return self.config.is_file() or self.metrics.is_file()

    def checkpoint_steps(self) -> list[int]:
        """The steps of the complete checkpoints (trainer state written), ascending."""
        return self._steps(STATE_JSON)

    def vector_steps(self) -> list[int]:
        """The steps whose checkpoint holds a vector file, ascending."""
        return self._steps(VECTORS)

    def _steps(self, marker: str) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(step for p in self.checkpoints.iterdir()
                      if (step := parse_step(p.name)) is not None and (p / marker).is_file())

    def latest_checkpoint(self) -> Path | None:
        """The highest complete ``checkpoints/step-N`` (None when there is none)."""
        steps = self.checkpoint_steps()
        return self.checkpoint(steps[-1]) if steps else None

    def resolve(self, step: Step = "latest") -> list[tuple[str, Path]]:
        """(label, vector file) pairs for ``step``: ``latest`` (the run's vectors.safetensors), a checkpoint
        step, ``all`` (every checkpoint, ascending) or ``best`` (the one ``selection.json`` names). A missing
        one is a :class:`RunDirError`."""
        if not self.is_run():
            raise RunDirError(f"{self.path} is not a run directory (no {CONFIG})")
        if step == "best":
            if not self.selection.is_file():
                raise RunDirError(f"run {self.path} has no {SELECTION}: choose a checkpoint first with rlsteer eval "
                                  f"{self.path} --step all --select best:avg")
            step = int(json.loads(self.selection.read_text())["selected_step"])
        if step == "latest":
            if not self.vectors.is_file():
                raise RunDirError(f"run {self.path} has no {VECTORS} yet; wait for its first checkpoint")
            return [("latest", self.vectors)]
        steps = self.vector_steps()
        if not steps:
            raise RunDirError(f"run {self.path} has no checkpoints with a {VECTORS}")
        if step == "all":
            return [(step_name(s), self.checkpoint_vectors(s)) for s in steps]
        if step not in steps:
            raise RunDirError(f"run {self.path} has no checkpoint {step_name(step)}; it has steps {steps}")
        return [(step_name(step), self.checkpoint_vectors(step))]

    # --------------------------------------------------------------------------------- from a file

    @classmethod
    def of_vectors(cls, vectors: str | os.PathLike[str]) -> tuple[RunDir, int | None] | None:
        """The run a vector file belongs to and its checkpoint step (None: the run's latest vectors), or
        None when the file is not part of a run."""
        file = Path(vectors)
        if file.name != VECTORS:
            return None
        if cls(file.parent).is_run():
            return cls(file.parent), None
        step = parse_step(file.parent.name)
        if step is not None and file.parent.parent.name == CHECKPOINTS and cls(file.parent.parent.parent).is_run():
            return cls(file.parent.parent.parent), step
        return None

    def analysis_dir(self, kind: str, step: int | None = None) -> Path:
        """``analysis/<kind>`` for the run's latest vectors, ``analysis/<kind>-step-N`` for a checkpoint's."""
        return self.analysis_root / (kind if step is None else f"{kind}-{step_name(step)}")


def analysis_kind(folder_name: str) -> str:
    """The analysis kind of an ``analysis/`` subfolder (``lens-step-4`` → ``lens``)."""
    return folder_name.split("-step-")[0]


def find_runs(folder: str | os.PathLike[str]) -> Iterator[RunDir]:
    """The run directories directly inside ``folder`` (sorted by name)."""
    root = Path(folder)
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and RunDir(child).has_records():
                yield RunDir(child)
