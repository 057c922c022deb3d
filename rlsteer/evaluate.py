"""``evaluate(cfg)``: the paper's evaluation protocol for base, steered, prefixed and circuit-patched models.

An evaluation directory holds

* ``protocol.json``: the resolved config plus what reproduces it: model and revision, template, prefix,
  sampling settings, n per benchmark, seeds, each data file with its sha256, the verifier and rlsteer
  versions, the vector file's sha256, and the reward functions from user code when they score
  (``reward.function``; each spec, weight and, for a file, its sha256);
* ``samples/<benchmark>.seed<k>.jsonl``: one line per sample (problem id, prompt, completion, extracted
  answer, reward, finish reason, length, sum of log-probs, seed), appended chunk by chunk as it goes, so an
  interrupted evaluation resumes where it stopped (:mod:`rlsteer.samples`);
* ``results.json``, ``results.md``, ``results.csv`` (:mod:`rlsteer.results`).

What is evaluated comes from :mod:`rlsteer.targets`; this module draws and scores the samples. Every sample
has its own seed derived from (evaluation seed, benchmark, problem, sample), so a resumed run draws exactly
the samples an uninterrupted one would, whatever the batching.

Example:
    >>> from rlsteer.config import EvalConfig, load_config
    >>> cfg = load_config(EvalConfig, "eval/gsm8k", ["target.vectors=runs/demo/train", "protocol.limit=50"])
    >>> results = evaluate(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rlsteer.config import EvalConfig, to_dict
from rlsteer.configload import check_ranges, describe_differences, differences
from rlsteer.data import REGISTRY, Problem, data_origin, load_problems
from rlsteer.errors import RlsteerError, decode_utf8, first_line, writing
from rlsteer.interrupt import Interrupted, interruptible
from rlsteer.io import remove_leftovers, write_atomically
from rlsteer.lock import owning
from rlsteer.models import load_model, model_shape
from rlsteer.results import csv_table, markdown_table, summarize, write_results
from rlsteer.rewards import RewardBatch, RewardPool, extract_answer
from rlsteer.rollout import Backend, Request, Rollout
from rlsteer.rollout.factory import make_backend
from rlsteer.rundir import RunDir
from rlsteer.samples import SAMPLES, append_samples, read_samples, sample_seed, samples_file
from rlsteer.scorers import FunctionScorer, golds
from rlsteer.selection import Rule, select_run
from rlsteer.steering.patching import PatchError, check_patch_fits
from rlsteer.steering.vectors import SteeringVectors, VectorFile, check_entries_fit, open_vector_file
from rlsteer.targets import Target, TargetError, resolve_defaults, resolve_targets, steering_for
from rlsteer.templates import Prompt, build_prompt, check_template


class EvalError(RlsteerError):
    pass


def evaluate(cfg: EvalConfig, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Evaluate every target ``cfg`` names; returns their results (also written to each output directory).

    SIGINT/SIGTERM raise :class:`rlsteer.interrupt.Interrupted` once the samples being written are on disk;
    evaluating the same config again resumes. Everything that needs no model weights (targets, vector files,
    datasets, the vectors and patches against the model's config) is checked before the model loads.
    """
    check_ranges(cfg)
    rule = _selection_rule(cfg)
    preflight(cfg)
    try:
        with interruptible(), EvalSession(cfg, log=log) as session:
            results = session.run(cfg)
    except Interrupted as stop:
        stop.detail = "the finished samples are saved"
        raise
    if rule is not None:
        run = RunDir(Path(cfg.target.vectors or ""))
        chosen = select_run(run, _checked_targets(cfg)[0].out.parent, rule)
        scores = ", ".join(f"{s}: {v:.4f}" for s, v in chosen.scores.items())
        log(f"selected step {chosen.step}: {rule.describe()} {chosen.score:.4f} (steps {scores}) → {run.selection}")
    return results


