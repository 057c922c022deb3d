"""Math problems: one registry of evaluation and training sets, local files, and synthetic tasks.

A dataset spec is one of

* a registry name (:data:`REGISTRY`): read from ``<data_dir>/<file>`` when that file exists (``data_dir``
  argument, else ``$RLSTEER_DATA_DIR``), else from the copy packaged with rlsteer (the six paper benchmarks,
  GSM8K test and MATH train; ``rlsteer/packaged_data``, checked against its manifest's sha256), else
  downloaded by HF id with the field mapping of docs/semantics.md#evaluation (needs ``pip install 'rlsteer[hub]'``);
* ``hub:NAME``: registry name NAME downloaded from the hub even where a local or packaged copy exists;
* a local ``.jsonl`` / ``.parquet`` file, or a folder of them, with ``problem`` and ``answer`` fields
  (``id`` optional; ``question`` is accepted for ``problem``), or other columns named by ``problem_field``
  and ``answer_field`` (None: no gold answer, for rewards that need none);
* ``package.module:function`` or ``path/to/file.py:function``: a function of no arguments returning the
  rows (dicts), read like a file's (for tasks generated in code, such as :mod:`rlsteer.examples.json_reply`);
* ``synthetic-arithmetic[:key=value,…]``: arithmetic word problems with integer answers, deterministic by
  seed (keys: n, operands, digits, ops, seed, style, and split=train|test, holdout, distinct for training and
  held-out sets that share no problem) — for CPU demos and tests.

Rows without a problem or an answer are errors reported with file and line, never dropped silently. A row's
other columns (besides ``id`` and ``source``) are kept in :attr:`Problem.meta`; reward functions receive them
as keyword lists.

Longer than most modules because every way a dataset spec resolves lives here, so that training,
evaluation and the analyses read problems the same way: the registry, packaged files, local files,
dataset functions, the hub and synthetic tasks.

Example:
    >>> problems = load_problems("synthetic-arithmetic:n=3,digits=1,seed=4")
    >>> len(problems), problems[0].source
    (3, 'synthetic-arithmetic')
    >>> len(load_problems("aime24", data_dir="/nonexistent"))  # the packaged copy, offline
    30
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from rlsteer.errors import RlsteerError, decode_utf8, first_line
from rlsteer.hub import looks_like_hub_id
from rlsteer.usercode import UserCodeError, load_function, looks_like_function


class DataError(RlsteerError):
    pass


@dataclass(frozen=True)
class Problem:
    """One problem: ``answer`` is the gold final answer, the text that goes inside ``\\boxed{}`` (None for
    datasets read without one); ``meta`` holds the row's other columns."""

    id: str
    problem: str
    answer: str | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: where a named set lives locally and on the hub, and how its fields map."""

    name: str
    file: str
    hf_id: str
    split: str
    configs: tuple[str | None, ...] = (None,)
    problem_field: str = "problem"
    answer_field: str = "answer"
    answer_from: str = "field"  # "field" | "last_boxed_of_solution" | "gsm8k"
    kind: str = "eval"


REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("aime24", "aime24.jsonl", "Maxwell-Jia/AIME_2024", "train", problem_field="Problem",
                answer_field="Answer"),
    DatasetSpec("aime25", "aime25.jsonl", "opencompass/AIME2025", "test", configs=("AIME2025-I", "AIME2025-II"),
                problem_field="question"),
    DatasetSpec("amc23", "amc23.jsonl", "knoveleng/AMC-23", "train"),
    DatasetSpec("math500", "math500.jsonl", "HuggingFaceH4/MATH-500", "test"),
    DatasetSpec("minerva_math", "minerva_math.jsonl", "knoveleng/Minerva-Math", "train",
                answer_from="last_boxed_of_solution"),
    DatasetSpec("olympiadbench", "olympiadbench.jsonl", "knoveleng/OlympiadBench", "train",
                problem_field="question"),
    DatasetSpec("gsm8k", "gsm8k_test.jsonl", "openai/gsm8k", "test", configs=("main",), problem_field="question",
                answer_from="gsm8k"),
    DatasetSpec("deepscaler", "deepscaler_train.jsonl", "agentica-org/DeepScaleR-Preview-Dataset", "train",
                kind="train"),
    DatasetSpec("open_s1", "open_s1_train.jsonl", "knoveleng/open-s1", "train", kind="train"),
    DatasetSpec("math_train", "math_train.jsonl", "DigitalLearningGmbH/MATH-lighteval", "train",
                answer_from="last_boxed_of_solution", kind="train"),
    DatasetSpec("gsm8k_train", "gsm8k_train.jsonl", "openai/gsm8k", "train", configs=("main",),
                problem_field="question", answer_from="gsm8k", kind="train"),
)}

EVAL_SETS = tuple(n for n, s in REGISTRY.items() if s.kind == "eval")
TRAIN_SETS = tuple(n for n, s in REGISTRY.items() if s.kind == "train")


def load_problems(spec: str, *, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None,
                  shuffle_seed: int | None = None, problem_field: str = "problem",
                  answer_field: str | None = "answer") -> list[Problem]:
    """Load a dataset spec (see the module docstring); optionally shuffled by seed, then cut to ``limit``.

    ``problem_field`` and ``answer_field`` name the columns of files and functions (registry and synthetic
    sets have their own).
    """
    fields = (problem_field, answer_field)
    if fields != ("problem", "answer") and (spec.startswith(("synthetic-arithmetic", "hub:")) or spec in REGISTRY):
        raise DataError(f"problem_field/answer_field name the columns of dataset files and functions; {spec!r} has "
                        "its own (problem, answer): drop them, or give a file")
    if spec.startswith("synthetic-arithmetic"):
        problems = synthetic_arithmetic(**_synthetic_options(spec))
    elif spec.startswith("hub:"):
        name = spec.removeprefix("hub:")
        if name not in REGISTRY:
            raise DataError(f"unknown dataset {name!r} in {spec!r}; hub: takes a registry name "
                            f"({', '.join(REGISTRY)}); give an HF dataset id owner/name without hub:")
        problems = _from_hub(REGISTRY[name])
    elif spec in REGISTRY:
        problems = _load_registered(REGISTRY[spec], data_dir)
    elif Path(spec).expanduser().exists():
        problems = read_problems(Path(spec).expanduser(), fields=fields)
    elif looks_like_function(spec):
        problems = _to_problems(_function_rows(spec), spec, spec.rpartition(":")[2], fields)
    elif looks_like_hub_id(spec):
        problems = _from_hub(DatasetSpec(spec, "", spec, "train"))
    else:
        raise DataError(f"unknown dataset {spec!r}: not a registry name ({', '.join(REGISTRY)}), an existing "
                        "file or folder, synthetic-arithmetic, package.module:function, or an HF dataset id "
                        "owner/name")
    if shuffle_seed is not None:
        problems = list(problems)
        random.Random(shuffle_seed).shuffle(problems)
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        if limit is not None and limit < 1:
            raise DataError(f"dataset {spec!r} has no problems after limit={limit}; use a limit of at least 1")
        raise DataError(f"dataset {spec!r} has no problems; give a file with one JSON object per line with "
                        "problem and answer fields, or another dataset")
    return problems


def _function_rows(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows a dataset function returns, numbered from 1 like a file's lines."""
    try:
        rows = load_function(spec, what="dataset function").call()
        rows = list(rows)
    except UserCodeError as err:
        raise DataError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - the user's function failed: one line with its cause
        raise DataError(f"dataset function {spec!r} raised {type(err).__name__}: {first_line(err)}") from None
    for line_no, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"dataset function {spec!r}: row {line_no} is a {type(row).__name__}, not a dict of "
                            "columns")
        yield line_no, row


