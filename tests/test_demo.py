"""The demo pipeline end to end (tiny model in the default suite, SmolLM2 in the slow one)."""

from __future__ import annotations

import pytest

from rlsteer.demo import DemoConfig, run_demo
from rlsteer.metrics import read_metrics
from rlsteer.steering import SteeringVectors


def run(cfg: DemoConfig, tmp_path) -> tuple[dict[str, float], list[str]]:
    lines: list[str] = []
    headline = run_demo(cfg, log=lines.append)
    assert headline["identity_gap"] < 1e-4
    run_dir = tmp_path / "train"
    assert len(read_metrics(run_dir / "metrics.jsonl")) == cfg.steps
    assert len(SteeringVectors.load(run_dir / "vectors.safetensors")) > 0
    assert any(line.startswith("[4/4]") for line in lines)
    return headline, lines


def test_demo_runs_on_a_tiny_model_and_reuses_its_run(tmp_path):
    cfg = DemoConfig(model="tiny-random-llama", out_dir=str(tmp_path), steps=2, eval_problems=4)
    headline, _ = run(cfg, tmp_path)
    assert 0.0 <= headline["accuracy_base"] <= 1.0
    _, again = run(cfg, tmp_path)  # the second run resumes the finished training: no step is repeated
    assert not any("step    1" in line for line in again)


@pytest.mark.slow
def test_demo_trains_smollm2(tmp_path):
    headline, lines = run(DemoConfig(out_dir=str(tmp_path)), tmp_path)
    assert "30 layers, d_model=576" in "\n".join(lines)
    assert headline["accuracy_steered"] > headline["accuracy_base"]