def _selection_rule(cfg: EvalConfig) -> Rule | None:
    if cfg.select is None:
        return None
    if cfg.target.step != "all" or cfg.target.vectors is None or not RunDir(Path(cfg.target.vectors)).is_run():
        raise EvalError("select= (--select) chooses among a run's checkpoints: evaluate a run directory with "
                        "--step all")
    return Rule.parse(cfg.select)


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
        self.cfg = resolve_defaults(cfg, _checked_targets(cfg))
        self.log = log
        m = self.cfg.model
        assert m.name is not None  # filled by resolve_defaults
        self.model, self.tok = load_model(m.name, dtype=m.dtype, device=m.device, revision=m.revision,
                                          trust_remote_code=m.trust_remote_code)
        self.backend: Backend = make_backend(m, self.cfg.engine, self.model, self.tok, seed=self.cfg.protocol.seeds[0],
                                             max_model_len=self.cfg.protocol.max_total_tokens, progress=False)
        self.pool = RewardPool(cfg.reward.worker_count(functions=False), cfg.reward.timeout_s, values="zero_one")
        # reward functions from user code score instead of Math-Verify, as in training (one scorer for both)
        self.scorer = FunctionScorer(cfg.reward, self.tok) if cfg.reward.entries() else None
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")  # model.dtype "auto" resolved
        if self.scorer is None and cfg.reward.worker_count(functions=False) == 0:
            log(f"note: reward.workers=0 verifies answers in this process without the {cfg.reward.timeout_s:g} s "
                "deadline of reward.timeout_s (a verification that hangs stops the evaluation)")

    def __enter__(self) -> EvalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.pool.close()
        if self.scorer is not None:
            self.scorer.close()
        self.backend.close()

    def run(self, cfg: EvalConfig) -> list[dict[str, Any]]:
        """Evaluate every target of ``cfg`` (same model and engine as the session's)."""
        targets = _checked_targets(cfg)
        files = {t.vectors: open_vector_file(t.vectors) for t in targets if t.vectors is not None}  # read once
        first = files.get(targets[0].vectors) if targets and targets[0].vectors is not None else None
        cfg = resolve_defaults(cfg, targets, first.header if first is not None else None)
        if cfg.model != self.cfg.model or cfg.engine != self.cfg.engine:
            raise EvalError(f"this session holds {self.cfg.model.name} on {self.cfg.engine.backend}; "
                            f"{cfg.model.name} on {cfg.engine.backend} needs its own")
        if cfg.reward.entries() != self.cfg.reward.entries():
            raise EvalError("this session scores with other reward functions; evaluate these in a session of their own")
        proto = cfg.protocol
        if self.scorer is None and proto.answer_field is None:
            raise EvalError("protocol.answer_field is null, but Math-Verify needs gold answers; name the answer "
                            "column, or score with a reward function (--reward package.module:fn)")
        specs = benchmark_specs(proto.benchmarks)
        benchmarks = load_benchmarks(cfg, specs)
        template = cfg.target.template
        assert template is not None  # filled by resolve_defaults
        prompts = {b: [build_prompt(self.tok, p.problem, template, cfg.target.prefix) for p in ps]
                   for b, ps in benchmarks.items()}
        all_results = []
        for target in targets:
            file = files.get(target.vectors) if target.vectors is not None else None
            steering = self._steering(file, cfg)  # checked before the output directory is made
            protocol = protocol_record(cfg, target, file, specs, benchmarks, self.scorer, dtype=self.dtype)
            with owning(target.out, "evaluation", log=self.log):  # one process per output directory
                prepare_out(target.out, protocol)
                self.log(f"evaluating {target.label} on {', '.join(benchmarks)} → {target.out}")
                t0 = time.perf_counter()
                for bench, problems in benchmarks.items():
                    for seed in cfg.protocol.seeds:
                        run_benchmark(bench, seed, problems, prompts[bench], steering, self.backend,
                                      self.scorer or self.pool, cfg, samples_file(target.out, bench, seed),
                                      log=self.log)
                results = summarize(target.out, cfg, benchmarks, protocol, seconds=time.perf_counter() - t0)
                write_results(target.out, results)
            self.log(f"{markdown_table(results)}\n\n{csv_table(results)}(in {target.out}/results.{{json,md,csv}}; "
                     f"{results['seconds']:.0f} s)")
            all_results.append(results)
        return all_results

    def _steering(self, file: VectorFile | None, cfg: EvalConfig) -> Any:
        """What the backend applies for one target (vectors, a circuit patch or None), checked against the model."""
        return _steering_of(SteeringVectors.load(file, self.model) if file is not None else None, cfg, self.model)


