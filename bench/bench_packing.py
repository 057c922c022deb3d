"""The loss pass padded vs packed, side by side: computed / useful tokens, time, peak memory, log-prob agreement.

Run:  .venv/bin/python bench/bench_packing.py [--mix all|smollm2-gsm8k|paper-4k] [--repeat 1]

Two length mixes, each one RLOO step's worth of (prompt, completion) pairs, grouped by prompt as a step's
rollouts are, through the loss pass (log-probs under an all-layer ``resid_post`` vector, the RLOO loss,
backward) in four configurations:

* before — padded to the longest sequence of each micro-batch of a fixed count, prompts recomputed or
  shared through a KV cache (``rl.pack=false``, ``rl.micro_batch_size``);
* after — one packed row per micro-batch chosen by token budget, prompts recomputed or shared
  (``rl.pack=true``, ``rl.micro_batch_tokens``).

Mixes:

* ``smollm2-gsm8k``: SmolLM2-135M-Instruct's own completions (T = 1, ≤ 512 new tokens) of 4 GSM8K test
  problems × 8 samples, chat template; before = the demo's old 16 samples per micro-batch, after = 4096
  tokens. The completions are sampled once and cached (``--cache``).
* ``paper-4k``: the shape of the paper's steps on the tiny random Qwen3 (4 layers, d = 64, SmolLM2's 49k
  vocabulary): 2 prompts of 60–300 tokens × 4 samples, completion lengths log-uniform from 100 tokens up
  to the 4096-token total budget with 15 % cut at the budget (random tokens); before = 2 samples per
  micro-batch (the old worst case of 2 × 4096), after = 8192 tokens.

Columns: computed tokens (positions through the model, padding included), useful tokens (the same
computation without padding: every prompt once per micro-batch when shared, else once per sample),
their ratio, loss-pass time (best of ``--repeat`` after a warm-up on two sequences, configurations
interleaved, in one process), peak RSS
above the loaded model (one fresh process per configuration), and the largest difference of a sequence's
summed log-prob from the first configuration's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlsteer.data import load_problems
from rlsteer.models import load_model
from rlsteer.packing import micro_batches, packed_attention, padded_tokens, row_tokens
from rlsteer.rl import policy_loss, token_logprobs
from rlsteer.rollout import HFBackend, Request, SamplingParams
from rlsteer.steering import SteeringVectors, steer
from rlsteer.templates import build_prompt

Pair = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class Setup:
    label: str
    pack: bool
    share: bool
    micro_batch_size: int | None = None
    micro_batch_tokens: int | None = None


@dataclass(frozen=True)
class Mix:
    name: str
    model: str
    setups: tuple[Setup, ...]


def setups(count: int, tokens: int) -> tuple[Setup, ...]:
    return (Setup(f"padded, {count}/micro-batch, prompts recomputed", False, False, micro_batch_size=count),
            Setup(f"padded, {count}/micro-batch, prompt KV cache shared", False, True, micro_batch_size=count),
            Setup(f"packed, ≤{tokens} tokens, prompts recomputed", True, False, micro_batch_tokens=tokens),
            Setup(f"packed, ≤{tokens} tokens, prompts shared", True, True, micro_batch_tokens=tokens))


MIXES = {
    "smollm2-gsm8k": Mix("smollm2-gsm8k", "smollm2-135m-instruct", setups(16, 4096)),
    "paper-4k": Mix("paper-4k", "tiny-random-qwen3", setups(2, 8192)),
}


# ------------------------------------------------------------------------------------------- sequences


def smollm2_sequences(model: Any, tok: Any, cache: Path) -> list[Pair]:
    if cache.is_file():
        return [(tuple(p), tuple(c)) for p, c in json.loads(cache.read_text())]
    problems = load_problems("gsm8k", limit=4)
    prompts = [build_prompt(tok, p.problem, "chat") for p in problems]
    requests = [Request(p.ids, p.stop_ids, seed=1000 * i + k) for i, p in enumerate(prompts) for k in range(8)]
    rollouts = HFBackend(model, tok, batch_size=32, progress=True).generate(
        requests, None, SamplingParams(temperature=1.0, max_new_tokens=512))
    pairs = [(r.request.prompt_ids, r.token_ids) for r in rollouts]
    cache.write_text(json.dumps(pairs))
    return pairs


def paper_sequences(vocab: int, prompts: int = 2, samples: int = 4, budget: int = 4096, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(prompts):
        prompt = tuple(rng.randrange(vocab) for _ in range(rng.randint(60, 300)))
        room = budget - len(prompt)
        for _ in range(samples):
            n = room if rng.random() < 0.15 else int(math.exp(rng.uniform(math.log(100), math.log(room))))
            pairs.append((prompt, tuple(rng.randrange(vocab) for _ in range(n))))
    return pairs


def load(mix: Mix, cache: Path) -> tuple[Any, Any, list[Pair]]:
    model, tok = load_model(mix.model)
    if mix.name == "smollm2-gsm8k":
        return model, tok, smollm2_sequences(model, tok, cache)
    return model, tok, paper_sequences(model.config.vocab_size)


# ------------------------------------------------------------------------------------------- loss pass


def chunks(pairs: list[Pair], setup: Setup) -> list[list[int]]:
    return micro_batches(pairs, max_tokens=setup.micro_batch_tokens, max_sequences=setup.micro_batch_size,
                         share_prompts=setup.share)


def token_counts(pairs: list[Pair], setup: Setup) -> tuple[int, int]:
    """(computed, useful) tokens of one loss pass."""
    computed = useful = 0
    for chunk in chunks(pairs, setup):
        seqs = [pairs[i] for i in chunk]
        useful += row_tokens(seqs, share_prompts=setup.share)
        computed += row_tokens(seqs, share_prompts=setup.share) if setup.pack else padded_tokens(
            seqs, share_prompts=setup.share)
    return computed, useful


def vectors_for(model: Any) -> SteeringVectors:
    d, n = model.config.hidden_size, model.config.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    return SteeringVectors.from_dict({("resid_post", layer): 0.05 * torch.randn(d, generator=g) for layer in range(n)})


def loss_pass(model: Any, tok: Any, vectors: SteeringVectors, pairs: list[Pair], setup: Setup) -> list[float]:
    """Forward + backward of one step's loss; returns each sequence's summed log-prob."""
    for p in vectors.parameters():
        p.requires_grad_(True)
        p.grad = None
    adv = torch.tensor([(-1.0) ** i for i in range(len(pairs))])
    sums: dict[int, float] = {}
    total = sum(len(c) for _, c in pairs)
    with steer(model, vectors), packed_attention(model) if setup.pack else nullcontext():
        for chunk in chunks(pairs, setup):
            lps = token_logprobs(model, [pairs[i] for i in chunk], pad_id=tok.pad_token_id,
                                 share_prompts=setup.share, pack=setup.pack)
            policy_loss(torch.stack([lp.sum() for lp in lps]), adv[chunk], total).backward()
            sums.update({i: float(lp.detach().sum()) for i, lp in zip(chunk, lps, strict=True)})
    return [sums[i] for i in range(len(pairs))]


def memory_child(mix_name: str, index: int, cache: str, out: str) -> None:
    mix = MIXES[mix_name]
    model, tok, pairs = load(mix, Path(cache))
    vectors = vectors_for(model)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loss_pass(model, tok, vectors, pairs, mix.setups[index])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"loaded": loaded, "peak": peak}))


def run_mix(mix: Mix, repeat: int, cache: Path) -> None:
    model, tok, pairs = load(mix, cache)
    vectors = vectors_for(model)
    prompts = len({p for p, _ in pairs})
    lengths = sorted(len(c) for _, c in pairs)
    best = [float("inf")] * len(mix.setups)
    sums: list[list[float]] = [[] for _ in mix.setups]
    for setup in mix.setups:  # warm-up on two sequences
        loss_pass(model, tok, vectors, pairs[:2], setup)
    for _ in range(repeat):
        for i, setup in enumerate(mix.setups):
            t0 = time.perf_counter()
            sums[i] = loss_pass(model, tok, vectors, pairs, setup)
            best[i] = min(best[i], time.perf_counter() - t0)
    memory = []
    for i in range(len(mix.setups)):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([sys.executable, __file__, "--memory-child", mix.name, str(i), str(cache), f.name],
                           check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            row = json.loads(Path(f.name).read_text())
        memory.append(row["peak"] - row["loaded"])
    print(f"\n### {mix.name}: {mix.model}, {len(pairs)} sequences over {prompts} prompts, prompt lengths "
          f"{min(len(p) for p, _ in pairs)}–{max(len(p) for p, _ in pairs)}, completion lengths "
          f"{lengths[0]}–{lengths[-1]} (median {lengths[len(lengths) // 2]})\n")
    print("| configuration | micro-batches | computed tokens | useful tokens | computed / useful | loss pass s "
          "| × first | peak RSS above model MiB | max abs Δ logprob sum |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, setup in enumerate(mix.setups):
        computed, useful = token_counts(pairs, setup)
        delta = max(abs(a - b) for a, b in zip(sums[i], sums[0], strict=True))
        print(f"| {setup.label} | {len(chunks(pairs, setup))} | {computed} | {useful} | {computed / useful:.2f} | "
              f"{best[i]:.2f} | {best[i] / best[0]:.2f} | {memory[i]:.0f} | {delta:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mix", choices=("all", *MIXES), default="all")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rlsteer-bench-packing.json",
                        help="where the sampled SmolLM2 completions are kept between runs")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, index, cache, out = args.memory_child
        memory_child(name, int(index), cache, out)
        return
    torch.manual_seed(0)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; best of {args.repeat}")
    for name in MIXES if args.mix == "all" else (args.mix,):
        run_mix(MIXES[name], args.repeat, args.cache)
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
