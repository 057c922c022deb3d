"""``rlsteer demo``: the newcomer's first run, offline on a CPU with the built-in SmolLM2 model.

What it does today (training, evaluation and the report join as they land):

1. loads the model (the first run converts the GGUF file once and caches it);
2. checks on the real model that ``resid_post`` steering equals a ``down_proj`` bias;
3. builds the paper's last-layer "To" direction (the lm_head row of "To", as the authors' ``insert_vector``)
   and saves it as a vector file;
4. generates greedy answers to a few math problems with and without the vector, and reports how the
   probability of "To" as the first generated token moves (paper §5, Fig. 4).

Example:
    >>> run_demo(DemoConfig(model="tiny-random-llama", out_dir="/tmp/demo", max_new_tokens=8))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.architectures import architecture_of
from rlsteer.models import DEFAULT_MODEL, load_model
from rlsteer.steering.directions import unembedding_direction
from rlsteer.steering.hooks import steer

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

PROBLEMS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "What is 17 + 25?",
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "If x + 7 = 19, what is x?",
)


@dataclass(frozen=True)
class DemoConfig:
    """Options of :func:`run_demo`.

    Attributes:
        model: model spec (alias, hub id, folder or .gguf).
        out_dir: where the vector file goes.
        token: the token whose unembedding direction is added at the last layer.
        norm: the vector's norm.
        max_new_tokens: greedy tokens generated per problem.
    """

    model: str = DEFAULT_MODEL
    out_dir: str = "runs/demo"
    token: str = "To"
    norm: float = 8.0
    max_new_tokens: int = 48


def run_demo(cfg: DemoConfig, log: Any = print) -> dict[str, float]:
    """Run the demo, printing as it goes; returns the headline numbers."""
    t0 = time.perf_counter()
    log(f"[1/4] loading {cfg.model} (the first run converts the GGUF file once, ~30 s)")
    model, tok = load_model(cfg.model)
    arch = architecture_of(model)
    log(f"      {arch.family.name}: {arch.n_layers} layers, d_model={arch.d_model}, {arch.n_heads} query heads, "
        f"{arch.n_kv_heads} KV heads")

    last = arch.n_layers - 1
    log(f"[2/4] identity check: resid_post steering at layer {last} vs a down_proj bias of the same vector")
    diff = _bias_identity_gap(model, tok, last)
    log(f"      max |Δlogit| = {diff:.2e} (fp32 rounding only)")

    vectors = unembedding_direction(model, tok, cfg.token, layer=last, norm=cfg.norm)
    path = vectors.save(Path(cfg.out_dir) / f"{cfg.token.strip() or 'token'}-direction.safetensors")
    log(f"[3/4] vector: the unembedding direction of {cfg.token!r} at layer {last}, norm {cfg.norm} → {path}")

    log(f"[4/4] greedy answers to {len(PROBLEMS)} problems, base vs steered ({cfg.max_new_tokens} new tokens)")
    prompts = [_prompt(tok, p) for p in PROBLEMS]
    token_id = tok.encode(cfg.token, add_special_tokens=False)[0]
    base_p, base_text = _generate(model, tok, prompts, token_id, cfg.max_new_tokens)
    with steer(model, vectors):
        steered_p, steered_text = _generate(model, tok, prompts, token_id, cfg.max_new_tokens)
    for i, problem in enumerate(PROBLEMS):
        log(f"\n  problem: {problem}")
        log(f"    base    p({cfg.token!r} first)={base_p[i]:.2f}  {base_text[i]!r}")
        log(f"    steered p({cfg.token!r} first)={steered_p[i]:.2f}  {steered_text[i]!r}")
    headline = {"identity_gap": diff, "p_token_base": float(base_p.mean()), "p_token_steered":
                float(steered_p.mean()), "seconds": time.perf_counter() - t0}
    log(f"\nmean p({cfg.token!r} as first token): base {headline['p_token_base']:.3f} → steered "
        f"{headline['p_token_steered']:.3f}; done in {headline['seconds']:.0f} s. Inspect the vector with "
        f"`rlsteer inspect {path}`.")
    return headline


def _prompt(tok: Any, problem: str) -> str:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem}]
    text: str = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


@torch.no_grad()
def _generate(model: nn.Module, tok: Any, prompts: list[str], token_id: int,
              max_new_tokens: int) -> tuple[torch.Tensor, list[str]]:
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    generate: Any = model.generate  # typed as Tensor | Module by torch's nn.Module.__getattr__
    out = generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    p_first = out.logits[0].float().softmax(-1)[:, token_id]  # [batch]
    texts = tok.batch_decode(out.sequences[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return p_first, [t.strip() for t in texts]


@torch.no_grad()
def _bias_identity_gap(model: nn.Module, tok: Any, layer: int) -> float:
    arch = architecture_of(model)
    s = torch.randn(arch.d_model, generator=torch.Generator().manual_seed(0))
    ids = tok(PROBLEMS[0], return_tensors="pt").input_ids
    with steer(model, {layer: s}):
        steered = model(ids).logits
    down: Any = arch.down_proj(layer)
    down.bias = nn.Parameter(s.to(down.weight.dtype), requires_grad=False)
    try:
        biased = model(ids).logits
    finally:
        down.bias = None
    return float((steered - biased).abs().max())
