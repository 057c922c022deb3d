"""Sweeps (paper Fig. 1, Fig. 12; docs/semantics.md#steering, #orthogonal, #other): one vector per layer, orthogonal series, scales.

* **layers** — train one single-layer vector per layer (sequentially here, resuming finished and partial
  runs, or written out as independent jobs for a cluster), evaluate each, stack them into one vector file
  (``stacked.safetensors``, what the persistence analysis reads) and plot accuracy per layer against the
  base model (greedy and sampled) and, when given, an all-layer run (Fig. 1);
* **orthogonal** — at one layer, the original vector and then each new one trained orthogonal to all
  before it (``steering.orthogonal_to``: s = (I − BBᵀ)u, exact at every step), evaluated in turn (Fig. 12);
* **scale** — one vector evaluated at several multipliers (the authors' unpublished magnitude runs).

Example:
    >>> from rlsteer.config import TrainConfig
    >>> cfgs = layer_configs(TrainConfig(), [3, 7], Path("runs/sweep"))
    >>> [(c.steering.layers, str(c.run.path)) for c in cfgs.values()]
    [((3,), 'runs/sweep/layer-3'), ((7,), 'runs/sweep/layer-7')]
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlsteer.analysis.output import save_figure, write_records
from rlsteer.config import EvalConfig, TargetSection, TrainConfig, dump_yaml
from rlsteer.evaluate import EvalSession
from rlsteer.io import write_atomically
from rlsteer.rundir import RunDir
from rlsteer.steering.sites import Entry
from rlsteer.steering.vectors import SteeringVectors


def layer_configs(cfg: TrainConfig, layers: Sequence[int], root: Path) -> dict[int, TrainConfig]:
    """One single-layer run per layer under ``root/layer-ℓ`` (per-layer lrs apply as in ``cfg``)."""
    return {ell: replace(cfg, steering=replace(cfg.steering, layers=(ell,)),
                         run=replace(cfg.run, name=f"{cfg.run.name}-layer-{ell}", dir=str(root / f"layer-{ell}")))
            for ell in layers}


def orthogonal_configs(cfg: TrainConfig, layer: int, count: int, root: Path,
                       original: Path | None = None) -> list[TrainConfig]:
    """``count`` runs at ``layer``, each orthogonal to every earlier vector (``original`` first when given)."""
    runs: list[TrainConfig] = []
    earlier = [str(original)] if original is not None else []
    for k in range(count):
        run_dir = root / f"orthogonal-{k}"
        runs.append(replace(cfg, steering=replace(cfg.steering, layers=(layer,), orthogonal_to=tuple(earlier)),
                            run=replace(cfg.run, name=f"{cfg.run.name}-orthogonal-{k}", dir=str(run_dir))))
        earlier.append(str(RunDir(run_dir).vectors))
    return runs


def is_finished(cfg: TrainConfig) -> bool:
    run = RunDir(cfg.run.path)
    return run.checkpoint_steps()[-1:] == [cfg.rl.steps] and run.vectors.is_file()


def job_script(configs: Sequence[TrainConfig], root: Path) -> str:
    """A shell script with one independent, resumable ``rlsteer train`` line per run (configs saved beside it)."""
    lines = ["#!/usr/bin/env bash", "# one line per run: submit each as its own job; rerunning a line resumes it",
             "set -euo pipefail"]
    for cfg in configs:
        path = root / "configs" / f"{cfg.run.path.name}.yaml"
        write_atomically(path, dump_yaml(cfg))
        lines.append(f"rlsteer train {shlex.quote(str(path))} --resume")
    return "\n".join(lines) + "\n"


def train_all(configs: Sequence[TrainConfig], log: Callable[[str], None] = print) -> None:
    """Train each run in turn; finished runs are skipped and interrupted ones resume."""
    from rlsteer.train import train

    for k, cfg in enumerate(configs, start=1):
        if is_finished(cfg):
            log(f"[{k}/{len(configs)}] {cfg.run.path} is finished")
            continue
        log(f"[{k}/{len(configs)}] training {cfg.run.path}")
        train(cfg, resume=True, log=lambda line: log("    " + line))


def stack_vectors(files: dict[int, Path], out: Path) -> Path:
    """One file with each layer's ``resid_post`` vector from its run's vector file (the authors' merged matrix)."""
    stacked: SteeringVectors | None = None
    for ell, file in sorted(files.items()):
        single = SteeringVectors.load(file)
        if stacked is None:
            stacked = SteeringVectors(single.d_model, metadata={**single.metadata, "stacked_from": str(out.parent)})
        stacked.add(Entry("resid_post", ell), single.vector(Entry("resid_post", ell)).detach(), trainable=False)
    if stacked is None:
        raise ValueError("no runs to stack")
    return stacked.save(out)


def evaluate_series(cfg: EvalConfig, items: Sequence[tuple[str, Path | None, float]], root: Path, *,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Evaluate (label, vector file or None, scale) items in one session; rows with the mean avg@n."""
    rows = []
    with EvalSession(_item_config(cfg, *items[0], root), log=log) as session:
        for label, vectors, scale in items:
            result = session.run(_item_config(cfg, label, vectors, scale, root))[0]
            benches = result["benchmarks"].values()
            rows.append({"label": label, "vectors": str(vectors) if vectors else None, "scale": scale,
                         "temperature": cfg.protocol.temperature,
                         "mean": sum(b["avg"]["mean"] for b in benches) / len(benches),
                         "std": sum(b["avg"]["std"] for b in benches) / len(benches)})
    return rows


def _item_config(cfg: EvalConfig, label: str, vectors: Path | None, scale: float, root: Path) -> EvalConfig:
    target = replace(cfg.target, vectors=str(vectors) if vectors else None, scale=scale, prefix="")
    mode = "greedy" if cfg.protocol.temperature == 0 else f"T{cfg.protocol.temperature:g}"
    return replace(cfg, target=target, out=str(root / "eval" / mode / label))


def run_layer_sweep(train_cfg: TrainConfig, eval_cfg: EvalConfig, layers: Sequence[int], root: Path, *,
                    all_layers: Path | None = None, checkpoint: str = "final", select: str = "best:avg",
                    log: Callable[[str], None] = print) -> Path:
    """Train (or resume) every single-layer run, stack them, evaluate, tabulate and plot (Fig. 1).

    ``checkpoint`` ``final`` takes each run's last vectors; ``best`` first evaluates every checkpoint of each
    run with ``eval_cfg`` and takes the one ``select`` prefers (the authors' procedure, see
    :mod:`rlsteer.selection`), recorded in each run's selection.json.
    """
    if checkpoint not in ("final", "best"):
        raise ValueError(f"checkpoint must be final or best, not {checkpoint!r}")
    configs = layer_configs(train_cfg, layers, root)
    train_all(list(configs.values()), log)
    model = eval_cfg.model.name or train_cfg.model.name
    template = eval_cfg.target.template or train_cfg.data.template
    cfg = replace(eval_cfg, model=replace(eval_cfg.model, name=model), target=TargetSection(template=template))
    files = {ell: chosen_vectors(RunDir(c.run.path), cfg, checkpoint, select, log) for ell, c in configs.items()}
    stacked = stack_vectors(files, root / "stacked.safetensors")
    items: list[tuple[str, Path | None, float]] = [(f"layer-{ell}", file, 1.0) for ell, file in files.items()]
    if all_layers is not None:
        items.append(("all-layers", all_layers, 1.0))
    rows = evaluate_series(cfg, [("base", None, 1.0), *items], root, log=log)
    greedy = replace(cfg, protocol=replace(cfg.protocol, temperature=0.0))
    if cfg.protocol.temperature != 0:
        rows += evaluate_series(greedy, [("base", None, 1.0)], root, log=log)
    for row in rows:
        row["layer"] = int(row["label"].split("-")[1]) if row["label"].startswith("layer-") else None
    write_records(root / "layers", rows)
    figures = plot_layers(rows, root)
    log(f"stacked vectors: {stacked}; → {root} ({', '.join(p.name for p in figures)})")
    return root


def chosen_vectors(run: RunDir, cfg: EvalConfig, checkpoint: str, select: str,
                   log: Callable[[str], None] = print) -> Path:
    """A run's final vector file, or (``best``) the checkpoint ``select`` picks among all evaluated ones."""
    if checkpoint == "final":
        return run.vectors
    from rlsteer.evaluate import evaluate

    evaluate(replace(cfg, target=replace(cfg.target, vectors=str(run.path), step="all"), select=select, out=None),
             log=log)
    [(_, file)] = run.resolve("best")
    return file


def plot_layers(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Accuracy per steered layer, with base (sampled, greedy) and all-layer lines (paper Fig. 1)."""
    from rlsteer.figures import subplots
    from matplotlib.ticker import MaxNLocator

    per_layer = sorted((r["layer"], r["mean"], r["std"]) for r in rows if r["layer"] is not None)
    fig, ax = subplots(figsize=(max(6.0, 0.28 * len(per_layer) + 3), 3.6))
    ax.errorbar([p[0] for p in per_layer], [100 * p[1] for p in per_layer], yerr=[100 * p[2] for p in per_layer],
                marker="o", capsize=2, label="single-layer vector")
    styles = {("base", False): ("tab:gray", ":", "base (T = {t:g})"), ("base", True): ("black", "--", "base (greedy)"),
              ("all-layers", False): ("tab:red", "-.", "all-layer vector"),
              ("all-layers", True): ("tab:red", "-.", "all-layer vector")}
    for r in rows:
        key = (r["label"], r["temperature"] == 0)
        if key in styles:
            color, style, name = styles[key]
            ax.axhline(100 * r["mean"], color=color, ls=style, lw=1, label=name.format(t=r["temperature"]))
    ax.set_xlabel("steered layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (avg@n, %)")
    ax.legend(fontsize=7)
    return save_figure(fig, out / "layers")


def run_orthogonal(train_cfg: TrainConfig, eval_cfg: EvalConfig, layer: int, count: int, root: Path, *,
                   original: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Train the orthogonal series at ``layer`` (resumable), check orthogonality, evaluate, plot (Fig. 12)."""
    configs = orthogonal_configs(train_cfg, layer, count, root, original)
    train_all(configs, log)
    files = ([original] if original is not None else []) + [RunDir(c.run.path).vectors for c in configs]
    entry = Entry("resid_post", layer)
    stack = torch.stack([SteeringVectors.load(f).vector(entry).detach().float() for f in files])  # [k, d]
    unit = stack / stack.norm(dim=1, keepdim=True)
    gram = unit @ unit.T  # [k, k]
    cfg = replace(eval_cfg, model=replace(eval_cfg.model, name=eval_cfg.model.name or train_cfg.model.name),
                  target=TargetSection(template=eval_cfg.target.template or train_cfg.data.template))
    rows = evaluate_series(cfg, [(f"vector-{k}", f, 1.0) for k, f in enumerate(files)], root, log=log)
    for k, row in enumerate(rows):
        row["index"] = k
        row["max_abs_cos_to_earlier"] = float(gram[k, :k].abs().max()) if k else 0.0
    write_records(root / "orthogonal", rows)
    figures = plot_series(rows, root / "orthogonal", x="index", xlabel="vector (each orthogonal to all before it)",
                          title=f"orthogonal vectors at layer {layer}")
    log(f"→ {root} ({', '.join(p.name for p in figures)})")
    return root


def run_scale(eval_cfg: EvalConfig, vectors: Path, scales: Sequence[float], root: Path, *,
              log: Callable[[str], None] = print) -> Path:
    """Evaluate ``vectors`` at every multiplier in ``scales`` (0 is the base model) and plot."""
    rows = evaluate_series(eval_cfg, [(f"scale-{s:g}", vectors, s) for s in scales], root, log=log)
    write_records(root / "scale", rows)
    figures = plot_series(rows, root / "scale", x="scale", xlabel="multiplier on the vector", title=vectors.name)
    log(f"→ {root} ({', '.join(p.name for p in figures)})")
    return root


def plot_series(rows: Sequence[dict[str, Any]], stem: Path, *, x: str, xlabel: str, title: str) -> list[Path]:
    from rlsteer.figures import subplots
    from matplotlib.ticker import MaxNLocator

    points = sorted((r[x], r["mean"], r["std"]) for r in rows)
    fig, ax = subplots(figsize=(6, 3.4))
    ax.errorbar([p[0] for p in points], [100 * p[1] for p in points], yerr=[100 * p[2] for p in points], marker="o",
                capsize=2)
    ax.set_xlabel(xlabel)
    if x == "index":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (avg@n, %)")
    ax.set_title(title)
    return save_figure(fig, stem)
