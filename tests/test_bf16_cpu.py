"""Every code path with the model in bfloat16 on the CPU: a tensor made in float32 (or on another device) meeting
the model's own is caught here, without a GPU. Each path runs on a tiny random llama in bf16 and must give finite
results; the paths that run through a config set ``model.dtype=bfloat16``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlsteer.analysis.lens import logit_lens
from rlsteer.analysis.persistence import PersistenceConfig, persistence
from rlsteer.analysis.token_shift import ShiftConfig, sequence_shifts, token_shifts
from rlsteer.cli import main
from rlsteer.config import EvalConfig, TrainConfig, load_config
from rlsteer.evaluate import evaluate
from rlsteer.metrics import read_metrics
from rlsteer.models import load_model
from rlsteer.rollout import HFBackend, Request, SamplingParams
from rlsteer.steering import SteeringVectors
from rlsteer.templates import build_prompt
from rlsteer.train import train

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is 2 + 3?", "What is 7 * 6?"]


@pytest.fixture(scope="module")
def bf16():
    model, tok = load_model("tiny-random-llama", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    return model, tok


def vectors(layers=(1, 3), std=2.0) -> SteeringVectors:
    g = torch.Generator().manual_seed(0)
    sv = SteeringVectors.from_dict({("resid_post", i): std * torch.randn(64, generator=g) for i in layers})
    sv.metadata.update(model="tiny-random-llama", template="qwen-math")
    return sv


def toy_benchmark(path: Path, n: int = 2) -> Path:
    rows = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_step_in_bf16(tmp_path):
    cfg = load_config(TrainConfig, ROOT / "configs" / "smoke.yaml", [
        f"run.dir={tmp_path / 'run'}", "model.dtype=bfloat16", "rl.steps=2", "run.checkpoint_every=2",
        "rl.prompts_per_step=2", "rollout.batch_size=16", "rl.micro_batch_size=16"])
    run = train(cfg, log=lambda _: None)
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["grad_norm"]) for m in metrics)
    saved = SteeringVectors.load(run / "vectors.safetensors")
    assert all(torch.isfinite(saved.vector(e)).all() for e in saved.entries)


def test_hf_generation_in_bf16_with_steering(bf16):
    model, tok = bf16
    reqs = [Request(build_prompt(tok, q, "qwen-math").ids, (), seed=i) for i, q in enumerate(QUESTIONS)]
    out = HFBackend(model, tok, progress=False).generate(reqs, vectors(), SamplingParams(max_new_tokens=4,
                                                                                           logprobs=True))
    assert [len(r.token_ids) for r in out] == [4, 4]
    assert all(math.isfinite(x) for r in out for x in r.logprobs)


def test_eval_in_bf16(tmp_path):
    path = vectors().save(tmp_path / "v.safetensors")
    bench = toy_benchmark(tmp_path / "toy.jsonl")
    cfg = load_config(EvalConfig, "eval/gsm8k", [
        "model.name=tiny-random-llama", "model.dtype=bfloat16", f"protocol.benchmarks=[{bench}]",
        "protocol.n={toy: 2}", "protocol.max_new_tokens=4", "protocol.seeds=[0]", "reward.workers=0",
        f"target.vectors={path}", f"out={tmp_path / 'out'}"])
    rows = evaluate(cfg, log=lambda _: None)
    assert rows and json.loads((tmp_path / "out" / "protocol.json").read_text())["dtype"] == "bfloat16"


def test_lens_in_bf16(bf16):
    model, tok = bf16
    records = logit_lens(vectors(), model, tok, k=3)
    assert records and all(math.isfinite(r["cos"]) and math.isfinite(r["dot"]) for r in records)


def test_persistence_in_bf16(bf16):
    model, tok = bf16
    prompts = [build_prompt(tok, q, "qwen-math") for q in QUESTIONS]
    result = persistence(model, tok, vectors(layers=(0, 1, 2, 3), std=1.0), prompts,
                         PersistenceConfig(max_new_tokens=3, layers=(1, 3)), progress=False)
    assert all(math.isfinite(r["diff_diff"]) for r in result["records"])


def test_token_shift_in_bf16(bf16):
    model, tok = bf16
    prompts = [build_prompt(tok, q, "qwen-math") for q in QUESTIONS]
    token_shifts(model, tok, vectors(), prompts, ShiftConfig(max_new_tokens=4), progress=False)  # sampling path
    ids = prompts[0].ids
    shifts = sequence_shifts(model, vectors(), [*ids, 11, 12, 13], len(ids) - 1, track=[11])  # the Δp path
    assert shifts["dst_dp"].shape == (4,) and torch.isfinite(shifts["dst_dp"]).all()
    assert torch.isfinite(shifts["tracked"]).all()


@pytest.mark.parametrize("analysis", ["prefix", "patching"])
def test_eval_based_analyses_in_bf16(tmp_path, analysis):
    sv = SteeringVectors.from_dict({("resid_post", 2): 4 * torch.randn(64, generator=torch.Generator().manual_seed(0))})
    sv.metadata.update(model="tiny-random-llama", template="qwen-math")
    path = sv.save(tmp_path / "v.safetensors")
    out = tmp_path / analysis
    assert main(["analyze", analysis, str(path), "--benchmarks", str(toy_benchmark(tmp_path / "toy.jsonl")),
                 "--seeds", "0", "--out", str(out), "protocol.max_new_tokens=3", "reward.workers=0",
                 "model.dtype=bfloat16"]) == 0
    assert (out / f"{analysis}.jsonl").is_file()
