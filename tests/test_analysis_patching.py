"""Head-patching sweeps: every head index and only those, the right block, the CLI with its figure."""

from __future__ import annotations

import json

import pytest
import torch

from rlsteer.analysis.patching import VARIANTS, patch_plan
from rlsteer.cli import main
from rlsteer.samples import read_samples
from rlsteer.steering import SteeringVectors
from tests.test_evaluate import toy_benchmark


def test_plan_covers_every_head_and_only_those():
    plan = patch_plan(n_heads=28, n_kv_heads=4)  # Qwen2.5-Math-7B: the paper's Fig. 5 axes
    by_variant = {v: [h for x, h in plan if x == v] for v in VARIANTS}
    assert by_variant["steer_q"] == list(range(28)) and by_variant["steer_head"] == list(range(28))
    assert by_variant["skip_head"] == list(range(28))
    assert by_variant["steer_k"] == [0, 1, 2, 3] and by_variant["steer_v"] == [0, 1, 2, 3]
    assert all(by_variant[v] == [None] for v in ("base", "full", "skip_attn", "skip_layer"))
    assert len(plan) == 4 + 3 * 28 + 2 * 4
    with pytest.raises(ValueError, match="unknown patch variant"):
        patch_plan(4, 2, ("steer_x",))


def test_cli_sweeps_a_tiny_model_and_draws_the_panels(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    vectors = SteeringVectors.from_dict({("resid_post", 2): 4 * torch.randn(64, generator=g)})
    vectors.metadata.update(model="tiny-random-llama", template="qwen-math")
    path = vectors.save(tmp_path / "v.safetensors")
    out = tmp_path / "patching"
    assert main(["analyze", "patching", str(path), "--benchmarks", str(toy_benchmark(tmp_path / "toy.jsonl", 2)),
                 "--seeds", "0", "--out", str(out), "protocol.max_new_tokens=3", "protocol.temperature=0",
                 "reward.workers=0"]) == 0
    rows = [json.loads(line) for line in (out / "patching.jsonl").read_text().splitlines()]
    assert len(rows) == 4 + 3 * 4 + 2 * 2  # tiny llama: 4 query heads, 2 KV heads
    assert (out / "patching.png").read_bytes()[:4] == b"\x89PNG" and (out / "patching.pdf").is_file()
    protocol = json.loads((out / "steer_v" / "head-1" / "protocol.json").read_text())
    assert protocol["config"]["target"]["patch"] == "steer_v" and protocol["config"]["target"]["patch_head"] == 1

    def completion(name: str) -> str:
        return read_samples(out / name / "samples" / "toy.seed0.jsonl")[0]["completion"]

    assert completion("full") != completion("base")  # the vector acts
    assert completion("skip_layer") != completion("full")  # and the patch changes what it does
    assert "| steer_v | 1 |" in capsys.readouterr().out