def _load_registered(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None) -> list[Problem]:
    local = local_file(spec.name, data_dir)
    if local is not None:
        return read_problems(local, source=spec.name)
    if spec.name in packaged_manifest():
        return _to_problems(_jsonl_lines(packaged_text(spec.name), f"packaged {spec.file}"),
                            f"packaged {spec.file}", spec.name)
    return _from_hub(spec)


def local_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The file a registry name is read from when ``data_dir`` (else ``$RLSTEER_DATA_DIR``) holds it."""
    root = data_dir if data_dir is not None else os.environ.get("RLSTEER_DATA_DIR")
    path = Path(root).expanduser() / REGISTRY[name].file if root is not None and name in REGISTRY else None
    return path if path is not None and path.is_file() else None


def data_origin(spec: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Where :func:`load_problems` reads ``spec`` from, for the record: a file and its sha256, the packaged
    copy (the sha256 of its JSONL text, the same as the file it was packed from), or a hub id.

    Example:
        >>> data_origin("math500", data_dir="/nonexistent")["packaged"]
        'math500.jsonl.gz'
    """
    name = spec.removeprefix("hub:")
    if name in REGISTRY and not spec.startswith("hub:"):
        local = local_file(name, data_dir)
        if local is not None:
            return {"file": str(local.resolve()), "sha256": _file_sha256(local)}
        if name in packaged_manifest():
            entry = packaged_manifest()[name]
            return {"packaged": entry["file"], "sha256": entry["sha256"], "upstream": entry["upstream"]}
    if name in REGISTRY:
        return {"hub": REGISTRY[name].hf_id, "split": REGISTRY[name].split}
    path = Path(spec).expanduser()
    if path.is_file():
        return {"file": str(path.resolve()), "sha256": _file_sha256(path)}
    if not path.exists() and looks_like_function(spec):
        return load_function(spec, what="dataset function").record()
    return {"source": spec}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- packaged


