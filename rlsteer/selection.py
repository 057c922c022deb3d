"""Checkpoint selection: which of a run's evaluated checkpoints to report.

The authors evaluate several checkpoints of each run and report the best by the test Average (their main
all-layer numbers come from step 265 sampled and step 212 greedy, not the last step). :func:`select_best`
does the same over any metric and benchmark set; :func:`write_selection` records the choice in the run
(``selection.json``, which ``rlsteer eval RUN --step best`` and ``analyze sweep layers --checkpoint best``
read) and beside the evaluations (the ``results.json`` of the ``--step all`` folder).

Choosing on the test set is the authors' procedure, and it flatters the chosen checkpoint. The honest
alternative is a validation split: train with ``data.holdout=N`` (N training problems kept out of training,
written to ``RUN/holdout.jsonl``) and select on it: ``rlsteer eval RUN --step all --benchmarks
RUN/holdout.jsonl --select best:avg``.

Example:
    >>> results = {s: {"benchmarks": {"math500": {"avg": {"mean": m}}}} for s, m in [(50, 0.2), (100, 0.4), (150, 0.3)]}
    >>> select_best(results, Rule("avg", ("math500",))).step
    100
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlsteer.errors import RlsteerError
from rlsteer.io import write_atomically
from rlsteer.rundir import RunDir, parse_step


class SelectionError(RlsteerError):
    pass


@dataclass(frozen=True)
class Rule:
    """How to rank checkpoints: ``metric`` (``avg`` = avg@n, ``first``, ``pass@k``, or ``headline`` = the
    paper's six-benchmark Average) averaged over ``benchmarks`` (empty: every benchmark evaluated)."""

    metric: str = "avg"
    benchmarks: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``best:METRIC`` or ``best:METRIC@BENCH,BENCH`` (``best`` alone is ``best:avg``).

        Example:
            >>> Rule.parse("best:avg@math500,amc23")
            Rule(metric='avg', benchmarks=('math500', 'amc23'))
        """
        kind, _, rest = text.partition(":")
        if kind != "best":
            raise SelectionError(f"--select {text!r}: write best, best:METRIC or best:METRIC@BENCH,BENCH "
                                 "(e.g. best:avg or best:headline)")
        match = re.fullmatch(r"(pass@\d+|[A-Za-z_]+)(?:@(.+))?", rest or "avg")
        if match is None:
            raise SelectionError(f"--select {text!r}: METRIC is avg, first, pass@K or headline")
        return cls(match.group(1), tuple(b for b in (match.group(2) or "").split(",") if b))

    def describe(self) -> str:
        over = ", ".join(self.benchmarks) if self.benchmarks else "every evaluated benchmark"
        return "the paper's six-benchmark Average" if self.metric == "headline" else f"mean {self.metric} over {over}"


@dataclass(frozen=True)
class Selection:
    """The chosen step, its score, every step's score, and the rule (recorded as JSON)."""

    step: int
    score: float
    scores: dict[int, float]
    rule: Rule
    evaluations: str  # where the scored evaluations are


def score(result: Mapping[str, Any], rule: Rule) -> float:
    """One evaluation's score under ``rule``."""
    if rule.metric == "headline":
        if "headline" not in result:
            raise SelectionError("best:headline needs the six paper benchmarks in every evaluation (--protocol paper)")
        return float(result["headline"]["mean"])
    benches = result["benchmarks"]
    chosen = rule.benchmarks or tuple(benches)
    missing = [b for b in chosen if b not in benches]
    if missing:
        raise SelectionError(f"the evaluations have no {', '.join(missing)}; they have {', '.join(benches)}")
    values = []
    for bench in chosen:
        if rule.metric not in benches[bench]:
            known = [k for k in benches[bench] if k in ("first", "avg") or k.startswith("pass@")]
            raise SelectionError(f"unknown metric {rule.metric!r} for {bench}; choose from {', '.join(known)} "
                                 "or headline")
        values.append(float(benches[bench][rule.metric]["mean"]))
    return statistics.fmean(values)


def select_best(results: Mapping[int, Mapping[str, Any]], rule: Rule, evaluations: str = "") -> Selection:
    """The step whose result scores highest under ``rule`` (the earliest one on a tie)."""
    if not results:
        raise SelectionError("no evaluated checkpoints to select from; run rlsteer eval RUN --step all first")
    scores = {step: score(result, rule) for step, result in sorted(results.items())}
    best = max(scores, key=lambda s: (scores[s], -s))
    return Selection(best, scores[best], scores, rule, evaluations)


def read_step_results(folder: str | Path) -> dict[int, dict[str, Any]]:
    """The results.json of every ``step-N`` evaluation in an ``--step all`` folder."""
    root = Path(folder)
    out = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        step = parse_step(child.name)
        if step is not None and (child / "results.json").is_file():
            out[step] = json.loads((child / "results.json").read_text())
    return out


def write_selection(selection: Selection, run: RunDir, folder: Path) -> Path:
    """Record ``selection`` as the run's ``selection.json`` and as the ``results.json`` of ``folder`` (the
    ``--step all`` evaluations it was made from)."""
    record = {"selected_step": selection.step, "score": selection.score, "rule": asdict(selection.rule),
              "why": f"the highest {selection.rule.describe()} among steps {sorted(selection.scores)}",
              "scores": {str(k): v for k, v in selection.scores.items()}, "evaluations": selection.evaluations}
    write_atomically(folder / "results.json", json.dumps({"selection": record}, indent=1))
    write_atomically(run.selection, json.dumps(record, indent=1))
    return run.selection


def read_selection(run: RunDir) -> dict[str, Any]:
    """The run's recorded selection (``selection.json``)."""
    if not run.selection.is_file():
        raise SelectionError(f"run {run.path} has no {run.selection.name}: select a checkpoint first with "
                             f"rlsteer eval {run.path} --step all --select best:avg")
    record: dict[str, Any] = json.loads(run.selection.read_text())
    return record


def select_run(run: RunDir, folder: Path, rule: Rule) -> Selection:
    """Select among the ``--step all`` evaluations in ``folder`` and record the choice in ``run``."""
    selection = select_best(read_step_results(folder), rule, str(folder))
    write_selection(selection, run, folder)
    return selection


__all__: Sequence[str] = ["Rule", "Selection", "SelectionError", "read_selection", "select_best", "select_run"]
