"""``rlsteer report RUN_DIR…``: one self-contained HTML page from the records runs already hold (no model).

For each run: what was trained (model, sites, steps, template), the training curves (reward, accuracy,
completion length, truncation, vector norms) drawn from ``metrics.jsonl``, every evaluation under
``eval/`` as a table with its protocol, and every analysis figure under ``analysis/`` with one sentence on
how to read it and the paper figure it corresponds to. Images are embedded, so the file can be mailed.

Example:
    >>> build_report(["runs/demo/train"], "runs/demo/report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlsteer.errors import RlsteerError

#: (analysis folder kind, figure stem) → how to read it, and its paper counterpart
CAPTIONS: dict[tuple[str, str], str] = {
    ("lens", "lens_histograms"): "Cosine of each vector with every unembedding row. A long right tail means the "
                                 "vector points at a few tokens; its top tokens are in the table (paper Table 8).",
    ("lens", "norms_and_cosines"): "Vector norms per entry and their pairwise cosines; neighbouring layers with "
                                   "high cosine learned similar directions (stable rank in the title).",
    ("token-shift", "top_tokens"): "Tokens the vectors promote most: the distribution of their Δp = p_steered − "
                                   "p_base over all generation positions, ranked by the maximum (paper Fig. 4/13 "
                                   "left).",
    ("prefix", "prefix"): "Base model, base model with the prefix token, and steered model, greedy and sampled: how "
                          "much of the gain a single prefix token explains (paper Fig. 4 right).",
    ("persistence", "persistence"): "How a single-layer vector's effect persists through later blocks: Diff-Diff "
                                    "(is the shift consistent across tokens?) and Diff-Vector (is it aligned with that "
                                    "block's own vector?) (paper Fig. 2, App. D).",
    ("persistence", "shift_cosines"): "Cosine between the mean final-block shifts caused by vectors injected at "
                                      "different layers (paper Fig. 3).",
    ("patching", "patching"): "The vector moved into the block it feeds and patched per head: points above the "
                              "Skip-Attn line are heads through which the vector acts (paper Fig. 5, 7, 8).",
    ("transfer", "transfer"): "Normalised gain of each donor's vector on each recipient model: 1 is as good as the "
                              "recipient's own vector (paper Table 1).",
}


class ReportError(RlsteerError):
    pass


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def training_figure(metrics: Sequence[dict[str, Any]]) -> bytes:
    """PNG: reward and accuracy, completion length and truncation, and vector norms per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    axes[0].plot(steps, [m["reward_mean"] for m in metrics], marker=".", label="reward (mean)")
    axes[0].plot(steps, [m["accuracy"] for m in metrics], marker=".", label="accuracy")
    axes[0].set_title("reward")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [m["len_mean"] for m in metrics], marker=".", color="tab:green", label="mean length")
    twin = axes[1].twinx()
    twin.plot(steps, [m["truncated"] for m in metrics], ls="--", color="tab:red", label="truncated share")
    twin.set_ylim(0, 1.05)
    axes[1].set_title("completions (dashed: truncated share)")
    norms = sorted({k for m in metrics for k in m if k.startswith("norm/")})
    for key in norms[:40]:
        axes[2].plot(steps, [m.get(key) for m in metrics], lw=0.8)
    axes[2].set_title(f"vector norms ({len(norms)} entries)")
    for ax in axes:
        ax.set_xlabel("step")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _results_table(result: dict[str, Any]) -> str:
    rows = []
    for bench, r in result["benchmarks"].items():
        ks = [m for m in r if m.startswith("pass@")]
        cells = [f"{100 * r[m]['mean']:.1f} ± {100 * r[m]['std']:.1f}" for m in ("first", "avg", *ks)]
        rows.append(f"<tr><td>{html.escape(bench)}</td><td>{r['problems']}</td><td>{r['n']}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells[:2])
                    + f"<td>{', '.join(f'{k}: {c}' for k, c in zip(ks, cells[2:], strict=True))}</td></tr>")
    proto = result.get("protocol", {}).get("config", {})
    p, t = proto.get("protocol", {}), proto.get("target", {})
    note = (f"model {proto.get('model', {}).get('name')}, template {t.get('template')}, prefix {t.get('prefix')!r}, "
            f"scale {t.get('scale')}, T={p.get('temperature')}, top_p={p.get('top_p')}, "
            f"max tokens {p.get('max_new_tokens')}/{p.get('max_total_tokens')}, seeds {p.get('seeds')}")
    head = ("<table><tr><th>benchmark</th><th>problems</th><th>n</th><th>first sample</th><th>avg@n</th>"
            "<th>pass@k</th></tr>")
    extra = ""
    if "headline" in result:
        h = result["headline"]
        extra = f"<p>Six-benchmark average (avg@n): <b>{100 * h['mean']:.1f} ± {100 * h['std']:.1f}</b></p>"
    return f"{head}{''.join(rows)}</table>{extra}<p class='small'>{html.escape(note)}</p>"


