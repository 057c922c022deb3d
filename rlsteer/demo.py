"""``rlsteer demo``: the newcomer's first run, offline on a CPU with the built-in SmolLM2 model.

What it does today (the analyses and the HTML report join as they land):

1. loads the model (the first run converts the GGUF file once and caches it);
2. checks on the real model that ``resid_post`` steering equals a ``down_proj`` bias;
3. trains an all-layer steering vector with RLOO on one-digit additions (``configs/demo-cpu.yaml``);
4. answers held-out problems greedily with and without the vector and compares accuracy.

A second run reuses the finished training run.

Example:
    >>> run_demo(DemoConfig(model="tiny-random-llama", out_dir="/tmp/demo", steps=2))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.architectures import architecture_of
from rlsteer.config import TrainConfig, load_config
from rlsteer.data import load_problems
from rlsteer.models import DEFAULT_MODEL, load_model
from rlsteer.rewards import RewardPool
from rlsteer.rollout import HFBackend, Request, SamplingParams
from rlsteer.steering.hooks import steer
from rlsteer.steering.vectors import SteeringVectors
from rlsteer.templates import build_prompt
from rlsteer.train import train


@dataclass(frozen=True)
class DemoConfig:
    """Options of :func:`run_demo`.

    Attributes:
        model: model spec (alias, hub id, folder or .gguf).
        out_dir: where the training run and its vectors go.
        steps: RLOO steps (the preset's 12 take ~5 minutes on 2 cores).
        eval_problems: held-out problems answered greedily with and without the vector.
    """

    model: str = DEFAULT_MODEL
    out_dir: str = "runs/demo"
    steps: int = 12
    eval_problems: int = 32


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, float]:
    """Run the demo, printing as it goes; returns the headline numbers."""
    t0 = time.perf_counter()
    log(f"[1/4] loading {cfg.model} (the first run converts the GGUF file once, ~30 s)")
    model, tok = load_model(cfg.model)
    arch = architecture_of(model)
    log(f"      {arch.family.name}: {arch.n_layers} layers, d_model={arch.d_model}, {arch.n_heads} query heads, "
        f"{arch.n_kv_heads} KV heads")

    log(f"[2/4] identity check: resid_post steering at layer {arch.n_layers - 1} vs a down_proj bias")
    gap = bias_identity_gap(model, tok, arch.n_layers - 1)
    log(f"      max |Δlogit| = {gap:.2e} (fp32 rounding only)")

    run_dir = Path(cfg.out_dir) / "train"
    train_cfg = load_config(TrainConfig, "demo-cpu", [f"model.name={cfg.model}", f"rl.steps={cfg.steps}",
                                                   f"run.dir={run_dir}"])
    log(f"[3/4] RLOO: an all-layer steering vector, {cfg.steps} steps × {train_cfg.rl.prompts_per_step} "
        f"one-digit additions × {train_cfg.rl.samples_per_prompt} samples → {run_dir}")
    train(train_cfg, resume=(run_dir / "config.yaml").is_file(), log=lambda line: log("      " + line))
    vectors = SteeringVectors.load(run_dir / "vectors.safetensors", model)

    log(f"[4/4] {cfg.eval_problems} held-out additions, greedy, base vs steered")
    base_acc, base_text = greedy_accuracy(model, tok, None, train_cfg, cfg.eval_problems)
    steered_acc, steered_text = greedy_accuracy(model, tok, vectors, train_cfg, cfg.eval_problems)
    for i in range(min(3, len(base_text))):
        log(f"      base:    {base_text[i]!r}")
        log(f"      steered: {steered_text[i]!r}")
    headline = {"identity_gap": gap, "accuracy_base": base_acc, "accuracy_steered": steered_acc,
                "seconds": time.perf_counter() - t0}
    log(f"\naccuracy on held-out additions: base {base_acc:.3f} → steered {steered_acc:.3f}; done in "
        f"{headline['seconds']:.0f} s. Vectors: {run_dir / 'vectors.safetensors'} (`rlsteer inspect` it); "
        f"training curve: {run_dir / 'metrics.jsonl'}.")
    return headline


def greedy_accuracy(model: nn.Module, tok: Any, vectors: SteeringVectors | None, cfg: TrainConfig,
                    n: int) -> tuple[float, list[str]]:
    """Greedy accuracy on ``n`` problems drawn with another seed than the training set's."""
    problems = load_problems(cfg.data.dataset.replace("synthetic-arithmetic:", "synthetic-arithmetic:seed=991,"),
                             limit=n)
    prompts = [build_prompt(tok, p.problem, cfg.data.template) for p in problems]
    sampling = SamplingParams(temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens)
    rollouts = HFBackend(model, tok, batch_size=cfg.rollout.batch_size, progress=None).generate(
        [Request(p.ids, p.stop_ids) for p in prompts], vectors, sampling)
    with RewardPool(workers=0) as pool:
        batch = pool.score([r.text for r in rollouts], [p.answer for p in problems], cfg.data.template,
                           cfg.reward.extraction)
    texts = [tok.decode(r.token_ids, skip_special_tokens=True).strip() for r in rollouts]
    return batch.count("correct") / len(problems), texts


@torch.no_grad()
def bias_identity_gap(model: nn.Module, tok: Any, layer: int) -> float:
    """max |logits(resid_post steering) − logits(down_proj bias)| for a random vector at ``layer``."""
    arch = architecture_of(model)
    s = torch.randn(arch.d_model, generator=torch.Generator().manual_seed(0))
    ids = tok("Natalia sold clips to 48 of her friends in April.", return_tensors="pt").input_ids
    with steer(model, {layer: s}):
        steered = model(ids).logits
    down: Any = arch.down_proj(layer)
    down.bias = nn.Parameter(s.to(down.weight.dtype), requires_grad=False)
    try:
        biased = model(ids).logits
    finally:
        down.bias = None
    return float((steered - biased).abs().max())
