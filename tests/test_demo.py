"""The demo pipeline end to end (tiny model in the default suite, SmolLM2 in the slow one)."""

from __future__ import annotations

import pytest

from rlsteer.demo import DemoConfig, run_demo
from rlsteer.steering import SteeringVectors


def check(cfg: DemoConfig, tmp_path) -> list[str]:
    lines: list[str] = []
    headline = run_demo(cfg, log=lines.append)
    assert headline["identity_gap"] < 1e-4
    assert headline["p_token_steered"] > headline["p_token_base"]
    sv = SteeringVectors.load(tmp_path / "To-direction.safetensors")
    assert abs(float(sv.vector(sv.entries[0]).norm()) - cfg.norm) < 1e-4
    assert any(line.startswith("[4/4]") for line in lines)
    return lines


def test_demo_runs_on_a_tiny_model(tmp_path):
    check(DemoConfig(model="tiny-random-llama", out_dir=str(tmp_path), max_new_tokens=4), tmp_path)


@pytest.mark.slow
def test_demo_runs_on_smollm2(tmp_path):
    lines = check(DemoConfig(out_dir=str(tmp_path), max_new_tokens=16), tmp_path)
    assert "30 layers, d_model=576" in "\n".join(lines)
