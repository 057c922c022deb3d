"""``rlsteer demo``: the newcomer's first run, offline on a CPU with the built-in SmolLM2 model.

In about ten minutes on two cores it goes through the paper end to end on a task small enough to learn:

1. loads the model (the first run converts the GGUF file once and caches it) and checks on it that
   ``resid_post`` steering equals a ``down_proj`` bias;
2. trains a last-layer and an all-layer steering vector with RLOO on one-digit additions
   (the ``demo-cpu`` preset; ``runs/demo/last-layer`` and ``runs/demo/all-layers``);
3. evaluates, greedily on held-out additions (the 52 one-digit additions of the held-out half: training
   draws only from the other half, so no evaluated addition, in either operand order, was seen in training),
   the base model, the base model with the "To" prefix and both steered models (``runs/demo/eval``,
   ``runs/demo/<run>/eval``);
4. runs the logit lens and the token-level Δp on both vectors and persistence on the all-layer vector at a
   few injection layers (``runs/demo/<run>/analysis``);
5. writes ``runs/demo/report.html`` and prints the headline numbers.

Every stage reuses finished work: a second run skips trained vectors, finished evaluations and analyses, and
an interrupted one resumes where it stopped. The stages share one loaded model, and the time of each is
printed and kept in ``headline.json``.

Example:
    >>> headline = run_demo(DemoConfig(model="tiny-random-qwen3", out_dir="/tmp/demo", steps=2))  # doctest: +SKIP
    >>> headline["accuracy"]["all-layers"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.analysis.lens import run_lens
from rlsteer.analysis.output import analysis_dir
from rlsteer.analysis.persistence import PersistenceConfig, run_persistence
from rlsteer.analysis.sweep import is_finished
from rlsteer.analysis.token_shift import ShiftConfig, run_token_shift
from rlsteer.architectures import architecture_of
from rlsteer.config import (
    EngineSection,
    EvalConfig,
    EvalModelSection,
    ProtocolSection,
    RewardFunctionsSection,
    TargetSection,
    TrainConfig,
    load_config,
)
from rlsteer.errors import RlsteerError
from rlsteer.evaluate import EvalSession
from rlsteer.io import write_atomically
from rlsteer.models import DEFAULT_MODEL, load_model, shared_models
from rlsteer.report import build_report
from rlsteer.rundir import RunDir
from rlsteer.steering.hooks import steer
from rlsteer.train import train

#: the held-out problems: distinct one-digit additions from the held-out half (the ``demo-cpu`` preset trains on
#: ``split=train`` of the same space, so no evaluated addition was seen in training, in either operand order)
HELD_OUT = "synthetic-arithmetic:seed=991,n={n},digits=1,style=expression,split=test,holdout=0.5,distinct=1"
#: how the headline names the evaluation set
HELD_OUT_WORDS = "one-digit additions none of which (in either order) was a training problem"


@dataclass(frozen=True)
class DemoConfig:
    """Options of :func:`run_demo`.

    Attributes:
        model: model spec (alias, hub id, folder or .gguf).
        out_dir: the demo's folder (runs, evaluations, analyses, report).
        steps: RLOO steps of each vector (the ``demo-cpu`` preset: 12, ~4 minutes for the all-layer one).
        last_layer_lr: Adam lr of the last-layer vector. The residual stream there is several times larger
            than in the middle of the network, so, as in the paper (last layer 0.1 vs 1e-2 at layer 15),
            it needs a much larger lr than the all-layer vector's 0.04.
        eval_problems: held-out additions answered greedily by each model (at most 52: every one-digit
            addition of the held-out half).
        analysis_prompts: prompts of the Δp analysis (completions that never stop are left out).
        persistence_prompts: prompts of the persistence analysis.
        persistence_layers: injection layers of the persistence analysis (default: four spread over depth).
        max_new_tokens: completion budget of the analyses (Δp needs completions that stop).
        train_overrides: extra ``KEY=VALUE`` overrides of both training runs (e.g. ``rl.prompts_per_step=4``).
    """

    model: str = DEFAULT_MODEL
    out_dir: str = "runs/demo"
    steps: int = 12
    last_layer_lr: float = 1.0
    eval_problems: int = 52
    analysis_prompts: int = 24
    persistence_prompts: int = 6
    persistence_layers: tuple[int, ...] | None = None
    max_new_tokens: int = 128
    train_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("steps", "eval_problems", "analysis_prompts", "persistence_prompts", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise RlsteerError(f"demo: {name}={getattr(self, name)} must be at least 1")


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo, printing as it goes; returns the headline numbers (also in ``<out>/headline.json``)."""
    with shared_models():  # every stage uses the model loaded in stage 1
        return _run_demo(cfg, log)


