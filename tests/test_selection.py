"""Checkpoint selection: the best of a run's evaluated checkpoints, recorded and used (paper: the authors report
the best of five checkpoints by the test Average), and the validation split that makes it honest."""

from __future__ import annotations

import json

import pytest

from rlsteer.cli import main
from rlsteer.config import TrainConfig, load_config
from rlsteer.rundir import RunDir
from rlsteer.selection import Rule, SelectionError, select_best
from rlsteer.train import train


def result(**avg: float) -> dict:
    return {"benchmarks": {b: {"avg": {"mean": m}, "first": {"mean": 1 - m}} for b, m in avg.items()}}


def test_the_best_step_by_the_named_metric_and_benchmarks():
    results = {10: result(a=0.2, b=0.9), 20: result(a=0.5, b=0.1), 30: result(a=0.4, b=0.4)}
    assert select_best(results, Rule("avg", ("a",))).step == 20          # kills: the last step, or min
    assert select_best(results, Rule("avg", ("b",))).step == 10
    assert select_best(results, Rule("avg")).step == 10                  # mean over both: .55, .3, .4
    assert select_best(results, Rule("first", ("a",))).step == 10         # kills: a metric ignored
    assert select_best({5: result(a=0.3), 7: result(a=0.3)}, Rule()).step == 5  # ties: the earliest
    with pytest.raises(SelectionError, match="no c"):
        select_best(results, Rule("avg", ("c",)))
    with pytest.raises(SelectionError, match="headline"):
        select_best(results, Rule("headline"))
    assert Rule.parse("best:pass@4@a,b") == Rule("pass@4", ("a", "b")) and Rule.parse("best") == Rule()


def test_select_records_the_step_and_eval_uses_it(tmp_path, capsys):
    """Train with a validation split, evaluate every checkpoint on it, select, then evaluate --step best."""
    cfg = load_config(TrainConfig, "smoke", ["model.name=tiny-random-qwen3", f"run.dir={tmp_path / 'run'}",
                                             "rl.steps=4", "run.checkpoint_every=2", "data.holdout=6",
                                             "rollout.max_new_tokens=3", "rl.prompts_per_step=2",
                                             "rl.samples_per_prompt=2"])
    run = RunDir(train(cfg, log=lambda _: None))
    held = [json.loads(line) for line in run.holdout.read_text().splitlines()]
    assert len(held) == 6 and {"id", "problem", "answer"} <= set(held[0])
    common = ["--benchmarks", str(run.holdout), "protocol.max_new_tokens=3", "protocol.temperature=0",
              "reward.workers=0"]
    assert main(["eval", str(run.path), "--step", "all", "--select", "best:first", *common]) == 0
    record = json.loads(run.selection.read_text())
    steps = {int(s): v for s, v in record["scores"].items()}
    assert sorted(steps) == [2, 4] and record["selected_step"] == max(steps, key=lambda s: (steps[s], -s))
    assert json.loads((run.eval_dir("all") / "results.json").read_text())["selection"] == record
    assert "selected step" in capsys.readouterr().out
    assert main(["eval", str(run.path), "--step", "best", *common]) == 0
    best = run.eval_dir(f"step-{record['selected_step']}")
    assert json.loads((best / "protocol.json").read_text())["vectors"] == str(run.checkpoint_vectors(
        record["selected_step"]))
    assert main(["eval", str(run.path), "--select", "best", *common]) == 2  # needs --step all
