"""``evaluate(cfg)``: the paper's evaluation protocol for base, steered, prefixed and circuit-patched models.

An evaluation directory holds

* ``protocol.json``: the resolved config plus what reproduces it: model and revision, template, prefix,
  sampling settings, n per benchmark, seeds, each data file with its sha256, the verifier and rlsteer
  versions, the vector file's sha256;
* ``samples/<benchmark>.seed<k>.jsonl``: one line per sample (problem id, prompt, completion, extracted
  answer, reward, finish reason, length, sum of log-probs, seed), appended chunk by chunk as it goes, so an
  interrupted evaluation resumes where it stopped;
* ``results.json``, ``results.md``, ``results.csv``: per benchmark and seed the first-sample accuracy,
  avg@n and unbiased pass@k, over seeds mean ± population std, and the paper's six-benchmark headline
  (:mod:`rlsteer.aggregate`).

Every sample has its own seed derived from (evaluation seed, benchmark, problem, sample), so a resumed run
draws exactly the samples an uninterrupted one would, whatever the batching.

Example:
    >>> from rlsteer.config import EvalConfig, load_config
    >>> cfg = load_config(EvalConfig, "eval/gsm8k", ["target.vectors=runs/demo/train", "protocol.limit=50"])
    >>> results = evaluate(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rlsteer.aggregate import PAPER_BENCHMARKS, headline, mean_std, scores
from rlsteer.config import EvalConfig, read_yaml, to_dict
from rlsteer.data import REGISTRY, Problem, load_problems
from rlsteer.errors import RlsteerError, writing
from rlsteer.interrupt import Interrupted, held, interruptible
from rlsteer.io import remove_leftovers, write_atomically
from rlsteer.models import DEFAULT_MODEL, load_model
from rlsteer.rewards import RewardBatch, RewardPool, extract_answer
from rlsteer.rollout import HFBackend, Request, Rollout, SamplingParams
from rlsteer.steering.sites import HEAD_SITES, KV_HEAD_SITES, PATCH_SITES, Entry, SiteError
from rlsteer.steering.vectors import SteeringVectors, read_vector_file
from rlsteer.templates import Prompt, build_prompt


class EvalError(RlsteerError):
    pass


@dataclass(frozen=True)
class Target:
    """One thing to evaluate: a label, its vector file (None: the base model) and its output directory."""

    label: str
    vectors: Path | None
    out: Path


# ------------------------------------------------------------------------------------------ what to evaluate


def resolve_targets(cfg: EvalConfig) -> list[Target]:
    """The vector files ``cfg.target`` names, with their output directories.

    A run directory gives its latest vectors, one checkpoint's (``step: N``) or every checkpoint's
    (``step: all``, each into ``out/step-N``).
    """
    t = cfg.target
    suffix = "".join([f"-x{t.scale:g}" if t.scale != 1.0 else "", f"-prefix-{t.prefix}" if t.prefix else "",
                      f"-{t.patch}" if t.patch else "", f"-h{t.patch_head}" if t.patch_head is not None else ""])
    if t.vectors is None:
        label = "base" + suffix
        return [Target(label, None, Path(cfg.out or Path("evals") / label))]
    path = Path(t.vectors).expanduser()
    if path.is_file():
        label = path.stem + suffix
        return [Target(label, path, Path(cfg.out or Path("evals") / label))]
    if not (path / "config.yaml").is_file():
        raise EvalError(f"target.vectors={t.vectors!r} is neither a vector file nor a run directory (no config.yaml)")
    checkpoints = path / "checkpoints"
    if t.step == "latest":
        file = path / "vectors.safetensors"
        if not file.is_file():
            raise EvalError(f"run {path} has no vectors.safetensors yet; wait for its first checkpoint")
        label = f"latest{suffix}"
        return [Target(f"{path.name}/{label}", file, Path(cfg.out or path / "eval" / label))]
    steps = sorted(int(p.name.removeprefix("step-")) for p in checkpoints.glob("step-*")
                   if (p / "vectors.safetensors").is_file()) if checkpoints.is_dir() else []
    if not steps:
        raise EvalError(f"run {path} has no checkpoints with a vectors.safetensors")
    if t.step == "all":
        root = Path(cfg.out or path / "eval" / f"all{suffix}")
        return [Target(f"{path.name}/step-{s}{suffix}", checkpoints / f"step-{s}" / "vectors.safetensors",
                       root / f"step-{s}") for s in steps]
    if t.step not in steps:
        raise EvalError(f"run {path} has no checkpoint step-{t.step}; it has steps {steps}")
    label = f"step-{t.step}{suffix}"
    return [Target(f"{path.name}/{label}", checkpoints / f"step-{t.step}" / "vectors.safetensors",
                   Path(cfg.out or path / "eval" / label))]


def resolve_defaults(cfg: EvalConfig, targets: Sequence[Target]) -> EvalConfig:
    """Fill the model, template and prefix left open from the vectors' metadata (or the run's config)."""
    meta: dict[str, str] = {}
    if targets and targets[0].vectors is not None:
        meta = read_vector_file(targets[0].vectors)[1]
        run_config = targets[0].vectors.parent / "config.yaml"
        if not meta.get("model") and run_config.is_file():
            meta["model"] = str(read_yaml(run_config).get("model", {}).get("name", ""))
    model = cfg.model.name or meta.get("model") or DEFAULT_MODEL
    template = cfg.target.template or meta.get("template") or "qwen-math"
    prefix = cfg.target.prefix if cfg.target.prefix is not None else meta.get("prefix")
    return replace(cfg, model=replace(cfg.model, name=model),
                   target=replace(cfg.target, template=template, prefix=prefix or None))


def steering_for(vectors: SteeringVectors | None, cfg: EvalConfig) -> Any:
    """What the backend applies: the vectors (scaled), a circuit patch built from one of them, or None.

    ``vectors`` is a freshly loaded file; its ``scale`` is multiplied by ``target.scale`` in place.
    """
    t = cfg.target
    if vectors is None:
        if t.patch is not None:
            raise EvalError("target.patch needs target.vectors: a patch moves a trained vector into a circuit")
        return None
    vectors.scale *= t.scale
    if t.patch is None:
        return vectors
    try:
        return patch_from(vectors, t.patch, layer=t.patch_layer, head=t.patch_head)
    except SiteError as err:
        raise EvalError(f"target.patch: {err}") from None


def patch_from(vectors: SteeringVectors, variant: str, *, layer: int | None = None,
               head: int | None = None) -> dict[Entry, torch.Tensor]:
    """The circuit patch of the paper's §5: one trained vector moved into the block it feeds.

    The vector at ``resid_post`` ℓ (or ``resid_pre`` ℓ + 1) is the input of block ℓ + 1, so the patch goes
    there: ``full`` reproduces the unmodified vector, ``skip_attn`` hides it from that block's attention,
    ``steer_v`` with head h shows it to KV head h's values only, and so on (see :mod:`rlsteer.steering.sites`).
    ``layer`` picks the vector's layer when the file has several.

    Example:
        >>> sv = SteeringVectors.from_dict({("resid_post", 26): torch.ones(4)})
        >>> list(patch_from(sv, "steer_v", head=1))
        [Entry(site='steer_v', layer=27, head=1)]
    """
    if variant not in PATCH_SITES:
        raise SiteError(f"unknown variant {variant!r}; variants: {', '.join(PATCH_SITES)}")
    sources = [e for e in vectors.entries if e.site in ("resid_post", "resid_pre")]
    layers = sorted({e.layer for e in sources})
    if layer is None and len(layers) != 1:
        raise SiteError(f"the file has resid_post/resid_pre vectors at layers {layers}; name one with patch_layer")
    chosen = [e for e in sources if e.layer == (layer if layer is not None else layers[0])]
    if len(chosen) != 1:
        what = f"patch_layer {layer} is not" if not chosen else f"layer {chosen[0].layer} has both a resid_post and"
        raise SiteError(f"{what} one of the file's resid_post/resid_pre layers {layers}; pass --layer "
                        "(target.patch_layer) with one of them")
    source = chosen[0]
    if (variant in HEAD_SITES) != (head is not None):
        raise SiteError(f"{variant} {'needs' if variant in HEAD_SITES else 'takes no'} a head (patch_head)")
    block = source.layer + 1 if source.site == "resid_post" else source.layer
    return {Entry(variant, block, head): vectors.vector(source).detach()}


def check_patch_fits(patch: dict[Entry, torch.Tensor], model: Any) -> None:
    """Raise :class:`EvalError` unless every patched block and head exists in ``model``."""
    from rlsteer.architectures import architecture_of

    arch = architecture_of(model)
    for entry in patch:
        if entry.layer >= arch.n_layers:
            raise EvalError(f"target.patch: the vector feeds block {entry.layer}, which the model does not have "
                            f"({arch.n_layers} layers, 0..{arch.n_layers - 1}); patch a vector of an earlier "
                            "layer (--layer)")
        if entry.head is not None:
            kv = entry.site in KV_HEAD_SITES
            limit, kind = (arch.n_kv_heads, "KV heads") if kv else (arch.n_heads, "query heads")
            if entry.head >= limit:
                raise EvalError(f"target.patch_head={entry.head} is out of range for {entry.site}: the model has "
                                f"{limit} {kind}; pass --head 0..{limit - 1}")


# ------------------------------------------------------------------------------------------- sampling


def sample_seed(seed: int, benchmark: str, problem: int, sample: int) -> int:
    """A distinct, reproducible sampling seed per (evaluation seed, benchmark, problem, sample)."""
    bench = int.from_bytes(hashlib.sha256(benchmark.encode()).digest()[:3], "big")
    return (((seed * 16_777_259 + bench) * 100_003 + problem) * 1_031 + sample) % (2**63)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a samples file; a line cut short by an interruption is dropped from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the last write was interrupted: keep only whole records
        with path.open("r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def _append(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append whole lines and flush them to disk; SIGINT/SIGTERM wait for them (``kill -9`` can tear the last
    line, which :func:`read_samples` then drops)."""
    with writing(path), held(), path.open("a") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------- the run