PACKAGED = "packaged_data"


@cache
def packaged_manifest() -> dict[str, dict[str, Any]]:
    """Registry name → manifest entry (file, sha256 of the JSONL text, problems, upstream, licence) of the sets
    shipped inside the package; docs/data.md tells where each comes from."""
    manifest = resources.files("rlsteer") / PACKAGED / "manifest.json"
    if not manifest.is_file():
        return {}
    entries: dict[str, dict[str, Any]] = json.loads(manifest.read_text(encoding="utf-8"))
    return entries


@cache
def packaged_text(name: str) -> str:
    """The JSONL text of a packaged set, decompressed and checked against the manifest's sha256."""
    entry = packaged_manifest()[name]
    data = gzip.decompress((resources.files("rlsteer") / PACKAGED / entry["file"]).read_bytes())
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DataError(f"the packaged {entry['file']} does not match its manifest's sha256 (a damaged "
                        "install); reinstall rlsteer, or set RLSTEER_DATA_DIR to a folder with the JSONL files")
    return data.decode("utf-8")


def read_problems(path: Path, *, source: str | None = None,
                  fields: tuple[str, str | None] = ("problem", "answer")) -> list[Problem]:
    """Problems from a JSONL or Parquet file, or every such file of a folder (sorted by name); ``fields`` are
    the problem and answer columns (answer None: no gold)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
        if not files:
            raise DataError(f"folder {path} holds no .jsonl or .parquet files")
        return [p for f in files for p in read_problems(f, source=source, fields=fields)]
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")
    return _to_problems(rows, path, source or path.stem, fields)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from _jsonl_lines(decode_utf8(path.read_bytes(), path), path)  # not UTF-8: one line, with the offset


def _jsonl_lines(lines: Iterable[str] | str, origin: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, line in enumerate(lines.split("\n") if isinstance(lines, str) else lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{origin}:{line_no}: not valid JSON ({err.msg}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise DataError(f"{origin}:{line_no}: expected a JSON object per line")
        yield line_no, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow (or use JSONL)") from None
    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _to_problems(rows: Iterable[tuple[int, dict[str, Any]]], origin: Path | str, source: str,
                 fields: tuple[str, str | None] = ("problem", "answer")) -> list[Problem]:
    problem_field, answer_field = fields
    taken = {"id", "source", problem_field, *([answer_field] if answer_field is not None else [])}
    if problem_field == "problem":
        taken.add("question")  # accepted for problem
    problems, bad = [], []
    for line_no, row in rows:
        problem = row.get(problem_field, row.get("question") if problem_field == "problem" else None)
        answer = _answer_text(row.get(answer_field)) if answer_field is not None else None
        needed = [(problem_field, problem), *([(answer_field, answer)] if answer_field is not None else [])]
        missing = [name for name, value in needed if value is None or not str(value).strip()]
        if missing:
            bad.append(f"{origin}:{line_no} (no {' and no '.join(missing)})")
            continue
        meta = {k: v for k, v in row.items() if k not in taken}
        problems.append(Problem(str(row.get("id", line_no - 1)), str(problem), answer,
                                str(row.get("source", source)), meta))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        what = "a problem" + (f" ({problem_field!r})" if problem_field != "problem" else "")
        if answer_field is not None:
            what += " or an answer" + (f" ({answer_field!r})" if answer_field != "answer" else "")
        hint = ""
        if answer_field is not None and all(b.endswith(f"(no {answer_field})") for b in bad):
            hint = (", or set answer_field to null (data.answer_field, protocol.answer_field) for a reward function "
                    "that needs no gold answer")
        raise DataError(f"{len(bad)} rows without {what}: {shown}; fix or remove them{hint}")
    return problems


def _answer_text(answer: Any) -> str | None:
    """Answers as strings: ``27.0`` → ``"27"``; a boxed answer is unboxed (docs/semantics.md#evaluation)."""
    from rlsteer.rewards import last_boxed

    if answer is None:
        return None
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    text = str(answer)
    if "boxed" in text:
        text = last_boxed(text) or text
    return text


# ------------------------------------------------------------------------------------------------ hub



def _from_hub(spec: DatasetSpec) -> list[Problem]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec.name!r} is not in the data directory and downloading it needs the datasets "
                        "library: pip install 'rlsteer[hub]', or point RLSTEER_DATA_DIR / --data at local "
                        "files") from None
    rows: list[dict[str, Any]] = []
    try:
        for config in spec.configs:
            rows += list(datasets.load_dataset(spec.hf_id, config, split=spec.split))
    except Exception as err:  # network, auth, missing split: one line with the cause
        raise DataError(f"cannot load {spec.hf_id} from the hub: {first_line(err)}") from None
    mapped = []
    for i, row in enumerate(rows):
        mapped.append((i + 1, {"id": str(row.get("unique_id", row.get("id", i))),
                               "problem": row.get(spec.problem_field), "answer": _hub_answer(spec, row)}))
    return _to_problems(mapped, spec.hf_id, spec.name)


