"""rlsteer serve under load: latency and throughput at 1, 8 and 32 concurrent clients vs the backend called directly.

Run:  python bench/bench_serve.py [--model smollm2-135m-instruct] [--vectors FILE] [--clients 1,8,32]
      [--rounds 2] [--max-tokens 32] [--threads N]

A ``rlsteer serve`` subprocess (HF backend, batch size 32) serves the vector on 127.0.0.1 and a free port. For
each concurrency C, C clients each send ``--rounds`` greedy ``/v1/completions`` requests one after another
(C × rounds requests in all, each with its own prompt); we record every request's latency and the completion
tokens per second over the whole run. The direct row decodes the same C prompts with the same vector as one
``HFBackend.generate`` call per round in this process: the best a server can do with perfect batching and
no HTTP. Ratios server / direct come from the same run. Only loopback traffic; everything is bounded.
``--threads`` sets torch's threads in both processes (on a machine shared with other work, 1 avoids OpenMP
threads spinning against each other, which slows a 2-thread decode by an order of magnitude).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from rlsteer.models import load_model
from rlsteer.rollout import HFBackend, Request, SamplingParams
from rlsteer.steering import SteeringVectors
from rlsteer.templates import build_prompt

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["the sea", "a city at night", "mathematics", "a small dog", "the moon", "bread", "rain", "a train",
          "winter", "a library", "music", "a garden", "coffee", "the desert", "a bicycle", "snow"]


def prompts(n: int) -> list[str]:
    return [f"Request {i}: write one sentence about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def start_server(vectors: Path, model: str, threads: int | None) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen([sys.executable, "-m", "rlsteer.cli", "serve", f"steer={vectors}", "--model", model,
                             "--port", "0", "--batch-size", "32"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.split()[2]
    proc.kill()
    raise SystemExit("the server did not start")


async def clients(url: str, texts: list[str], rounds: int, max_tokens: int) -> tuple[list[float], int, float]:
    """Every client sends its requests one after another; returns latencies, completion tokens, wall seconds."""
    latencies: list[float] = []
    tokens = 0

    async def client(http: httpx.AsyncClient, k: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            body = {"model": "steer", "prompt": texts[k], "max_tokens": max_tokens, "temperature": 0, "seed": r}
            t0 = time.perf_counter()
            reply = await http.post(f"{url}/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            reply.raise_for_status()
            tokens += reply.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=len(texts) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, k) for k in range(len(texts))))
        return latencies, tokens, time.perf_counter() - t0


def direct(backend: HFBackend, tok, vectors: SteeringVectors, texts: list[str], rounds: int,
           max_tokens: int) -> tuple[list[float], int, float]:
    built = [build_prompt(tok, t, "plain") for t in texts]
    requests = [Request(p.ids, p.stop_ids, seed=0) for p in built]
    sampling = SamplingParams(temperature=0.0, max_new_tokens=max_tokens)
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for _ in range(rounds):
        s = time.perf_counter()
        rollouts = backend.generate(requests, vectors, sampling)
        latencies += [time.perf_counter() - s] * len(requests)  # every request waits for the whole batch
        tokens += sum(r.num_tokens for r in rollouts)  # with the stop token, as the server counts
    return latencies, tokens, time.perf_counter() - t0


def row(name: str, c: int, lat: list[float], tokens: int, wall: float) -> dict[str, float | int | str]:
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [lat[0]] * 19
    return {"how": name, "clients": c, "requests": len(lat), "p50_s": statistics.median(lat), "p95_s": q[18],
            "tok_s": tokens / wall, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--vectors", type=Path, help="a vector file (default: a mild random all-layer vector)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client (default 2)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch threads in the server and here (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    model, tok = load_model(args.model)
    vectors_file = args.vectors
    if vectors_file is None:
        gen = torch.Generator().manual_seed(0)
        d, n = model.config.hidden_size, model.config.num_hidden_layers
        vectors_file = Path(tempfile.mkdtemp()) / "vectors.safetensors"
        SteeringVectors.from_dict({i: torch.randn(d, generator=gen) * 0.3 for i in range(n)}).save(
            vectors_file, model=args.model)
    vectors = SteeringVectors.load(vectors_file, model)
    backend = HFBackend(model, tok, batch_size=32, progress=False)
    levels = [int(c) for c in args.clients.split(",")]
    results = []
    proc, url = start_server(vectors_file, args.model, args.threads)
    try:
        asyncio.run(clients(url, prompts(2), 1, 4))  # warm-up
        direct(backend, tok, vectors, prompts(2), 1, 4)
        for c in levels:  # interleaved, so that machine noise hits both alike
            results.append(row("server", c, *asyncio.run(clients(url, prompts(c), args.rounds, args.max_tokens))))
            results.append(row("direct", c, *direct(backend, tok, vectors, prompts(c), args.rounds, args.max_tokens)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"\n{args.model}, greedy, {args.max_tokens} new tokens at most, {args.rounds} requests per client, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs\n")
    print("| clients | server p50 s | server p95 s | server tok/s | direct p50 s | direct tok/s | "
          "throughput server/direct | p50 server/direct |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        s, d = (next(r for r in results if r["how"] == how and r["clients"] == c) for how in ("server", "direct"))
        print(f"| {c} | {s['p50_s']:.2f} | {s['p95_s']:.2f} | {s['tok_s']:.1f} | {d['p50_s']:.2f} | {d['tok_s']:.1f} | "
              f"{float(s['tok_s']) / float(d['tok_s']):.2f} | {float(s['p50_s']) / float(d['p50_s']):.2f} |")
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