def _checked_targets(cfg: EvalConfig) -> list[Target]:
    try:
        return resolve_targets(cfg)
    except TargetError as err:
        raise EvalError(str(err)) from None


def load_benchmarks(cfg: EvalConfig, specs: dict[str, str]) -> dict[str, list[Problem]]:
    """Every benchmark's problems as the protocol reads them (data folder, limit, problem and answer columns)."""
    p = cfg.protocol
    return {name: load_problems(spec, data_dir=p.data_dir, limit=p.limit, problem_field=p.problem_field,
                                answer_field=p.answer_field) for name, spec in specs.items()}


def preflight(cfg: EvalConfig) -> None:
    """Raise the error the evaluation of ``cfg`` would meet, as far as it shows without the model's weights:
    targets, vector files, the template, datasets and limits, and the vectors and patches against the
    model's config. Writes nothing."""
    targets = _checked_targets(cfg)
    files = {t.vectors: open_vector_file(t.vectors) for t in targets if t.vectors is not None}
    first = files.get(targets[0].vectors) if targets and targets[0].vectors is not None else None
    cfg = resolve_defaults(cfg, targets, first.header if first is not None else None)
    check_template(str(cfg.target.template), "target.template")
    load_benchmarks(cfg, benchmark_specs(cfg.protocol.benchmarks))
    m = cfg.model
    assert m.name is not None  # filled by resolve_defaults
    shape = model_shape(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    for target in targets:
        vectors = SteeringVectors.load(files[target.vectors]) if target.vectors is not None else None
        if vectors is not None and shape is not None:
            check_entries_fit(shape, vectors.d_model, vectors.entries, vectors.metadata)
        _steering_of(vectors, cfg, shape)


def _steering_of(vectors: SteeringVectors | None, cfg: EvalConfig, arch: Any) -> Any:
    """What the backend applies for one target (vectors, a circuit patch or None), checked against ``arch`` (a
    model, its shape, or None to check only what needs neither)."""
    try:
        steering = steering_for(vectors, cfg)
        if isinstance(steering, dict) and arch is not None:
            check_patch_fits(steering, arch)
    except (TargetError, PatchError) as err:
        raise EvalError(str(err) if isinstance(err, TargetError) else f"target.{err}") from None
    return steering


def run_benchmark(bench: str, seed: int, problems: Sequence[Problem], prompts: Sequence[Prompt], steering: Any,
                  backend: Backend, pool: RewardPool | FunctionScorer, cfg: EvalConfig, path: Path, *,
                  log: Callable[[str], None] = print) -> None:
    """Sample, score and append every missing (problem, sample) of one benchmark and seed to ``path``.

    Scoring a chunk overlaps generating the next one (the verifier runs in worker processes). A damaged line
    of ``path`` is dropped and its sample drawn again. A prompt that leaves no room for an answer under
    ``protocol.max_total_tokens`` is never run: its samples are recorded as wrong, with status
    ``prompt_too_long`` (counted in the results), and a warning says how many.
    """
    p = cfg.protocol
    n = p.samples(bench)
    done = {(r["problem_index"], r["sample"]) for r in read_samples(path, repair=True, warn=log)}
    todo = [(i, k) for i in range(len(problems)) for k in range(n) if (i, k) not in done]
    if not todo:
        return
    sampling = p.sampling(logprobs=True)
    too_long = [(i, k) for i, k in todo if sampling.budget(len(prompts[i].ids)) == 0]
    if too_long:
        longest = max(len(prompts[i].ids) for i, _ in too_long)
        log(f"warning: {bench} seed {seed}: {len({i for i, _ in too_long})} prompt(s) are as long as "
            f"protocol.max_total_tokens={p.max_total_tokens} or longer (the longest has {longest} tokens); they "
            "are not run and count as wrong (prompt_too_long in the samples and results)")
        append_samples(path, [_record(i, k, problems, prompts, bench, seed, sample_seed(seed, bench, i, k), "", None,
                                      0.0, "prompt_too_long", "length", 0, None) for i, k in too_long])
        todo = [key for key in todo if key not in set(too_long)]
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
                    append_samples(path, pending.result())
                pending = scorer.submit(_score, keys, rollouts, problems, prompts, pool, cfg, bench, seed)
                bar.update(len(keys))
        finally:  # scored samples are kept even when generation is interrupted
            if pending is not None:
                append_samples(path, pending.result())


def _score(keys: Sequence[tuple[int, int]], rollouts: Sequence[Rollout], problems: Sequence[Problem],
           prompts: Sequence[Prompt], pool: RewardPool | FunctionScorer, cfg: EvalConfig, bench: str,
           seed: int) -> list[dict[str, Any]]:
    """The samples' records. With reward functions, ``reward`` is 1 for a success (total above
    ``reward.success_above``) and 0 otherwise, ``score`` the total the training scorer gives, ``rewards``
    each function's own."""
    template, extraction = cfg.target.template, cfg.protocol.extraction
    assert template is not None  # filled by resolve_defaults
    batch: RewardBatch
    if isinstance(pool, FunctionScorer):
        batch = pool.score(rollouts, [problems[i] for i, _ in keys])
        extra = [{"score": total, "rewards": {name: v[j] for name, v in batch.components.items()}}
                 for j, total in enumerate(batch.rewards)]
        rewards = [float(s == "correct") for s in batch.statuses]
        answers: list[str | None] = [None] * len(keys)
    else:
        batch = pool.score([r.text for r in rollouts], golds([problems[i] for i, _ in keys]), template, extraction,
                           normalize_scientific=cfg.protocol.normalize_scientific)
        extra, rewards = [{} for _ in keys], list(batch.rewards)
        answers = [extract_answer(r.text, template, extraction) for r in rollouts]
    return [_record(i, k, problems, prompts, bench, seed, r.request.seed, r.text, answer, reward, status,
                    r.finish_reason, r.num_tokens, float(sum(r.logprobs)) if r.logprobs is not None else None, more)
            for (i, k), r, answer, reward, more, status in zip(keys, rollouts, answers, rewards, extra, batch.statuses,
                                                               strict=True)]


def _record(i: int, k: int, problems: Sequence[Problem], prompts: Sequence[Prompt], bench: str, seed: int,
            sample_seed: int, completion: str, answer: str | None, reward: float, status: str, finish_reason: str,
            length: int, logprob: float | None, more: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of a samples file (``more``: a reward function's total score and each function's reward)."""
    return {"benchmark": bench, "seed": seed, "problem_index": i, "problem_id": problems[i].id, "sample": k,
            "sample_seed": sample_seed, "prompt": prompts[i].text, "completion": completion, "answer": answer,
            "gold": problems[i].answer, "reward": reward, **(more or {}), "status": status,
            "finish_reason": finish_reason, "length": length, "logprob": logprob}


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


def protocol_record(cfg: EvalConfig, target: Target, file: VectorFile | None, specs: dict[str, str],
                    benchmarks: dict[str, list[Problem]], scorer: FunctionScorer | None = None, *,
                    dtype: str = "float32") -> dict[str, Any]:
    """Everything that determines the samples (compared on resume) plus versions, for the record; ``dtype``
    is the dtype the model runs in."""
    data = {bench: {**data_origin(name, cfg.protocol.data_dir), "problems": len(benchmarks[bench])}
            for bench, name in specs.items()}
    settings = to_dict(cfg)
    for how in ("engine", "select"):  # how samples are produced or used does not change what they are
        settings.pop(how)
    reward = settings.pop("reward")
    if scorer is not None:  # what scores them does: the functions, their weights and the success threshold
        settings["reward"] = {k: reward[k] for k in ("function", "functions", "success_above")}
    return {
        "target": target.label,
        "vectors": str(target.vectors) if target.vectors else None,
        "vectors_sha256": file.sha256 if file is not None else None,
        "vectors_tensors_sha256": file.tensors_sha256 if file is not None else None,
        "config": settings,
        "dtype": dtype,
        "samples_per_problem": {b: cfg.protocol.samples(b) for b in benchmarks},
        "data": data,
        **({"reward": scorer.record()} if scorer is not None else {}),
        "backend": cfg.engine.backend,
        "versions": {name: _version(name) for name in ("rlsteer", "math-verify", "torch", "transformers")},
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def identity(protocol: dict[str, Any], *, by_file: bool = False) -> dict[str, Any]:
    """What makes two evaluations the same (compared on resume): the sampling and scoring settings, the
    problems (each dataset's content hash, not its path), the samples per problem and the vectors' tensors
    (their hash, not the file's path or bytes). Paths are left out, so an evaluation folder, its run and its
    data may move. ``by_file`` compares the vector file's bytes instead, for records older than the
    tensors' hash."""
    config = json.loads(json.dumps(protocol.get("config") or {}))
    config.pop("out", None)
    for section, keys in (("target", ("vectors", "step")), ("protocol", ("data_dir", "benchmarks"))):
        for key in keys:
            (config.get(section) or {}).pop(key, None)
    data = {bench: {k: v for k, v in origin.items() if k != "file"} if isinstance(origin, dict) else origin
            for bench, origin in (protocol.get("data") or {}).items()}
    vectors = protocol.get("vectors_sha256" if by_file else "vectors_tensors_sha256")
    return {"config": config, "data": data, "samples_per_problem": protocol.get("samples_per_problem"),
            "vectors": vectors, "dtype": protocol.get("dtype", "float32")}  # records without one ran in float32


def prepare_out(out: Path, protocol: dict[str, Any]) -> None:
    """Create ``out`` with its protocol.json, or check that an existing one (a resume) matches; a folder that
    holds no samples yet (a start that failed) simply starts again."""
    path = out / "protocol.json"
    if path.is_file() and any(f.stat().st_size for f in (out / SAMPLES).glob("*.jsonl")):
        try:
            old = json.loads(decode_utf8(path.read_bytes(), path))
            if not isinstance(old, dict):
                raise ValueError(f"a JSON {type(old).__name__}, not a record")
        except (RlsteerError, ValueError) as err:
            raise EvalError(f"{path} is damaged ({first_line(err)}), so the samples in {out} cannot be matched "
                            "to a protocol; delete the folder (or pass another out=) to evaluate again") from None
        by_file = not old.get("vectors_tensors_sha256") and bool(old.get("vectors_sha256"))
        diff = differences(identity(old, by_file=by_file), identity(protocol, by_file=by_file))
        if diff:
            raise EvalError(f"{out} holds an evaluation with another protocol or vector ({describe_differences(diff)}"
                            "); pass another out= or delete it")
    with writing(out):
        (out / SAMPLES).mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)  # of writes a kill -9 cut short
    write_atomically(path, json.dumps(protocol, indent=1))


__all__ = ["EvalConfig", "EvalError", "EvalSession", "evaluate"]