def _hub_answer(spec: DatasetSpec, row: dict[str, Any]) -> Any:
    from rlsteer.rewards import last_boxed

    if spec.answer_from == "last_boxed_of_solution":
        return last_boxed(str(row.get("solution", "")))
    if spec.answer_from == "gsm8k":
        return str(row.get("answer", "")).split("####")[-1].strip().replace(",", "")
    answer = row.get(spec.answer_field)
    if isinstance(answer, list):  # OlympiadBench keeps a list of final answers
        answer = answer[0] if answer else None
    return answer


# ------------------------------------------------------------------------------------------ synthetic


_WORDS = {
    "+": "{name} has {a} {thing}s and gets {b} more. How many {thing}s does {name} have now?",
    "-": "{name} has {a} {thing}s and gives away {b}. How many {thing}s does {name} have left?",
    "*": "{name} buys {a} boxes with {b} {thing}s in each box. How many {thing}s does {name} buy?",
}
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")
_THINGS = ("apple", "marble", "pencil", "sticker", "coin", "book")


def synthetic_arithmetic(n: int = 256, operands: int = 2, digits: int = 2, ops: str = "+", seed: int = 0,
                         style: str = "word", split: str = "all", holdout: float = 0.5,
                         distinct: bool = False) -> list[Problem]:
    """Arithmetic problems with integer answers.

    Args:
        n: number of problems.
        operands: numbers per problem (word style supports 2; expression style any ≥ 2).
        digits: digits per number (difficulty).
        ops: operators to draw from, a subset of "+-*".
        seed: the same seed gives the same problems.
        style: "word" (a one-sentence story) or "expression" ("What is 12 + 7 - 3?").
        split: "all", or "train" / "test": only problems whose arithmetic (operands and operators, in any
            order when the only operator is + or *) falls in the training or the held-out part. The parts
            are fixed by a hash of the arithmetic, independent of seed, n and style, so a "test" set never
            shares a problem (operands in either order) with any "train" set: held-out problems are held out.
        holdout: the share of all possible problems in the "test" part.
        distinct: no arithmetic twice (operands in the same order; an error when the space has fewer than n).

    Example:
        >>> train = synthetic_arithmetic(200, digits=1, style="expression", split="train")
        >>> test = synthetic_arithmetic(20, digits=1, style="expression", split="test", distinct=True, seed=1)
        >>> {p.problem for p in train} & {p.problem for p in test}
        set()
    """
    if n < 1 or operands < 2 or digits < 1 or not ops or set(ops) - set("+-*"):
        raise DataError("synthetic-arithmetic needs n >= 1, operands >= 2, digits >= 1 and ops drawn from '+-*'")
    if style == "word" and operands != 2:
        raise DataError("style=word supports operands=2; use style=expression for more operands")
    if style not in ("word", "expression"):
        raise DataError(f"unknown synthetic style {style!r}; use word or expression")
    if split not in ("all", "train", "test") or not 0 < holdout < 1:
        raise DataError(f"synthetic split={split!r}, holdout={holdout!r}: use split=all, train or test and a "
                        "holdout share between 0 and 1, e.g. split=test,holdout=0.5")
    rng = random.Random(seed)
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 1000 * n + 10_000:
            raise DataError(f"synthetic-arithmetic: found only {len(problems)} {'distinct ' * distinct}problems in "
                            f"split={split} of this space (digits={digits}, operands={operands}, ops={ops}); "
                            f"lower n to {len(problems)} or widen the space")
        nums = [rng.randint(low, high) for _ in range(operands)]
        chosen = [rng.choice(ops) for _ in range(operands - 1)]
        if style == "word" and chosen[0] == "-":
            nums = sorted(nums, reverse=True)
        ordered = " ".join(map(str, nums)) + " " + "".join(chosen)
        if split != "all" and (_held_out_share(_arithmetic_key(nums, chosen)) < holdout) != (split == "test"):
            continue
        if distinct and ordered in seen:
            continue
        seen.add(ordered)
        i = len(problems)
        if style == "word":
            a, b = nums
            text = _WORDS[chosen[0]].format(name=rng.choice(_NAMES), thing=rng.choice(_THINGS), a=a, b=b)
            value = eval(f"{a}{chosen[0]}{b}")  # noqa: S307 - digits and operators we generated
        else:
            expr = " ".join(str(x) for pair in zip(nums, [*chosen, ""], strict=True) for x in pair).strip()
            text = f"What is {expr}?"
            value = eval(expr)  # noqa: S307
        problems.append(Problem(f"synthetic-{seed}-{i}", text, str(value), "synthetic-arithmetic",
                                {"ops": "".join(chosen), "digits": digits}))
    return problems


