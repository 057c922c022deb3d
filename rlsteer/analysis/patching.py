"""Attention-head patching sweeps (docs/semantics.md#patching; paper Fig. 5, 7, 8).

One trained vector (the paper: the penultimate block's s_{L−2}) is moved into the block it feeds and
patched into its circuit in every way the paper does, each variant evaluated with the evaluation protocol:

* baselines: ``base`` (no vector), ``full`` (the vector unmodified), ``skip_attn`` (attention does not see
  it), ``skip_layer`` (the whole block does not);
* ``steer_q`` over every query head, ``steer_k`` and ``steer_v`` over every KV head (Fig. 5/7);
* ``steer_head`` and ``skip_head`` over every query head (Fig. 8).

Example:
    >>> [(v, h) for v, h in patch_plan(n_heads=2, n_kv_heads=1, variants=("full", "steer_v", "steer_q"))]
    [('full', None), ('steer_v', 0), ('steer_q', 0), ('steer_q', 1)]
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlsteer.analysis.inputs import with_vector_defaults
from rlsteer.analysis.output import analysis_dir, save_figure, write_records
from rlsteer.architectures import architecture_of
from rlsteer.config import EvalConfig, TargetSection
from rlsteer.evaluate import EvalSession
from rlsteer.io import write_atomically
from rlsteer.steering.sites import HEAD_SITES, KV_HEAD_SITES, head_limit

BASELINES = ("base", "full", "skip_attn", "skip_layer")
VARIANTS = (*BASELINES, "steer_q", "steer_k", "steer_v", "steer_head", "skip_head")
PANELS = {"Steer-Q": ("steer_q",), "Steer-K": ("steer_k",), "Steer-V": ("steer_v",),
          "Steer-Head / Skip-Head": ("steer_head", "skip_head")}


def patch_plan(n_heads: int, n_kv_heads: int, variants: Sequence[str] = VARIANTS) -> list[tuple[str, int | None]]:
    """Every (variant, head) to evaluate: K/V variants over KV heads, the other per-head ones over query heads."""
    plan: list[tuple[str, int | None]] = []
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown patch variant {v!r}; variants: {', '.join(VARIANTS)}")
        if v in HEAD_SITES:
            plan += [(v, h) for h in range(head_limit(v, n_heads, n_kv_heads)[0])]
        else:
            plan.append((v, None))
    return plan


def patching_config(cfg: EvalConfig, vectors: Path, layer: int | None, variant: str, head: int | None,
                    out: Path) -> EvalConfig:
    """The evaluation of one (variant, head); ``base`` evaluates the model without the vector."""
    cfg = with_vector_defaults(cfg, vectors)
    model, template = cfg.model, cfg.target.template
    if variant == "base":
        target = TargetSection(prefix="", template=template)
    else:
        target = TargetSection(vectors=str(vectors), prefix="", template=template, patch=variant, patch_layer=layer,
                               patch_head=head)
    folder = out / variant / (f"head-{head}" if head is not None else "")
    return replace(cfg, model=model, target=target, out=str(folder))


def run_patching(cfg: EvalConfig, vectors: str | Path, *, layer: int | None = None,
                 variants: Sequence[str] = VARIANTS, out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """``rlsteer analyze patching``: evaluate the whole sweep (resumable), write records and the figure."""
    path = Path(vectors)
    folder = analysis_dir(path, "patching", out)
    first = patching_config(cfg, path, layer, "base", None, folder)
    rows = []
    with EvalSession(first, log=log) as session:
        arch = architecture_of(session.model)
        plan = patch_plan(arch.n_heads, arch.n_kv_heads, variants)
        log(f"patching sweep: {len(plan)} evaluations ({arch.n_heads} query heads, {arch.n_kv_heads} KV heads)")
        for variant, head in plan:
            result = session.run(patching_config(cfg, path, layer, variant, head, folder))[0]
            per_bench = {b: r["avg"]["mean"] for b, r in result["benchmarks"].items()}
            rows.append({"variant": variant, "head": head, "mean": statistics.fmean(per_bench.values()),
                         "std": statistics.fmean(r["avg"]["std"] for r in result["benchmarks"].values()),
                         **{f"avg[{b}]": v for b, v in per_bench.items()}})
    write_records(folder / "patching", rows)
    write_atomically(folder / "patching.md", patching_table(rows))
    figures = plot_patching(rows, folder, title=f"{path.parent.name}/{path.name}: patched into the block it feeds")
    log(patching_table(rows))
    log(f"→ {folder} ({', '.join(p.name for p in figures)})")
    return folder


def patching_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| variant | head | accuracy (avg@n, mean over benchmarks) |", "|---|---:|---:|"]
    lines += [f"| {r['variant']} | {'' if r['head'] is None else r['head']} | "
              f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} |" for r in rows]
    return "\n".join(lines)


def plot_patching(rows: Sequence[dict[str, Any]], out: Path, *, title: str = "") -> list[Path]:
    """One panel per head family, accuracy per head, with the baselines as horizontal lines (Fig. 5, 7, 8)."""
    from rlsteer.figures import subplots

    panels = {name: vs for name, vs in PANELS.items() if any(r["variant"] in vs for r in rows)}
    baselines = {r["variant"]: r for r in rows if r["variant"] in BASELINES}
    fig, axes = subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False,
                             sharey=True)
    styles = {"base": ("tab:gray", ":"), "full": ("tab:blue", "--"), "skip_attn": ("tab:red", "--"),
              "skip_layer": ("tab:purple", "-.")}
    for ax, (name, variants) in zip(axes[0], panels.items(), strict=False):
        for variant in variants:
            points = sorted((r["head"], r["mean"], r["std"]) for r in rows if r["variant"] == variant)
            ax.errorbar([p[0] for p in points], [100 * p[1] for p in points], yerr=[100 * p[2] for p in points],
                        marker="o", capsize=2, label=variant)
            ax.set_xticks([p[0] for p in points])
        for variant, (color, style) in styles.items():
            if variant in baselines:
                ax.axhline(100 * baselines[variant]["mean"], color=color, ls=style, lw=1, label=variant)
        ax.set_title(name)
        ax.set_xlabel("KV head" if set(variants) <= set(KV_HEAD_SITES) else "query head")
    axes[0][0].set_ylabel("accuracy (%)")
    if panels:
        axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, y=1.03)
    return save_figure(fig, out / "patching")