def run_section(run_dir: Path) -> str:
    """The HTML of one run; what is missing is said, not fatal."""
    import yaml

    parts = [f"<h2>{html.escape(str(run_dir))}</h2>"]
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        cfg = yaml.safe_load(config_path.read_text()) or {}
        s, rl = cfg.get("steering", {}), cfg.get("rl", {})
        parts.append(f"<p>{html.escape(str(cfg.get('model', {}).get('name')))} — sites "
                     f"{html.escape(str(s.get('sites')))} at layers {html.escape(str(s.get('layers')))}; "
                     f"{rl.get('steps')} steps × {rl.get('prompts_per_step')} prompts × "
                     f"{rl.get('samples_per_prompt')} samples; template "
                     f"{html.escape(str(cfg.get('data', {}).get('template')))}; "
                     f"lr {cfg.get('optim', {}).get('lr')}</p>")
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    if metrics:
        first, last = metrics[0], metrics[-1]
        parts.append("<h3>Training</h3>" + _img(training_figure(metrics), "training curves")
                     + f"<p class='caption'>Reward {first['reward_mean']:+.3f} → {last['reward_mean']:+.3f} and "
                       f"accuracy {first['accuracy']:.2f} → {last['accuracy']:.2f} over {len(metrics)} steps. "
                       "Reward is ±1 per sample (Math-Verify), so accuracy = (reward + 1) / 2.</p>")
    else:
        parts.append("<p class='missing'>No training metrics (metrics.jsonl) in this directory.</p>")
    results = sorted((run_dir / "eval").rglob("results.json")) if (run_dir / "eval").is_dir() else []
    parts.append("<h3>Evaluations</h3>")
    if results:
        for path in results:
            result = json.loads(path.read_text())
            parts.append(f"<h4>{html.escape(str(path.parent.relative_to(run_dir)))}</h4>{_results_table(result)}")
    else:
        parts.append("<p class='missing'>No evaluations yet: <code>rlsteer eval " + html.escape(str(run_dir))
                     + "</code>.</p>")
    parts.append("<h3>Analyses</h3>")
    root = run_dir / "analysis"
    figures = sorted(root.rglob("*.png")) if root.is_dir() else []
    if not figures:
        parts.append("<p class='missing'>No analyses yet: <code>rlsteer analyze lens " + html.escape(
            str(run_dir / "vectors.safetensors")) + "</code> and the other kinds (see the README).</p>")
    for png in figures:
        kind = png.parent.relative_to(root).parts[0].split("-step-")[0]
        caption = CAPTIONS.get((kind, png.stem), "")
        parts.append(f"<h4>{html.escape(str(png.relative_to(root)))}</h4>" + _img(png.read_bytes(), png.stem)
                     + (f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""))
        table = png.with_suffix(".md")
        if table.is_file() and png.stem in ("lens", "prefix", "patching", "persistence", "transfer"):
            parts.append(f"<pre>{html.escape(table.read_text())}</pre>")
    lens_md = root / "lens" / "lens.md"
    if lens_md.is_file():
        parts.append(f"<details><summary>logit-lens tables</summary><pre>{html.escape(lens_md.read_text())}</pre>"
                     "</details>")
    return "\n".join(parts)


def build_report(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write one self-contained HTML report for ``run_dirs`` (atomically) and return its path."""
    dirs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ReportError(f"not a directory: {', '.join(missing)}; pass run directories (runs/<name>)")
    body = "\n".join(run_section(d) for d in dirs)
    page = ("<!doctype html><meta charset='utf-8'><title>rlsteer report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
            "img{max-width:100%;border:1px solid #eee}table{border-collapse:collapse;margin:.5em 0}"
            "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}"
            ".caption{color:#444;font-style:italic}.small{font-size:.85em;color:#555}.missing{color:#a40}"
            "pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em}</style>"
            "<h1>rlsteer report</h1><p>Steering vectors trained with RLOO on a frozen model, their evaluations "
            "and analyses (arXiv 2509.06608).</p>" + body)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
