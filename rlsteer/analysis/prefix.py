"""The prefix experiment (docs/semantics.md#prefix; paper Fig. 4 right): how much of the vector is a prefix token?

Three conditions under the evaluation protocol, each greedy and sampled: the base model, the base model
with the prefix token ("To" for Qwen, "Step" for Llama-Instruct) appended right after the generation
prompt, and the steered model. All share the vectors' model and template.

Example:
    >>> cfgs = prefix_configs(EvalConfig(), Path("runs/x/vectors.safetensors"), "To", Path("out"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlsteer.analysis.inputs import with_vector_defaults
from rlsteer.analysis.output import analysis_dir, save_figure, write_records
from rlsteer.config import EvalConfig, TargetSection
from rlsteer.evaluate import EvalSession
from rlsteer.results import compare_table
from rlsteer.io import write_atomically

MODES = ("greedy", "sampled")


def prefix_configs(cfg: EvalConfig, vectors: Path, prefix: str, out: Path) -> dict[tuple[str, str], EvalConfig]:
    """(mode, condition) → the evaluation config; conditions ``base``, ``base + {prefix}``, ``steered``."""
    cfg = with_vector_defaults(cfg, vectors)
    model, template = cfg.model, cfg.target.template
    conditions = {"base": TargetSection(prefix="", template=template),
                  f"base + {prefix}": TargetSection(prefix=prefix, template=template),
                  "steered": TargetSection(vectors=str(vectors), prefix="", template=template)}
    configs = {}
    for mode in MODES:
        temperature = 0.0 if mode == "greedy" else (cfg.protocol.temperature or 1.0)
        protocol = replace(cfg.protocol, temperature=temperature)
        for name, target in conditions.items():
            folder = out / mode / ("prefix-" + prefix if name.startswith("base +") else name)
            configs[mode, name] = replace(cfg, model=model, target=target, protocol=protocol, out=str(folder))
    return configs


def prefix_records(results: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Tidy rows: mode, condition, benchmark (and ``average`` with the six paper benchmarks), avg@n mean/std."""
    rows = []
    for (mode, condition), r in results.items():
        for bench, b in r["benchmarks"].items():
            rows.append({"mode": mode, "condition": condition, "benchmark": bench, "n": b["n"],
                         "mean": b["avg"]["mean"], "std": b["avg"]["std"]})
        if "headline" in r:
            rows.append({"mode": mode, "condition": condition, "benchmark": "average", "n": None,
                         "mean": r["headline"]["mean"], "std": r["headline"]["std"]})
    return rows


def plot_prefix(rows: list[dict[str, Any]], out: Path, prefix: str) -> list[Path]:
    """Grouped bars per benchmark, one panel per mode (accuracy ×100, error bars: std over seeds)."""
    from rlsteer.figures import subplots

    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    fig, axes = subplots(1, len(MODES), figsize=(max(6.0, 1.6 * len(benches)) * len(MODES), 3.8), sharey=True,
                             squeeze=False)
    width = 0.8 / len(conditions)
    colors = {"base": "tab:gray", "steered": "tab:blue"}
    for ax, mode in zip(axes[0], MODES, strict=True):
        for j, condition in enumerate(conditions):
            cell = {r["benchmark"]: r for r in rows if r["mode"] == mode and r["condition"] == condition}
            xs = [i + (j - (len(conditions) - 1) / 2) * width for i in range(len(benches))]
            ax.bar(xs, [100 * cell[b]["mean"] if b in cell else 0 for b in benches], width,
                   yerr=[100 * cell[b]["std"] if b in cell else 0 for b in benches], capsize=3, label=condition,
                   color=colors.get(condition, "tab:orange"))
        ax.set_xticks(range(len(benches)), benches)
        ax.set_title(f"{mode}")
        ax.set_ylabel("accuracy (avg@n, %)")
    axes[0][0].legend()
    fig.suptitle(f"base vs base + {prefix!r} vs steered", y=1.03)
    return save_figure(fig, out / "prefix")


def run_prefix(cfg: EvalConfig, vectors: str | Path, *, prefix: str = "To", out: str | Path | None = None,
               log: Callable[[str], None] = print) -> Path:
    """``rlsteer analyze prefix``: six evaluations (resumable), a table, tidy records and the bar chart."""
    path = Path(vectors)
    folder = analysis_dir(path, "prefix", out)
    configs = prefix_configs(cfg, path, prefix, folder)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with EvalSession(next(iter(configs.values())), log=log) as session:
        for key, c in configs.items():
            results[key] = session.run(c)[0]
    rows = prefix_records(results)
    write_records(folder / "prefix", rows)
    tables = []
    for mode in MODES:
        md, _ = compare_table([{**r, "target": cond} for (m, cond), r in results.items() if m == mode])
        tables.append(f"### {mode}\n\n{md}")
    write_atomically(folder / "prefix.md", "\n\n".join(tables) + "\n")
    figures = plot_prefix(rows, folder, prefix)
    log("\n\n".join(tables))
    log(f"→ {folder} ({', '.join(p.name for p in figures)})")
    return folder