def _arithmetic_key(nums: list[int], chosen: list[str]) -> str:
    """The arithmetic of a problem, with the operands sorted when order cannot matter (only + or only *)."""
    if len(set(chosen)) == 1 and chosen[0] in "+*":
        nums = sorted(nums)
    return " ".join(str(x) for pair in zip(nums, [*chosen, ""], strict=True) for x in pair).strip()


def _held_out_share(key: str) -> float:
    """A fixed pseudo-random number in [0, 1) per arithmetic key (the split does not depend on any seed)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _synthetic_options(spec: str) -> dict[str, Any]:
    _, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("n", "operands", "digits", "ops", "seed", "style", "split", "holdout", "distinct"):
            raise DataError(f"bad synthetic option {item!r}; use n, operands, digits, ops, seed, style, split, "
                            "holdout or distinct, e.g. synthetic-arithmetic:n=200,digits=2,ops=+-")
        try:
            options[key] = (value if key in ("ops", "style", "split") else float(value) if key == "holdout"
                            else int(value))
        except ValueError:
            kind = "a number" if key == "holdout" else "an integer"
            raise DataError(f"synthetic option {key}={value!r} needs {kind}, e.g. "
                            "synthetic-arithmetic:n=200") from None
    return options


def split_holdout(problems: Sequence[Problem], count: int, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """``count`` problems drawn by ``seed`` and kept out (a validation split), and the rest in their order.

    Example:
        >>> train, held = split_holdout(synthetic_arithmetic(n=10), 3)
        >>> len(train), len(held), set(p.id for p in train) & set(p.id for p in held)
        (7, 3, set())
    """
    if not 0 <= count < len(problems):
        raise DataError(f"data.holdout={count} must leave training problems: the dataset has {len(problems)}")
    chosen = set(random.Random(seed * 7_919 + 17).sample(range(len(problems)), count))
    return ([p for i, p in enumerate(problems) if i not in chosen], [p for i, p in enumerate(problems) if i in chosen])


def problems_jsonl(problems: Sequence[Problem]) -> str:
    """Problems as JSONL lines ``{"id", "problem", "answer"}`` (what :func:`read_problems` reads back)."""
    return "".join(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}, ensure_ascii=False) + "\n"
                   for p in problems)

