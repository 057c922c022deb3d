"""Pack the evaluation and training sets into rlsteer/packaged_data (gzip + manifest.json).

Run:  .venv/bin/python tools/pack_data.py DATA_DIR    (a folder of the original <file>.jsonl files)

Each ``<file>.jsonl`` becomes ``<file>.jsonl.gz`` (gzip level 9, no name and mtime 0, so the bytes depend on
the content only) and one manifest entry: the sha256 of the JSONL text and of the gzip file, the number of
problems, and the provenance below. docs/data.md explains each set in prose. The files are copied as they
are; nothing is repaired here (docs/data.md lists the golds a correct answer does not match).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "rlsteer" / "packaged_data"

QWEN = "QwenLM/Qwen2.5-Math@a45202bd16f1:evaluation/data"
# registry name → (file, upstream location and git blob, original dataset, split, licence as stated upstream)
PROVENANCE: dict[str, tuple[str, str, str, str, str]] = {
    "aime24": ("aime24.jsonl", f"{QWEN}/aime24/test.jsonl (blob bb72e176)",
               "AIME 2024, contests I and II (Mathematical Association of America)", "all 30 problems",
               "none stated (MAA competition problems)"),
    "aime25": ("aime25.jsonl", "microsoft/G-KV@d8ac545098be:data/aime25.jsonl (blob 6193308d)",
               "AIME 2025, contests I and II (Mathematical Association of America)", "all 30 problems",
               "none stated (MAA competition problems)"),
    "amc23": ("amc23.jsonl", f"{QWEN}/amc23/test.jsonl (blob 6894ad7c)",
              "AMC 12 2023 (Mathematical Association of America)", "the 40-problem set of math-evaluation-harness",
              "none stated (MAA competition problems)"),
    "math500": ("math500.jsonl",
                "hkust-nlp/simpleRL-reason@cf1c7858bfc1:examples/simplelr_math_eval/data/math500/test.jsonl "
                "(blob 2376b9a1)",
                "MATH-500: the PRM800K test subset (Lightman et al. 2023) of Hendrycks MATH", "test",
                "MIT (openai/prm800k; Hendrycks MATH)"),
    "minerva_math": ("minerva_math.jsonl", f"{QWEN}/minerva_math/test.jsonl (blob 123c5cd3)",
                     "Minerva OCWCourses (Lewkowycz et al. 2022), from MIT OpenCourseWare problem sets", "test",
                     "none stated for the set; MIT OpenCourseWare material is CC BY-NC-SA 4.0"),
    "olympiadbench": ("olympiadbench.jsonl", f"{QWEN}/olympiadbench/test.jsonl (blob ec36280b)",
                      "OlympiadBench (He et al. 2024), the English open-ended competition maths subset "
                      "OE_TO_maths_en_COMP", "test", "Apache-2.0 (dataset card Hothan/OlympiadBench)"),
    "gsm8k": ("gsm8k_test.jsonl", f"{QWEN}/gsm8k/test.jsonl (blob 3e6e62b8)",
              "GSM8K (Cobbe et al. 2021)", "test", "MIT (openai/grade-school-math)"),
    "math_train": ("math_train.jsonl", "tmlr-group/RePO@c2f026fadadb:data/math/train.parquet (blob 9fca09b9)",
                   "Hendrycks MATH (via DigitalLearningGmbH/MATH-lighteval, verl-preprocessed)",
                   "train (7498 of 7500; the 2 rows without a ground truth dropped)", "MIT (Hendrycks MATH)"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gzip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def main(source: Path) -> None:
    OUT.mkdir(exist_ok=True)
    manifest = {}
    for name, (file, upstream, original, split, licence) in PROVENANCE.items():
        text = (source / file).read_bytes()
        problems = sum(1 for line in text.splitlines() if line.strip())
        packed = gzip_bytes(text)
        (OUT / f"{file}.gz").write_bytes(packed)
        manifest[name] = {"file": f"{file}.gz", "sha256": sha256(text), "sha256_gz": sha256(packed),
                          "bytes": len(text), "bytes_gz": len(packed), "problems": problems,
                          "upstream": upstream, "dataset": original, "split": split, "licence": licence}
        print(f"{name:14s} {problems:5d} problems {len(text) / 1e6:5.2f} MB → {len(packed) / 1e6:5.2f} MB")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {OUT}: {sum(m['bytes_gz'] for m in manifest.values()) / 1e6:.2f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: tools/pack_data.py DATA_DIR (a folder with the original JSONL files)")
    main(Path(sys.argv[1]))
