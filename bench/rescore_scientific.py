"""How much ``normalize_scientific`` moves a benchmark: the same saved completions scored both ways.

Run:  .venv/bin/python bench/rescore_scientific.py EVAL_FOLDER [--benchmark minerva_math] [--json OUT]

EVAL_FOLDER is the output of ``rlsteer eval`` (``protocol.json`` + ``samples/``). Every sample of the benchmark
is verified again with Math-Verify, once as the authors do (golds and answers as written) and once with
e-notation rewritten (``4.5e33`` → ``4.5 \\times 10^{33}``), with the template and extraction the evaluation
recorded. No sampling happens, so the difference is the option's effect alone. Prints accuracy both ways, the
samples whose score changed, and how many golds are in e-notation.

Example (the numbers in docs/semantics.md):
    rlsteer eval --model smollm2-135m-instruct --protocol paper-greedy --benchmarks minerva_math \\
        protocol.max_new_tokens=512 --out /tmp/minerva
    python bench/rescore_scientific.py /tmp/minerva
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlsteer.rewards import extract_answer, math_reward, normalise_gold
from rlsteer.samples import read_samples


def rescore(folder: Path, benchmark: str) -> dict[str, object]:
    """Both scores of every sample of ``benchmark`` in the evaluation ``folder`` (first seed's file)."""
    protocol = json.loads((folder / "protocol.json").read_text())
    config = protocol["config"]
    template, extraction = config["target"]["template"], config["protocol"]["extraction"]
    files = sorted((folder / "samples").glob(f"{benchmark}.seed*.jsonl"))
    if not files:
        sys.exit(f"error: no samples/{benchmark}.seed*.jsonl in {folder}; evaluate that benchmark first")
    rows = [r for r in read_samples(files[0]) if r.get("status") != "prompt_too_long"]
    changed = []
    scores = {False: 0.0, True: 0.0}
    for r in rows:
        both = {flag: math_reward(r["completion"], str(r["gold"]), template, extraction=extraction,
                                  values="zero_one", normalize_scientific=flag) for flag in (False, True)}
        for flag, value in both.items():
            scores[flag] += value
        if both[False] != both[True]:
            changed.append({"problem_id": r["problem_id"], "gold": r["gold"],
                            "answer": extract_answer(r["completion"], template, extraction),
                            "as_written": both[False], "normalized": both[True]})
    n = len(rows)
    golds = {r["problem_id"]: str(r["gold"]) for r in rows}
    return {"evaluation": str(folder), "file": files[0].name, "template": template, "extraction": extraction,
            "samples": n, "problems": len(golds),
            "e_notation_golds": sum(normalise_gold(g) != g for g in golds.values()),  # what the option rewrites
            "accuracy_as_written": scores[False] / max(n, 1), "accuracy_normalized": scores[True] / max(n, 1),
            "changed": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an `rlsteer eval` output folder")
    parser.add_argument("--benchmark", default="minerva_math")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = rescore(args.folder, args.benchmark)
    print(f"{args.benchmark}: {result['samples']} samples of {result['problems']} problems "
          f"({result['e_notation_golds']} golds in e-notation), {result['template']} template, "
          f"{result['extraction']} extraction")
    print(f"  accuracy, golds as written (authors): {100 * result['accuracy_as_written']:.2f} %")
    print(f"  accuracy, normalize_scientific:       {100 * result['accuracy_normalized']:.2f} %")
    print(f"  samples whose score changed: {len(result['changed'])}")
    for c in result["changed"]:
        print(f"    {c['problem_id']}: gold {c['gold']!r}, answer {c['answer']!r}: "
              f"{c['as_written']:.0f} → {c['normalized']:.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
