"""An evaluation's results: scores from its samples files, and the tables people read.

``results.json`` holds, per benchmark and seed, the first-sample accuracy, avg@n and unbiased pass@k, over
seeds mean ± population std, and the paper's six-benchmark headline (:mod:`rlsteer.aggregate`);
``results.md`` and ``results.csv`` are the same as tables. :func:`compare_table` puts several evaluations
side by side.

Example:
    >>> default_ks(32)
    (1, 2, 4, 8, 16, 32)
    >>> print(markdown_table({"target": "base", "benchmarks": {"gsm8k": {"n": 1, "problems": 2, "seeds": {"0": {}},
    ...     "first": {"mean": 0.5, "std": 0.0}, "avg": {"mean": 0.5, "std": 0.0},
    ...     "pass@1": {"mean": 0.5, "std": 0.0}}}}))
    base — 1 seed(s), ×100, mean ± std
    <BLANKLINE>
    | benchmark | problems | n | first | avg@n | pass@1 |
    |---|---:|---:|---:|---:|---:|
    | gsm8k | 2 | 1 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 |
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rlsteer.aggregate import PAPER_BENCHMARKS, headline, mean_std, scores
from rlsteer.config import EvalConfig
from rlsteer.data import Problem
from rlsteer.errors import RlsteerError, decode_utf8, first_line
from rlsteer.interrupt import held
from rlsteer.io import write_atomically
from rlsteer.samples import read_samples, samples_file


class ResultsError(RlsteerError):
    pass


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
        totals = dict.fromkeys(COUNTS.values(), 0)
        for seed in cfg.protocol.seeds:
            records: dict[tuple[int, int], dict[str, Any]] = {}
            for r in read_samples(samples_file(out, bench, seed)):  # the first record of each sample counts
                if r["problem_index"] < len(problems) and r["sample"] < n and "reward" in r:
                    records.setdefault((r["problem_index"], r["sample"]), r)
            if len(records) != len(problems) * n:
                raise ResultsError(f"{bench} seed {seed}: {len(records)} of {len(problems) * n} samples present; run "
                                   "the evaluation again to finish it")
            correct = [[0.0] * n for _ in problems]
            for (i, k), r in records.items():
                correct[i][k] = float(r["reward"])
                if r.get("status") in COUNTS:
                    totals[COUNTS[r["status"]]] += 1
            seeds[seed] = scores(correct, ks)
            per_seed_avg.setdefault(seed, {})[bench] = seeds[seed]["avg"]
        metrics = [m for m in next(iter(seeds.values())) if m not in ("n", "problems")]
        per_bench[bench] = {"n": n, "problems": len(problems), "seeds": {str(s): v for s, v in seeds.items()},
                            **{m: dict(zip(("mean", "std"), mean_std([v[m] for v in seeds.values()]), strict=True))
                               for m in metrics}, **totals}
    results: dict[str, Any] = {"target": protocol["target"], "benchmarks": per_bench, "protocol": protocol}
    if all(b in benchmarks for b in PAPER_BENCHMARKS):
        mean, std, by_seed = headline(per_seed_avg)
        results["headline"] = {"mean": mean, "std": std, "seeds": {str(s): v for s, v in by_seed.items()},
                               "benchmarks": list(PAPER_BENCHMARKS), "metric": "avg@n"}
    if seconds is not None:
        results["seconds"] = seconds
    return results


#: sample statuses counted per benchmark (over all seeds) in results.json, by the names training metrics use
COUNTS = {"timeout": "verifier_timeouts", "parse_error": "parse_failures", "no_answer": "missing_answers",
          "prompt_too_long": "prompts_too_long"}


def count_notes(results: dict[str, Any]) -> list[str]:
    """One line per benchmark with verifier timeouts, parse failures, missing answers or prompts too long.

    Example:
        >>> count_notes({"benchmarks": {"gsm8k": {"verifier_timeouts": 2, "parse_failures": 0,
        ...                                       "missing_answers": 5}}})
        ['gsm8k: 2 verifier timeouts, 5 missing answers (over all seeds; each counts as wrong)']
    """
    words = {"verifier_timeouts": "verifier timeouts", "parse_failures": "parse failures",
             "missing_answers": "missing answers", "prompts_too_long": "samples of prompts over the token budget"}
    notes = []
    for bench, r in results["benchmarks"].items():
        counts = [f"{r[key]} {word}" for key, word in words.items() if r.get(key)]
        if counts:
            notes.append(f"{bench}: {', '.join(counts)} (over all seeds; each counts as wrong)")
    return notes


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
    notes = count_notes(results)
    return "\n".join(lines + ([""] + notes if notes else []))


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
        raise ResultsError(f"{path} has no results.json; evaluate it first (rlsteer eval …)")
    try:
        results = json.loads(decode_utf8(file.read_bytes(), file))
        if not isinstance(results, dict) or not isinstance(results.get("benchmarks"), dict):
            raise ValueError("not an rlsteer results record")
    except ValueError as err:  # RlsteerError (not UTF-8) and JSON errors alike
        raise ResultsError(f"{file} is damaged ({first_line(err)}); evaluate again to rewrite it (rlsteer eval with "
                           "the same settings resumes and writes it anew)") from None
    return results


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
