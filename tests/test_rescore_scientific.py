"""bench/rescore_scientific.py: the same saved completions scored as the authors do and with normalize_scientific."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("rescore_scientific", ROOT / "bench" / "rescore_scientific.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_latex_answers_to_e_notation_golds_change(tmp_path):
    (tmp_path / "protocol.json").write_text(json.dumps(
        {"config": {"target": {"template": "qwen-math"}, "protocol": {"extraction": "boxed"}}}))
    (tmp_path / "samples").mkdir()
    rows = [("p0", "4.5e33", r"So \boxed{4.5 \times 10^{33}}"),  # right, in LaTeX: wrong as written, right normalized
            ("p1", "4.5e33", r"\boxed{4.5e33}"),  # the gold's own string: right either way
            ("p2", "3e6", r"\boxed{7}"),  # wrong either way
            ("p3", "12", r"\boxed{12}")]  # no e-notation: untouched
    lines = [json.dumps({"problem_id": pid, "gold": gold, "completion": text, "status": "scored", "sample": 0,
                         "problem_index": i}) for i, (pid, gold, text) in enumerate(rows)]
    (tmp_path / "samples" / "minerva_math.seed0.jsonl").write_text("\n".join(lines) + "\n")
    result = load_script().rescore(tmp_path, "minerva_math")
    assert result["e_notation_golds"] == 3 and result["samples"] == 4
    assert result["accuracy_as_written"] == 0.5 and result["accuracy_normalized"] == 0.75
    assert [(c["problem_id"], c["as_written"], c["normalized"]) for c in result["changed"]] == [("p0", 0.0, 1.0)]