def evaluate(cfg: EvalConfig, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Evaluate every target ``cfg`` names; returns their results (also written to each output directory).

    SIGINT/SIGTERM raise :class:`rlsteer.interrupt.Interrupted` once the samples being written are on disk;
    evaluating the same config again resumes.
    """
    try:
        with interruptible(), EvalSession(cfg, log=log) as session:
            return session.run(cfg)
    except Interrupted as stop:
        stop.detail = "the finished samples are saved"
        raise


class EvalSession:
    """One model, rollout engine and verifier pool shared by several evaluations.

    Analyses evaluate many variants (prefixes, patches, layers) of one model; a session loads the model and
    starts the engine once. Every config it runs must ask for the same model and engine.

    Example:
        >>> with EvalSession(cfg) as session:  # doctest: +SKIP
        ...     base = session.run(cfg)
        ...     prefixed = session.run(replace(cfg, target=replace(cfg.target, prefix="To")))
    """

    def __init__(self, cfg: EvalConfig, *, log: Callable[[str], None] = print) -> None:
        self.cfg = resolve_defaults(cfg, resolve_targets(cfg))
        self.log = log
        m = self.cfg.model
        self.model, self.tok = load_model(m.name or DEFAULT_MODEL, dtype=m.dtype, device=m.device,
                                          revision=m.revision, trust_remote_code=m.trust_remote_code)
        self.backend = make_eval_backend(self.cfg, self.model, self.tok)
        self.pool = RewardPool(cfg.engine.reward_workers, cfg.engine.reward_timeout_s, values="zero_one")

    def __enter__(self) -> EvalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.pool.close()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def run(self, cfg: EvalConfig) -> list[dict[str, Any]]:
        """Evaluate every target of ``cfg`` (same model and engine as the session's)."""
        targets = resolve_targets(cfg)
        cfg = resolve_defaults(cfg, targets)
        if cfg.model != self.cfg.model or cfg.engine != self.cfg.engine:
            raise EvalError(f"this session holds {self.cfg.model.name} on {self.cfg.engine.backend}; "
                            f"{cfg.model.name} on {cfg.engine.backend} needs its own")
        specs = benchmark_specs(cfg.protocol.benchmarks)
        benchmarks = {name: load_problems(spec, data_dir=cfg.protocol.data_dir, limit=cfg.protocol.limit)
                      for name, spec in specs.items()}
        template = cfg.target.template or "qwen-math"
        prompts = {b: [build_prompt(self.tok, p.problem, template, cfg.target.prefix) for p in ps]
                   for b, ps in benchmarks.items()}
        all_results = []
        for target in targets:
            vectors = SteeringVectors.load(target.vectors, self.model) if target.vectors is not None else None
            steering = steering_for(vectors, cfg)
            if isinstance(steering, dict):
                check_patch_fits(steering, self.model)  # before the output directory is made
            protocol = protocol_record(cfg, target, specs, benchmarks)
            prepare_out(target.out, protocol)
            self.log(f"evaluating {target.label} on {', '.join(benchmarks)} → {target.out}")
            t0 = time.perf_counter()
            for bench, problems in benchmarks.items():
                for seed in cfg.protocol.seeds:
                    run_benchmark(bench, seed, problems, prompts[bench], steering, self.backend, self.pool, cfg,
                                  target.out / "samples" / f"{bench}.seed{seed}.jsonl")
            results = summarize(target.out, cfg, benchmarks, protocol, seconds=time.perf_counter() - t0)
            write_results(target.out, results)
            self.log(f"{markdown_table(results)}\n\n{csv_table(results)}(in {target.out}/results.{{json,md,csv}}; "
                     f"{results['seconds']:.0f} s)")
            all_results.append(results)
        return all_results


def make_eval_backend(cfg: EvalConfig, model: Any, tok: Any) -> Any:
    if cfg.engine.backend == "vllm":
        from rlsteer.models import model_folder
        from rlsteer.rollout.vllm import VLLMBackend

        e = cfg.engine
        return VLLMBackend(model_folder(cfg.model.name or DEFAULT_MODEL), tok, dtype=cfg.model.dtype,
                           seed=cfg.protocol.seeds[0], max_model_len=cfg.protocol.max_total_tokens,
                           tensor_parallel_size=e.vllm_tensor_parallel_size,
                           gpu_memory_utilization=e.vllm_gpu_memory_utilization, enforce_eager=e.vllm_enforce_eager,
                           revision=cfg.model.revision, progress=False)
    return HFBackend(model, tok, batch_size=cfg.engine.batch_size, progress=False)


def run_benchmark(bench: str, seed: int, problems: Sequence[Problem], prompts: Sequence[Prompt], steering: Any,
                  backend: Any, pool: RewardPool, cfg: EvalConfig, path: Path) -> None:
    """Sample, score and append every missing (problem, sample) of one benchmark and seed to ``path``.

    Scoring a chunk overlaps generating the next one (the verifier runs in worker processes).
    """
    p = cfg.protocol
    n = p.samples(bench)
    done = {(r["problem_index"], r["sample"]) for r in read_samples(path)}
    todo = [(i, k) for i in range(len(problems)) for k in range(n) if (i, k) not in done]
    if not todo:
        return
    sampling = SamplingParams(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
                              max_new_tokens=p.max_new_tokens, max_total_tokens=p.max_total_tokens, logprobs=True)
    chunk = cfg.engine.chunk or (512 if cfg.engine.backend == "vllm" else cfg.engine.batch_size)
    bar = tqdm(total=len(problems) * n, initial=len(done), desc=f"{bench} seed {seed}", unit="sample",
               dynamic_ncols=True)
    pending: Future[list[dict[str, Any]]] | None = None
    with bar, ThreadPoolExecutor(max_workers=1) as scorer:
        try:
            for start in range(0, len(todo), chunk):
                keys = todo[start:start + chunk]
                requests = [Request(prompts[i].ids, prompts[i].stop_ids, seed=sample_seed(seed, bench, i, k))
                            for i, k in keys]
                rollouts = backend.generate(requests, steering, sampling)
                if pending is not None:
                    _append(path, pending.result())
                pending = scorer.submit(_score, keys, rollouts, problems, prompts, pool, cfg, bench, seed)
                bar.update(len(keys))
        finally:  # scored samples are kept even when generation is interrupted
            if pending is not None:
                _append(path, pending.result())


def _score(keys: Sequence[tuple[int, int]], rollouts: Sequence[Rollout], problems: Sequence[Problem],
           prompts: Sequence[Prompt], pool: RewardPool, cfg: EvalConfig, bench: str, seed: int) -> list[dict[str, Any]]:
    template = cfg.target.template or "qwen-math"
    batch: RewardBatch = pool.score([r.text for r in rollouts], [problems[i].answer for i, _ in keys], template,
                                    cfg.protocol.extraction)
    return [{"benchmark": bench, "seed": seed, "problem_index": i, "problem_id": problems[i].id, "sample": k,
             "sample_seed": r.request.seed, "prompt": prompts[i].text, "completion": r.text,
             "answer": extract_answer(r.text, template), "gold": problems[i].answer, "reward": reward,
             "status": status, "finish_reason": r.finish_reason, "length": r.num_tokens,
             "logprob": float(sum(r.logprobs)) if r.logprobs is not None else None}
            for (i, k), r, reward, status in zip(keys, rollouts, batch.rewards, batch.statuses, strict=True)]


# ------------------------------------------------------------------------------------------- provenance


def benchmark_specs(benchmarks: Sequence[str]) -> dict[str, str]:
    """Short name → dataset spec: registry names stay, files go by their stem, ``NAME=SPEC`` is named NAME,
    other specs are sanitised.

    Example:
        >>> benchmark_specs(["gsm8k", "sums=synthetic-arithmetic:n=8"])
        {'gsm8k': 'gsm8k', 'sums': 'synthetic-arithmetic:n=8'}
    """
    names: dict[str, str] = {}
    for spec in benchmarks:
        named = re.fullmatch(r"([A-Za-z0-9_.-]+)=(.+)", spec)
        if named and not Path(spec).expanduser().exists():
            name, spec = named.groups()
        elif spec in REGISTRY:
            name = spec
        elif Path(spec).expanduser().exists():
            name = Path(spec).stem
        else:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_")
        if name in names:
            raise EvalError(f"benchmarks {names[name]!r} and {spec!r} share the name {name!r}; rename a file")
        names[name] = spec
    return names


def protocol_record(cfg: EvalConfig, target: Target, specs: dict[str, str],
                    benchmarks: dict[str, list[Problem]]) -> dict[str, Any]:
    """Everything that determines the samples (compared on resume) plus versions, for the record."""
    data = {}
    for bench, name in specs.items():
        spec = REGISTRY.get(name)
        root = cfg.protocol.data_dir or os.environ.get("RLSTEER_DATA_DIR")
        file = Path(root) / spec.file if spec is not None and root is not None else Path(name).expanduser()
        if file.is_file():
            data[bench] = {"file": str(file.resolve()), "sha256": _sha256(file), "problems": len(benchmarks[bench])}
        elif spec is not None:
            data[bench] = {"hub": spec.hf_id, "split": spec.split, "problems": len(benchmarks[bench])}
        else:
            data[bench] = {"source": name, "problems": len(benchmarks[bench])}
    settings = to_dict(cfg)
    settings.pop("engine")  # how samples are produced does not change what they are
    return {
        "target": target.label,
        "vectors": str(target.vectors) if target.vectors else None,
        "vectors_sha256": _sha256(target.vectors) if target.vectors else None,
        "config": settings,
        "samples_per_problem": {b: cfg.protocol.samples(b) for b in benchmarks},
        "data": data,
        "backend": cfg.engine.backend,
        "versions": {name: _version(name) for name in ("rlsteer", "math-verify", "torch", "transformers")},
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def prepare_out(out: Path, protocol: dict[str, Any]) -> None:
    """Create ``out`` with its protocol.json, or check that an existing one (a resume) matches."""
    path = out / "protocol.json"
    key = {k: protocol[k] for k in ("vectors_sha256", "config", "samples_per_problem")}
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in key} != key:
            raise EvalError(f"{out} holds an evaluation with another protocol or vector; pass another out= or "
                            "delete it")
    with writing(out):
        (out / "samples").mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)  # of writes a kill -9 cut short
    write_atomically(path, json.dumps(protocol, indent=1))


# ------------------------------------------------------------------------------------------- results


def default_ks(n: int) -> tuple[int, ...]:
    """1, 2, 4, … up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return tuple(sorted({*ks, n}))


def summarize(out: Path, cfg: EvalConfig, benchmarks: dict[str, list[Problem]], protocol: dict[str, Any], *,
              seconds: float | None = None) -> dict[str, Any]:
    """results.json's content from the samples files: per seed scores, mean ± std over seeds, the headline."""
    per_bench: dict[str, Any] = {}
    per_seed_avg: dict[int, dict[str, float]] = {}
    for bench, problems in benchmarks.items():
        n = cfg.protocol.samples(bench)
        ks = tuple(k for k in cfg.protocol.pass_k if k <= n) or default_ks(n)
        seeds = {}
        for seed in cfg.protocol.seeds:
            records = read_samples(out / "samples" / f"{bench}.seed{seed}.jsonl")
            correct = [[0.0] * n for _ in problems]
            seen = 0
            for r in records:
                correct[r["problem_index"]][r["sample"]] = float(r["reward"])
                seen += 1
            if seen != len(problems) * n:
                raise EvalError(f"{bench} seed {seed}: {seen} of {len(problems) * n} samples present; run the "
                                "evaluation again to finish it")
            seeds[seed] = scores(correct, ks)
            per_seed_avg.setdefault(seed, {})[bench] = seeds[seed]["avg"]
        metrics = [m for m in next(iter(seeds.values())) if m not in ("n", "problems")]
        per_bench[bench] = {"n": n, "problems": len(problems), "seeds": {str(s): v for s, v in seeds.items()},
                            **{m: dict(zip(("mean", "std"), mean_std([v[m] for v in seeds.values()]), strict=True))
                               for m in metrics}}
    results: dict[str, Any] = {"target": protocol["target"], "benchmarks": per_bench, "protocol": protocol}
    if all(b in benchmarks for b in PAPER_BENCHMARKS):
        mean, std, by_seed = headline(per_seed_avg)
        results["headline"] = {"mean": mean, "std": std, "seeds": {str(s): v for s, v in by_seed.items()},
                               "benchmarks": list(PAPER_BENCHMARKS), "metric": "avg@n"}
    if seconds is not None:
        results["seconds"] = seconds
    return results


def write_results(out: Path, results: dict[str, Any]) -> None:
    """results.json, .md and .csv, each atomically; a signal waits for all three."""
    with held():
        write_atomically(out / "results.json", json.dumps(results, indent=1))
        write_atomically(out / "results.md", markdown_table(results) + "\n")
        write_atomically(out / "results.csv", csv_table(results))


def _rows(results: dict[str, Any]) -> Iterator[tuple[str, int, int, str, float, float]]:
    for bench, r in results["benchmarks"].items():
        for metric in ("first", "avg", *[m for m in r if m.startswith("pass@")]):
            yield bench, r["n"], r["problems"], metric, r[metric]["mean"], r[metric]["std"]


def _cell(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per benchmark: first-sample accuracy, avg@n and pass@k (×100, mean ± std over seeds)."""
    benches = results["benchmarks"]
    ks = sorted({m for r in benches.values() for m in r if m.startswith("pass@")}, key=lambda m: int(m[5:]))
    lines = [f"{results['target']} — {len(next(iter(benches.values()))['seeds'])} seed(s), ×100, mean ± std",
             "", "| benchmark | problems | n | first | avg@n | " + " | ".join(ks) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(ks)]
    for bench, r in benches.items():
        cells = [_cell(**r[m]) if m in r else "" for m in ks]
        lines.append(f"| {bench} | {r['problems']} | {r['n']} | {_cell(**r['first'])} | {_cell(**r['avg'])} | "
                     + " | ".join(cells) + " |")
    if "headline" in results:
        h = results["headline"]
        lines += ["", f"Average over the six benchmarks (avg@n): {_cell(h['mean'], h['std'])}"]
    return "\n".join(lines)


def csv_table(results: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["target", "benchmark", "n", "problems", "metric", "mean", "std"])
    for row in _rows(results):
        writer.writerow([results["target"], *row])
    if "headline" in results:
        writer.writerow([results["target"], "average", "", "", "avg", results["headline"]["mean"],
                         results["headline"]["std"]])
    return buf.getvalue()


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """results.json from an evaluation directory (or the file itself)."""
    p = Path(path)
    file = p / "results.json" if p.is_dir() else p
    if not file.is_file():
        raise EvalError(f"{path} has no results.json; evaluate it first (rlsteer eval …)")
    return json.loads(file.read_text())


def compare_table(results: Sequence[dict[str, Any]], metric: str = "avg") -> tuple[str, str]:
    """Markdown and CSV with one row per result and one column per benchmark (``metric``, ×100), plus the
    six-benchmark average where every result has it."""
    benches: list[str] = []
    for r in results:
        benches += [b for b in r["benchmarks"] if b not in benches]
    with_headline = all("headline" in r for r in results)
    head = ["target", *benches, *(["average"] if with_headline else [])]
    md = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([h + ("" if h == "target" else "_mean") for h in head] + [f"{h}_std" for h in head[1:]])
    for r in results:
        cells, means, stds = [], [], []
        for b in benches:
            m = r["benchmarks"].get(b, {}).get(metric)
            cells.append(_cell(**m) if m else "—")
            means.append(m["mean"] if m else "")
            stds.append(m["std"] if m else "")
        if with_headline:
            cells.append(_cell(r["headline"]["mean"], r["headline"]["std"]))
            means.append(r["headline"]["mean"])
            stds.append(r["headline"]["std"])
        md.append(f"| {r['target']} | " + " | ".join(cells) + " |")
        writer.writerow([r["target"], *means, *stds])
    return "\n".join(md), buf.getvalue()


__all__ = ["EvalConfig", "EvalError", "EvalSession", "Target", "compare_table", "evaluate", "load_results",
           "markdown_table", "resolve_targets", "sample_seed", "summarize"]
