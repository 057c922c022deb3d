"""The prefix experiment: three conditions × greedy/sampled through the evaluation protocol, tables, figure."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlsteer.analysis.prefix import prefix_configs
from rlsteer.cli import main
from rlsteer.config import EvalConfig, load_config
from rlsteer.samples import read_samples
from rlsteer.steering import SteeringVectors
from tests.test_evaluate import toy_benchmark


def saved_vectors(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    vectors = SteeringVectors.from_dict({("resid_post", 3): torch.randn(64, generator=g)})
    vectors.metadata.update(model="tiny-random-llama", template="qwen-math")
    return vectors.save(tmp_path / "v.safetensors")


def test_configs_share_model_and_template_and_differ_only_in_what_they_should(tmp_path):
    path = saved_vectors(tmp_path)
    configs = prefix_configs(load_config(EvalConfig, "eval/gsm8k"), path, "To", tmp_path / "out")
    assert sorted(configs) == sorted((m, c) for m in ("greedy", "sampled") for c in ("base", "base + To", "steered"))
    assert {c.model.name for c in configs.values()} == {"tiny-random-llama"}
    assert {c.target.template for c in configs.values()} == {"qwen-math"}
    assert configs["greedy", "base"].protocol.temperature == 0 and configs["sampled", "base"].protocol.temperature == 1
    assert configs["greedy", "base + To"].target.prefix == "To" and configs["greedy", "base"].target.prefix == ""
    assert configs["sampled", "steered"].target.vectors == str(path)
    assert configs["sampled", "base"].target.vectors is None
    assert len({c.out for c in configs.values()}) == 6


def test_cli_runs_six_evaluations_and_draws_the_bars(tmp_path, capsys):
    path = saved_vectors(tmp_path)
    bench = toy_benchmark(tmp_path / "toy.jsonl")
    out = tmp_path / "prefix"
    assert main(["analyze", "prefix", str(path), "--benchmarks", str(bench), "--seeds", "0", "--out", str(out),
                 "protocol.max_new_tokens=4", "reward.workers=0"]) == 0
    rows = [json.loads(line) for line in (out / "prefix.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["condition"] for r in rows} == {"base", "base + To", "steered"}
    assert (out / "prefix.png").read_bytes()[:4] == b"\x89PNG" and (out / "prefix.pdf").is_file()
    prompts = {name: read_samples(out / "greedy" / name / "samples" / "toy.seed0.jsonl")[0]["prompt"]
               for name in ("base", "prefix-To", "steered")}
    assert prompts["prefix-To"] == prompts["base"] + "To" and prompts["steered"] == prompts["base"]
    completions = {name: read_samples(out / "greedy" / name / "samples" / "toy.seed0.jsonl")[0]["completion"]
                   for name in ("base", "steered")}
    assert completions["base"] != completions["steered"]  # the vector is applied in the steered condition only
    assert "### greedy" in capsys.readouterr().out