def _run_demo(cfg: DemoConfig, log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    clock = Stopwatch()
    out = Path(cfg.out_dir)
    first_time = " (the first run converts the GGUF file once, ~30 s)" if cfg.model == DEFAULT_MODEL else ""
    log(f"[1/5] loading {cfg.model}{first_time}")
    model, tok = load_model(cfg.model)
    arch = architecture_of(model)
    last = arch.n_layers - 1
    log(f"      {arch.family.name}: {arch.n_layers} layers, d_model={arch.d_model}, {arch.n_heads} query heads, "
        f"{arch.n_kv_heads} KV heads")
    gap = bias_identity_gap(model, tok, last)
    log(f"      identity check: resid_post steering at layer {last} vs a down_proj bias, max |Δlogit| = {gap:.2e}")
    clock.lap("load and identity check")

    runs = training_configs(cfg, last)
    for k, (name, train_cfg) in enumerate(runs.items(), start=1):
        head = f"[2/5] RLOO ({k}/{len(runs)}): the {name} vector, {train_cfg.rl.steps} steps × " \
               f"{train_cfg.rl.prompts_per_step} one-digit additions × {train_cfg.rl.samples_per_prompt} samples, " \
               f"lr {train_cfg.optim.lr:g} → {train_cfg.run.path}"
        if is_finished(train_cfg):
            log(f"{head}: already trained")
            continue
        log(head)
        train(train_cfg, resume=RunDir(train_cfg.run.path).is_run(), log=lambda line: log("      " + line))
        clock.lap(f"train {name}")

    vectors = {name: RunDir(c.run.path).vectors for name, c in runs.items()}
    log(f"[3/5] {cfg.eval_problems} held-out {HELD_OUT_WORDS}, greedy: base, base + 'To', and each steered model")
    accuracy = evaluate_all(cfg, runs, out, log=lambda line: log("      " + line))
    clock.lap("evaluate")

    log("[4/5] analyses: logit lens and Δp of both vectors, persistence of the all-layer vector")
    def tab(line: str) -> None:
        log("      " + line)

    for path in vectors.values():
        once(path, "lens", "stats.json", lambda p: run_lens(p, model_spec=cfg.model, k=10, log=tab), tab)
        clock.lap("logit lens")
        once(path, "token-shift", "summary.json", lambda p: run_token_shift(
            p, dataset=HELD_OUT.format(n=cfg.analysis_prompts), prompts=cfg.analysis_prompts, model_spec=cfg.model,
            cfg=ShiftConfig(max_new_tokens=cfg.max_new_tokens), log=tab), tab)
        clock.lap("token-level Δp")
    layers = cfg.persistence_layers or spread_layers(arch.n_layers)
    once(vectors["all-layers"], "persistence", "shift_cosines.json", lambda p: run_persistence(
        p, dataset=HELD_OUT.format(n=cfg.persistence_prompts), prompts=cfg.persistence_prompts, model_spec=cfg.model,
        cfg=PersistenceConfig(layers=layers, max_new_tokens=min(cfg.max_new_tokens, 64)), log=tab), tab)
    clock.lap("persistence")

    report = build_report([out], out / "report.html")
    clock.lap("report")
    log(f"[5/5] report: {report}")
    headline = headline_numbers(cfg, runs, accuracy, gap, report, seconds=time.perf_counter() - t0)
    headline["stages"] = clock.laps
    write_atomically(out / "headline.json", json.dumps(headline, indent=1))
    for line in summary_lines(headline):
        log(line)
    return headline


class Stopwatch:
    """Seconds per named stage (a name seen again adds up)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now


def training_configs(cfg: DemoConfig, last: int) -> dict[str, TrainConfig]:
    """The two runs: the ``demo-cpu`` preset at the last layer and at all layers."""
    out = Path(cfg.out_dir)
    common = [f"model.name={cfg.model}", f"rl.steps={cfg.steps}", f"run.checkpoint_every={max(1, cfg.steps // 3)}",
              *cfg.train_overrides]
    return {
        "last-layer": load_config(TrainConfig, "demo-cpu", [*common, f"steering.layers=[{last}]",
                                                            f"optim.lr={cfg.last_layer_lr}",
                                                            f"run.dir={out / 'last-layer'}", "run.name=last-layer"]),
        "all-layers": load_config(TrainConfig, "demo-cpu", [*common, f"run.dir={out / 'all-layers'}",
                                                            "run.name=all-layers"]),
    }


def evaluate_all(cfg: DemoConfig, runs: dict[str, TrainConfig], out: Path, *,
                 log: Callable[[str], None]) -> dict[str, float]:
    """Greedy accuracy of base, base + "To" and each run's vectors on the held-out additions (resumable)."""
    train_cfg = next(iter(runs.values()))
    base = EvalConfig(
        model=EvalModelSection(name=cfg.model),
        target=TargetSection(template=train_cfg.data.template, prefix=""),
        protocol=ProtocolSection(benchmarks=(f"additions={HELD_OUT.format(n=cfg.eval_problems)}",), temperature=0.0,
                                 max_new_tokens=train_cfg.rollout.max_new_tokens, max_total_tokens=None, seeds=(0,),
                                 extraction=train_cfg.reward.extraction),
        engine=EngineSection(batch_size=64), reward=RewardFunctionsSection(workers=0),
        out=str(RunDir(out).eval_dir("base")))
    prefixed = replace(base, target=replace(base.target, prefix="To"), out=str(RunDir(out).eval_dir("base+To")))
    targets = {"base": base, "base + 'To'": prefixed,
               **{name: replace(base, target=replace(base.target, vectors=str(c.run.path)),
                                out=str(RunDir(c.run.path).eval_dir("greedy"))) for name, c in runs.items()}}
    accuracy = {}
    with EvalSession(base, log=log) as session:
        for label, target_cfg in targets.items():
            result = session.run(target_cfg)[0]
            accuracy[label] = result["benchmarks"]["additions"]["avg"]["mean"]
    return accuracy


def once(vectors: Path, kind: str, marker: str, run: Callable[[Path], Any], log: Callable[[str], None]) -> None:
    """Run an analysis unless its folder already holds ``marker`` newer than the vectors.

    An analysis the inputs do not allow (e.g. Δp when no completion stops) is reported and skipped: the demo
    and its report go on without it.
    """
    done = analysis_dir(vectors, kind) / marker
    if done.is_file() and done.stat().st_mtime >= vectors.stat().st_mtime:
        log(f"{kind} of {vectors.parent.name}: already done")
        return
    log(f"{kind} of {vectors.parent.name}")
    try:
        run(vectors)
    except RlsteerError as err:
        log(f"{kind} of {vectors.parent.name} skipped: {err}")


def spread_layers(n_layers: int, count: int = 4) -> tuple[int, ...]:
    """``count`` injection layers spread from the first to the second-to-last block.

    Example:
        >>> spread_layers(30)
        (0, 9, 19, 28)
    """
    top = max(0, n_layers - 2)
    return tuple(sorted({round(k * top / (count - 1)) for k in range(count)}))


def headline_numbers(cfg: DemoConfig, runs: dict[str, TrainConfig], accuracy: dict[str, float], gap: float,
                     report: Path, *, seconds: float) -> dict[str, Any]:
    """What the demo found: rewards, accuracies, top lens and Δp tokens, wall time, where the report is."""
    out: dict[str, Any] = {"model": cfg.model, "identity_gap": gap,
                           "eval_set": f"{cfg.eval_problems} {HELD_OUT_WORDS}",
                           "eval_spec": HELD_OUT.format(n=cfg.eval_problems), "accuracy": accuracy, "reward": {},
                           "lens": {}, "promoted": {}, "report": str(report), "seconds": seconds}
    for name, c in runs.items():
        run = RunDir(c.run.path)
        metrics = [json.loads(line) for line in run.metrics.read_text().splitlines() if line]
        out["reward"][name] = [metrics[0]["reward_mean"], metrics[-1]["reward_mean"]]
        lens = [json.loads(line) for line in (run.analysis_dir("lens") / "lens.jsonl").read_text().splitlines()
                if line]
        final = max(lens, key=lambda r: r["layer"])["entry"]
        out["lens"][name] = [r["token"] for r in sorted(lens, key=lambda r: r["rank"]) if r["entry"] == final][:5]
        tokens = run.analysis_dir("token-shift") / "tokens.jsonl"
        out["promoted"][name] = [json.loads(line)["token"] for line in tokens.read_text().splitlines()[:5]] \
            if tokens.is_file() else []
    return out


def summary_lines(h: dict[str, Any]) -> Sequence[str]:
    acc = ", ".join(f"{label} {100 * a:.1f} %" for label, a in h["accuracy"].items())
    return [
        f"\nrlsteer demo on {h['model']}: done in {h['seconds'] / 60:.1f} min",
        "  training reward, first → last step: " + "; ".join(
            f"{name} {r[0]:+.2f} → {r[1]:+.2f}" for name, r in h["reward"].items()),
        f"  held-out: {h['eval_set']}; greedy accuracy: {acc}",
        *(f"  {name}: logit lens top tokens {tokens}; most promoted (Δp) {h['promoted'][name]}"
          for name, tokens in h["lens"].items()),
        f"  report: {h['report']}   (open it in a browser; numbers also in headline.json)",
        "  time per stage: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in h.get("stages", {}).items()),
    ]


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
