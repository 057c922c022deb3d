"""``rlsteer report DIR…``: one self-contained HTML page from the records runs already hold (no model).

Each DIR is a run (it has ``config.yaml`` or ``metrics.jsonl``) or a folder of runs, such as the demo's
``runs/demo``. A folder gets an overview first: every run's reward curve in one plot, and every evaluation
found under it side by side (one table and bar chart per protocol), with their first samples side by side
(before and after steering). Then, for each run: what was trained (model, sites, steps, template, reward),
the training curves (reward and each reward function's own, accuracy, completion length, truncation, vector
norms) drawn from ``metrics.jsonl``, every evaluation under ``eval/`` as a table with its protocol and its
samples side by side, and every analysis figure under ``analysis/`` with one sentence on how to read it and the
paper figure it corresponds to, plus the top Δp tokens and the Δp case study. Images and the case study are
embedded, so the file can be mailed.

Example:
    >>> build_report(["runs/demo"], "runs/demo/report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlsteer.errors import RlsteerError, decode_utf8, first_line
from rlsteer.io import write_atomically
from rlsteer.metrics import NUMBERS, read_metrics
from rlsteer.rundir import EVAL, RunDir, analysis_kind, find_runs

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


Warn = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"rlsteer: warning: {message}", file=sys.stderr)


def _read_jsonl(path: Path, warn: Warn) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; a damaged line is skipped with a warning naming file:line."""
    rows = []
    for line_no, raw in enumerate(path.read_bytes().splitlines() if path.is_file() else [], start=1):
        try:
            row = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, ValueError) as err:
            warn(f"{path}:{line_no}: not a JSON line ({first_line(err)}); the line is skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
        elif row is not None:
            warn(f"{path}:{line_no}: a JSON {type(row).__name__}, not a record; the line is skipped")
    return rows


def _quiet(message: str) -> None:
    pass


def _curves(path: Path, warn: Warn) -> list[dict[str, Any]]:
    """The sound records of a metrics file that hold what the training figure plots."""
    records = []
    for record in read_metrics(path, warn):
        missing = [key for key in NUMBERS if key not in record]
        if missing:
            warn(f"{path}: the record of step {record['step']} has no {missing[0]}; it is left out of the figure")
        else:
            records.append(record)
    return records


def _load_result(path: Path, warn: Warn) -> dict[str, Any] | None:
    """An evaluation's results.json, or None (with a warning) when it is damaged or not rlsteer's."""
    try:
        result = json.loads(path.read_bytes().decode("utf-8"))
        if isinstance(result, dict) and set(result) == {"selection"}:  # a --select record, shown with its run
            return None
        _results_table(result)  # touches every field the report shows
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        warn(f"{path}: not a readable rlsteer results file ({type(err).__name__}: {first_line(err)}); skipped")
        return None
    return dict(result)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def training_figure(metrics: Sequence[dict[str, Any]]) -> bytes:
    """PNG: reward and accuracy, completion length and truncation, and vector norms per step."""
    from rlsteer.figures import png_bytes, subplots

    steps = [m["step"] for m in metrics]
    fig, axes = subplots(1, 3, figsize=(13, 3.2))
    axes[0].plot(steps, [m["reward_mean"] for m in metrics], marker=".", label="reward (mean)")
    axes[0].plot(steps, [m["accuracy"] for m in metrics], marker=".", label="accuracy")
    for key in sorted({k for m in metrics for k in m if k.startswith("reward/")}):  # each reward function's own
        axes[0].plot(steps, [m.get(key) for m in metrics], ls="--", lw=1, label=key)
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
    return png_bytes(fig)


def is_folder(path: Path) -> bool:
    """A folder of runs or evaluations rather than one run."""
    return not RunDir(path).has_records() and (next(find_runs(path), None) is not None
                                 or next(path.rglob("results.json"), None) is not None)


def eval_label(root: Path, results_json: Path) -> str:
    """An evaluation's name in a folder: its path below ``root`` without the ``eval`` parts."""
    parts = [p for p in results_json.parent.relative_to(root).parts if p != EVAL]
    return "/".join(parts) or results_json.parent.name


def reward_figure(curves: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> bytes:
    """PNG: the mean reward per step of several runs in one plot."""
    from rlsteer.figures import png_bytes, subplots

    fig, ax = subplots(figsize=(6.5, 3.2))
    for name, metrics in curves:
        ax.plot([m["step"] for m in metrics], [m["reward_mean"] for m in metrics], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_title("training reward per run")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def comparison_figure(rows: Sequence[tuple[str, dict[str, Any]]]) -> bytes:
    """PNG: avg@n (mean ± std over seeds) per evaluation, one panel per benchmark."""
    from rlsteer.figures import png_bytes, subplots

    benches = list(dict.fromkeys(b for _, r in rows for b in r["benchmarks"]))
    fig, axes = subplots(1, len(benches), figsize=(max(4.5, 3.2 * len(benches)), 0.45 * len(rows) + 1.4),
                             squeeze=False, sharey=True)
    labels = [label for label, _ in rows]
    for ax, bench in zip(axes[0], benches, strict=True):
        cells = [r["benchmarks"].get(bench, {}).get("avg", {"mean": 0.0, "std": 0.0}) for _, r in rows]
        means = [100 * c["mean"] for c in cells]
        bars = ax.barh(range(len(rows)), means, xerr=[100 * c["std"] for c in cells], color="tab:blue", alpha=0.8)
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], fontsize=7, padding=2)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.set_xlim(0, 105)
        ax.set_title(bench, fontsize=9)
        ax.set_xlabel("avg@n, %")
    axes[0][0].invert_yaxis()
    return png_bytes(fig)


def comparison_section(root: Path, results: Sequence[Path], warn: Warn = _stderr) -> str:
    """Every evaluation under ``root`` side by side, one table and chart per protocol."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path in results:
        result = _load_result(path, warn)
        if result is None:
            continue
        config = result.get("protocol", {}).get("config", {})
        key = json.dumps([config.get("model", {}).get("name"), config.get("protocol")], sort_keys=True)
        groups.setdefault(key, []).append((eval_label(root, path), result))
    parts = []
    for rows in groups.values():
        config = rows[0][1].get("protocol", {}).get("config", {})
        p = config.get("protocol", {})
        benches = list(dict.fromkeys(b for _, r in rows for b in r["benchmarks"]))
        head = "".join(f"<th>{html.escape(b)}</th>" for b in benches)
        body = []
        for label, r in rows:
            cells = []
            for b in benches:
                m = r["benchmarks"].get(b, {}).get("avg")
                cells.append(f"<td>{100 * m['mean']:.1f} ± {100 * m['std']:.1f}</td>" if m else "<td>—</td>")
            prefix = (r.get("protocol", {}).get("config", {}).get("target", {}) or {}).get("prefix")
            body.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(repr(prefix) if prefix else '')}</td>"
                        + "".join(cells) + "</tr>")
        mode = "greedy" if p.get("temperature") == 0 else f"T={p.get('temperature')}, top_p={p.get('top_p')}"
        parts.append(f"<h3>{html.escape(str(config.get('model', {}).get('name')))}: {html.escape(mode)}, "
                     f"{p.get('max_new_tokens')} new tokens, seeds {html.escape(str(p.get('seeds')))}</h3>"
                     f"<table><tr><th>evaluation</th><th>prefix</th>{head}</tr>{''.join(body)}</table>"
                     + _img(comparison_figure(rows), "evaluations side by side")
                     + "<p class='caption'>Accuracy (avg@n, mean ± std over seeds) of each evaluation under this "
                       "protocol: the base model, the base model with a prefix, and each steered model (paper Fig. 1 "
                       "and Fig. 4 right compare the same way).</p>")
    return "\n".join(parts)


def folder_section(root: Path, warn: Warn = _stderr) -> str:
    """The overview of a folder of runs: reward curves of every run, then every evaluation side by side."""
    runs = [run.path for run in find_runs(root)]
    parts = [f"<h2>Overview: {html.escape(str(root))}</h2>"]
    curves = [(run.name, m) for run in runs if (m := _curves(RunDir(run).metrics, _quiet))]  # run_section warns
    if curves:
        parts.append(_img(reward_figure(curves), "training reward per run")
                     + "<p class='caption'>Mean reward per RLOO step of each run: the vectors start at zero, so "
                       "step 1 is the base model.</p>")
    # the folder's own evaluations (baselines) first, then each run's
    results = sorted(root.rglob("results.json"), key=lambda p: (p.relative_to(root).parts[0] != EVAL, str(p.parent)))
    if results:
        parts.append(comparison_section(root, results, warn))
        parts.append(samples_section([(eval_label(root, path), path.parent) for path in results]))
    else:
        parts.append("<p class='missing'>No evaluations under this folder yet.</p>")
    return "\n".join(parts + [run_section(run, warn) for run in runs])


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


def _tokens_table(path: Path, warn: Warn, top: int = 10) -> str:
    """The tokens a vector promotes most (token-shift's tokens.jsonl), as a small table."""
    rows = _read_jsonl(path, warn)[:top]
    cells = "".join(f"<tr><td>{html.escape(repr(r['token']))}</td><td>{r['count']}</td><td>{r['max']:+.3f}</td>"
                    f"<td>{r['mean']:+.3f}</td></tr>" for r in rows)
    return (f"<p>Top promoted tokens ({html.escape(str(path.parent.name))}), ranked by maximum Δp:</p><table><tr>"
            f"<th>token</th><th>positions</th><th>max Δp</th><th>mean Δp</th></tr>{cells}</table>")


def run_section(run_dir: Path, warn: Warn = _stderr) -> str:
    """The HTML of one run; what is missing or damaged is said, not fatal."""
    import yaml

    run = RunDir(run_dir)
    parts = [f"<h2>{html.escape(str(run_dir))}</h2>"]
    config_path = run.config
    cfg: Any = None
    if config_path.is_file():
        try:
            cfg = yaml.safe_load(decode_utf8(config_path.read_bytes(), config_path)) or {}
        except (RlsteerError, yaml.YAMLError) as err:
            warn(f"{config_path} is unreadable ({first_line(err)}); the run's settings are left out")
        sections = ("steering", "rl", "model", "data", "optim")
        if cfg is not None and not (isinstance(cfg, dict) and all(isinstance(cfg.get(k, {}), dict) for k in sections)):
            warn(f"{config_path} is not an rlsteer run config; the run's settings are left out")
            cfg = None
    if cfg is not None:
        s, rl = cfg.get("steering", {}), cfg.get("rl", {})
        parts.append(f"<p>{html.escape(str(cfg.get('model', {}).get('name')))} — sites "
                     f"{html.escape(str(s.get('sites')))} at layers {html.escape(str(s.get('layers')))}; "
                     f"{rl.get('steps')} steps × {rl.get('prompts_per_step')} prompts × "
                     f"{rl.get('samples_per_prompt')} samples; template "
                     f"{html.escape(str(cfg.get('data', {}).get('template')))}; "
                     f"lr {cfg.get('optim', {}).get('lr')}</p>")
    metrics = _curves(run.metrics, warn)
    if metrics:
        first, last = metrics[0], metrics[-1]
        parts.append("<h3>Training</h3>" + _img(training_figure(metrics), "training curves")
                     + f"<p class='caption'>Reward {first['reward_mean']:+.3f} → {last['reward_mean']:+.3f} and "
                       f"accuracy {first['accuracy']:.2f} → {last['accuracy']:.2f} over {len(metrics)} steps. "
                       f"{html.escape(reward_note(cfg or {}, first, last))}</p>")
    else:
        parts.append("<p class='missing'>No training metrics (metrics.jsonl) in this directory.</p>")
    files = sorted(run.eval_root.rglob("results.json")) if run.eval_root.is_dir() else []
    parts.append("<h3>Evaluations</h3>")
    if run.selection.is_file():
        try:
            chosen = json.loads(run.selection.read_text())
            parts.append(f"<p>Selected checkpoint: step {int(chosen['selected_step'])}, "
                         f"{html.escape(str(chosen.get('why', '')))} (selection.json).</p>")
        except (OSError, ValueError, KeyError, TypeError) as err:
            warn(f"{run.selection}: unreadable ({first_line(err)}); the selection is left out")
    results = [(path, result) for path in files if (result := _load_result(path, warn)) is not None]
    if results:
        for path, result in results:
            parts.append(f"<h4>{html.escape(str(path.parent.relative_to(run_dir)))}</h4>{_results_table(result)}")
        parts.append(samples_section([(str(p.parent.relative_to(run.eval_root)), p.parent) for p, _ in results]))
    else:
        parts.append("<p class='missing'>No evaluations yet: <code>rlsteer eval " + html.escape(str(run_dir))
                     + "</code>.</p>")
    parts.append("<h3>Analyses</h3>")
    root = run.analysis_root
    figures = sorted(root.rglob("*.png")) if root.is_dir() else []
    if not figures:
        parts.append("<p class='missing'>No analyses yet: <code>rlsteer analyze lens " + html.escape(
            str(run.vectors)) + "</code> and the other kinds (see the README).</p>")
    for png in figures:
        kind = analysis_kind(png.parent.relative_to(root).parts[0])
        caption = CAPTIONS.get((kind, png.stem), "")
        parts.append(f"<h4>{html.escape(str(png.relative_to(root)))}</h4>" + _img(png.read_bytes(), png.stem)
                     + (f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""))
        table = png.with_suffix(".md")
        if table.is_file() and png.stem in ("lens", "prefix", "patching", "persistence", "transfer"):
            parts.append(f"<pre>{html.escape(table.read_text())}</pre>")
    for tokens in sorted(root.rglob("tokens.jsonl")) if root.is_dir() else []:
        parts.append(_tokens_table(tokens, warn))
    for study in sorted(root.rglob("case_study.html")) if root.is_dir() else []:
        parts.append(f"<details><summary>Δp case study ({html.escape(str(study.parent.relative_to(root)))}): "
                     f"generated tokens shaded by how much the vector promoted some token there</summary>"
                     f"<iframe srcdoc=\"{html.escape(study.read_text())}\"></iframe></details>")
    lens_md = root / "lens" / "lens.md"
    if lens_md.is_file():
        parts.append(f"<details><summary>logit-lens tables</summary><pre>{html.escape(lens_md.read_text())}</pre>"
                     "</details>")
    return "\n".join(parts)


def reward_note(cfg: dict[str, Any], first: dict[str, Any], last: dict[str, Any]) -> str:
    """How to read a run's reward: Math-Verify's ±1, or the weighted reward functions with their own curves."""
    reward = cfg.get("reward", {}) or {}
    if reward.get("kind") == "python":
        terms = ([{"function": reward["function"], "weight": 1.0}] if reward.get("function")
                 else list(reward.get("functions") or []))
        shown = " + ".join(f"{t.get('weight', 1.0):g} × {t.get('name') or str(t['function']).rpartition(':')[2]}"
                           for t in terms)
        own = "; ".join(f"{k.removeprefix('reward/')} {first[k]:.3f} → {last[k]:.3f}" for k in last
                        if k.startswith("reward/") and k in first)
        own = f": {own}" if own else ""
        return (f"Reward = {shown} (reward functions from user code; dashed: each one's own mean{own}); accuracy "
                f"is the share of completions with a reward above {reward.get('success_above', 0.0):g}.")
    if reward.get("kind") == "first_token":
        return "Reward is +1 when the first generated token is the target."
    return "Reward is ±1 per sample (Math-Verify), so accuracy = (reward + 1) / 2."


def samples_section(evaluations: Sequence[tuple[str, Path]], problems: int = 4, chars: int = 400) -> str:
    """The first sample of the first ``problems`` problems of each benchmark and seed, one column per evaluation
    (before and after steering, when a base evaluation is among them), with each sample's reward."""
    from rlsteer.samples import SAMPLES, read_samples

    groups: dict[str, list[tuple[str, dict[int, dict[str, Any]]]]] = {}
    for label, folder in evaluations:
        for file in sorted((folder / SAMPLES).glob("*.jsonl")) if (folder / SAMPLES).is_dir() else []:
            first = {r["problem_index"]: r for r in read_samples(file) if r.get("sample") == 0}
            groups.setdefault(file.stem, []).append((label, first))
    parts = []
    for group, columns in groups.items():
        indices = sorted({i for _, rows in columns for i in rows})[:problems]
        head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
        body = []
        for i in indices:
            row = next(rows[i] for _, rows in columns if i in rows)
            cells = "".join(_sample_cell(rows.get(i), chars) for _, rows in columns)
            body.append(f"<tr><td class='sample'><pre>{html.escape(_tail(str(row.get('prompt', '')), 120))}</pre>"
                        f"</td>{cells}</tr>")
        means = []
        for label, rows in columns:
            scores = [float(x) for r in rows.values() if (x := r.get("score", r.get("reward"))) is not None]
            if scores:
                means.append(f"{label}: mean reward {sum(scores) / len(scores):.3f} over {len(scores)} problems")
        parts.append(f"<details open><summary>Samples of {html.escape(group)} side by side (first sample of each "
                     f"problem; {html.escape('; '.join(means))})</summary><table class='samples'><tr><th>prompt"
                     f"</th>{head}</tr>{''.join(body)}</table></details>")
    return "\n".join(parts)


def _sample_cell(record: dict[str, Any] | None, chars: int) -> str:
    if record is None:
        return "<td>—</td>"
    reward = record.get("score", record.get("reward"))
    parts = record.get("rewards") or {}
    detail = ", ".join(f"{k} {v:g}" for k, v in parts.items())
    return (f"<td class='sample'><pre>{html.escape(_head(str(record.get('completion', '')), chars))}</pre>"
            f"<span class='small'>reward {reward:g}{' (' + html.escape(detail) + ')' if detail else ''}, "
            f"{html.escape(str(record.get('status', '')))}</span></td>")


def _head(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars] + " …"


def _tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else "… " + text[-chars:]


def build_report(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 warn: Warn = _stderr) -> Path:
    """Write one self-contained HTML report for ``run_dirs`` (atomically) and return its path; damaged records
    (a torn metrics line, a broken results.json) are left out with a warning to ``warn`` naming file:line."""
    dirs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ReportError(f"not a directory: {', '.join(missing)}; pass run directories (runs/<name>)")
    body = "\n".join(folder_section(d, warn) if is_folder(d) else run_section(d, warn) for d in dirs)
    page = ("<!doctype html><meta charset='utf-8'><title>rlsteer report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
            "img{max-width:100%;border:1px solid #eee}table{border-collapse:collapse;margin:.5em 0}"
            "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}"
            ".caption{color:#444;font-style:italic}.small{font-size:.85em;color:#555}.missing{color:#a40}"
            "pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em}"
            "iframe{width:100%;height:32em;border:1px solid #eee}"
            "td.sample{text-align:left;vertical-align:top;max-width:28em;font-size:.85em}"
            "td.sample pre{white-space:pre-wrap;background:none;padding:0;margin:0}</style>"
            "<h1>rlsteer report</h1><p>Steering vectors trained with RLOO on a frozen model, their evaluations "
            "and analyses (arXiv 2509.06608).</p>" + body)
    path = Path(out)
    write_atomically(path, page)
    return path
