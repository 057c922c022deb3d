"""The demo pipeline end to end (tiny model in the default suite, SmolLM2 in the slow one)."""

from __future__ import annotations

import json
import re

import pytest

from rlsteer.config import TrainConfig, load_config
from rlsteer.data import load_problems
from rlsteer.demo import HELD_OUT, DemoConfig, run_demo, spread_layers
from rlsteer.metrics import read_metrics

TINY = DemoConfig(model="tiny-random-qwen3", steps=2, eval_problems=4, analysis_prompts=4, persistence_prompts=2,
                  max_new_tokens=8, train_overrides=("rl.prompts_per_step=2", "rl.samples_per_prompt=4",
                                                     "rl.micro_batch_size=8", "rollout.max_new_tokens=8",
                                                     "reward.workers=0"))


def check(headline: dict, lines: list[str], out, steps: int) -> None:
    assert headline["identity_gap"] < 1e-4
    for run in ("last-layer", "all-layers"):
        assert len(read_metrics(out / run / "metrics.jsonl")) == steps
        assert (out / run / "eval" / "greedy" / "results.json").is_file()
        assert (out / run / "analysis" / "lens" / "lens_histograms.png").is_file()
    assert (out / "all-layers" / "analysis" / "persistence" / "persistence.png").is_file()
    assert set(headline["accuracy"]) == {"base", "base + 'To'", "last-layer", "all-layers"}
    assert all(0.0 <= a <= 1.0 for a in headline["accuracy"].values())
    assert json.loads((out / "headline.json").read_text())["accuracy"] == headline["accuracy"]
    assert [line[:5] for line in lines if re.match(r"\[\d/5\]", line)] == [
        "[1/5]", "[2/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert any(line.strip().startswith("report: ") for line in lines)
    assert "none of which (in either order) was a training problem" in headline["eval_set"]
    assert {"load and identity check", "evaluate", "report"} <= set(headline["stages"])


def test_demo_runs_end_to_end_on_a_tiny_model_and_reuses_its_work(tmp_path):
    cfg = DemoConfig(**{**TINY.__dict__, "out_dir": str(tmp_path)})
    lines: list[str] = []
    headline = run_demo(cfg, log=lines.append)
    check(headline, lines, tmp_path, cfg.steps)
    page = (tmp_path / "report.html").read_text()
    assert "Overview" in page and "training reward per run" in page
    for label in ("base", "base+To", "last-layer/greedy", "all-layers/greedy"):
        assert f"<td>{label}</td>" in page
    assert page.count("data:image/png;base64,") == 2 + 2 * 3 + 2  # overview, per run curve + lens, persistence
    # a random tiny model never stops, so Δp has nothing to measure: said and skipped, not fatal
    assert sum("token-shift of" in line and "skipped: none of the 4 completions" in line for line in lines) == 2
    lens_mtime = (tmp_path / "last-layer" / "analysis" / "lens" / "stats.json").stat().st_mtime

    again: list[str] = []
    second = run_demo(cfg, log=again.append)  # everything is reused: no training step, no analysis rerun
    check(second, again, tmp_path, cfg.steps)
    assert second["accuracy"] == headline["accuracy"]
    assert sum("already trained" in line for line in again) == 2
    assert not any(re.search(r"step +1 ", line) for line in again)
    assert (tmp_path / "last-layer" / "analysis" / "lens" / "stats.json").stat().st_mtime == lens_mtime


def test_the_evaluation_additions_are_not_training_problems():
    """The held-out set shares no problem with the demo's training set, in either operand order (one-digit
    additions have only 100 ordered pairs: another seed of the same generator would repeat them)."""
    def pairs(problems):
        return {frozenset(int(w) for w in p.problem.removeprefix("What is ").rstrip("?").split(" + "))
                for p in problems}

    train = load_config(TrainConfig, "demo-cpu").data.dataset
    held_out = load_problems(HELD_OUT.format(n=DemoConfig().eval_problems))
    assert len({p.problem for p in held_out}) == len(held_out) == 52
    assert not pairs(load_problems(train)) & pairs(held_out)
    assert not pairs(load_problems(train.replace("n=256", "n=5000"))) & pairs(held_out)


def test_persistence_layers_spread_over_depth():
    assert spread_layers(30) == (0, 9, 19, 28)
    assert spread_layers(4) == (0, 1, 2)  # fewer distinct layers than asked on a shallow model


@pytest.mark.slow
def test_the_real_demo(tmp_path):
    lines: list[str] = []
    headline = run_demo(DemoConfig(out_dir=str(tmp_path)), log=lines.append)
    check(headline, lines, tmp_path, DemoConfig().steps)
    assert "30 layers, d_model=576" in "\n".join(lines)
    first, last = headline["reward"]["all-layers"]
    assert last > first + 0.5  # the reward visibly rises
    assert headline["accuracy"]["all-layers"] > headline["accuracy"]["base"] + 0.2
    assert headline["seconds"] < 15 * 60
