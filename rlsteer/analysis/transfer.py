"""Transfer of vectors between models (docs/semantics.md#transfer; paper Table 1 and Tables 9–15).

Each recipient model R is evaluated without vectors, with its own vector s_R, and with every donor's
vector s_D copied layer for layer (same depth and width required), always with R's prompt template. The
normalised gain of a donor is

    (Acc(R + s_D) − Acc(R)) / (Acc(R + s_R) − Acc(R))

so 1 means the donor's vector helps R as much as R's own, 0 not at all.

Example:
    >>> round(normalised_gain(transfer=30.0, base=12.04, own=36.44), 2)  # Qwen2.5-7B ← Math (Table 9)
    0.74
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlsteer.analysis.output import save_figure, write_records
from rlsteer.config import EvalConfig, TargetSection, load_config, preset_path
from rlsteer.errors import RlsteerError
from rlsteer.evaluate import EvalSession
from rlsteer.io import write_atomically
from rlsteer.steering.vectors import read_vector_file
from rlsteer.templates import DEFAULT_TEMPLATE


class TransferError(RlsteerError):
    pass


@dataclass(frozen=True)
class Party:
    """One model with its own trained vector: ``name`` labels rows and columns."""

    name: str
    model: str
    vectors: Path
    template: str
    d_model: int
    n_layers: int | None  # None when the file does not record it
    protocol: str | None = None  # the recipient's own evaluation protocol (preset or file); None: the common one

    @classmethod
    def parse(cls, spec: str) -> Party:
        """``VECTORS`` (the model recorded in the file) or ``MODEL=VECTORS``, optionally followed by
        ``,template=NAME`` (the recipient's template; default: the one its vectors were trained with) and
        ``,protocol=PRESET`` (its own protocol, e.g. ``paper-32k`` for Qwen2.5-7B beside ``paper`` for
        Qwen2.5-Math-7B).

        Example:
            >>> Party.split("Qwen/Qwen2.5-7B=runs/q/vectors.safetensors,protocol=paper-32k,template=r1")
            ('Qwen/Qwen2.5-7B=runs/q/vectors.safetensors', {'protocol': 'paper-32k', 'template': 'r1'})
        """
        head, options = cls.split(spec)
        model, sep, file = head.rpartition("=")
        path = Path(file)
        _, meta = read_vector_file(path)
        model = model if sep else meta.get("model", "")
        if not model:
            raise TransferError(f"{path} records no model; pass MODEL={path}")
        n_layers = int(meta["n_layers"]) if meta.get("n_layers") else None
        return cls(name=model.rstrip("/").rsplit("/", 1)[-1], model=model, vectors=path,
                   template=options.get("template") or meta.get("template", DEFAULT_TEMPLATE),
                   d_model=int(meta["d_model"]), n_layers=n_layers, protocol=options.get("protocol"))

    @staticmethod
    def split(spec: str) -> tuple[str, dict[str, str]]:
        """``[MODEL=]VECTORS`` and the ``,key=value`` options after it (template, protocol)."""
        head, *rest = spec.split(",")
        options = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if key not in ("template", "protocol") or not sep or not value:
                raise TransferError(f"{spec!r}: after the vectors come ,template=NAME and ,protocol=PRESET only; "
                                    f"got {item!r}")
            options[key] = value
        return head, options


def normalised_gain(*, transfer: float, base: float, own: float) -> float:
    """(transfer − base) / (own − base); NaN when the recipient's own vector does not help."""
    return (transfer - base) / (own - base) if own != base else math.nan


def check_compatible(parties: Sequence[Party]) -> None:
    """Vectors move layer for layer: every model needs the same depth and width (depth where recorded)."""
    depths = {p.n_layers for p in parties if p.n_layers is not None}
    if len({p.d_model for p in parties}) > 1 or len(depths) > 1:
        listing = ", ".join(f"{p.name}: {p.n_layers} layers × d={p.d_model}" for p in parties)
        raise TransferError(f"vectors transfer layer for layer between models of one depth and width; got {listing}")


def transfer_config(cfg: EvalConfig, recipient: Party, donor: Party | None, out: Path,
                    overrides: Sequence[str] = ()) -> EvalConfig:
    """R without vectors (donor None) or R with the donor's vectors, with R's template and, when it has one,
    R's own protocol (``overrides``, e.g. ``protocol.limit=8``, apply to it too)."""
    target = TargetSection(vectors=None if donor is None else str(donor.vectors), prefix="",
                           template=recipient.template)
    folder = out / recipient.name / ("base" if donor is None else f"from-{donor.name}")
    protocol = cfg.protocol
    if recipient.protocol is not None:
        file = Path(recipient.protocol)
        source = file if file.is_file() else preset_path(f"eval/{recipient.protocol}")
        protocol = load_config(EvalConfig, source, [o for o in overrides if o.startswith("protocol.")]).protocol
    return replace(cfg, model=replace(cfg.model, name=recipient.model), target=target, protocol=protocol,
                   out=str(folder))


def run_transfer(cfg: EvalConfig, specs: Sequence[str], *, out: str | Path = "analysis/transfer",
                 overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> Path:
    """``rlsteer analyze transfer``: the donor × recipient matrix, raw and normalised, table and heatmap.

    Each recipient runs with its own template and, where its spec names one, its own protocol (the paper:
    Qwen2.5-7B with a 32K budget, Qwen2.5-Math-7B with 4K; both Llama models with the R1 template).
    """
    parties = [Party.parse(s) for s in specs]
    if len({p.name for p in parties}) != len(parties):
        raise TransferError("two parties share a model name; pass MODEL=VECTORS with distinct model specs")
    check_compatible(parties)
    folder = Path(out)
    rows = []
    for r in parties:
        with EvalSession(transfer_config(cfg, r, None, folder, overrides), log=log) as session:
            for d in (None, *parties):
                result = session.run(transfer_config(cfg, r, d, folder, overrides))[0]
                means = [b["avg"]["mean"] for b in result["benchmarks"].values()]
                stds = [b["avg"]["std"] for b in result["benchmarks"].values()]
                rows.append({"recipient": r.name, "donor": "—" if d is None else d.name,
                             "mean": statistics.fmean(means), "std": statistics.fmean(stds),
                             **{f"avg[{k}]": b["avg"]["mean"] for k, b in result["benchmarks"].items()}})
    acc = {(row["recipient"], row["donor"]): row["mean"] for row in rows}
    for row in rows:
        if row["donor"] != "—":
            row["normalised_gain"] = normalised_gain(transfer=row["mean"], base=acc[row["recipient"], "—"],
                                                     own=acc[row["recipient"], row["recipient"]])
    write_records(folder / "transfer", rows)
    table = transfer_tables(rows, [p.name for p in parties])
    write_atomically(folder / "transfer.md", table)
    figures = plot_transfer(rows, [p.name for p in parties], folder)
    log(table)
    log(f"→ {folder} ({', '.join(p.name for p in figures)})")
    return folder


def transfer_tables(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """Raw accuracy (recipient rows, donor columns; ×100, mean ± std) and the normalised gain."""
    cell = {(r["recipient"], r["donor"]): r for r in rows}
    head = "| recipient \\ donor | none | " + " | ".join(names) + " |"
    rule = "|---|---:|" + "---:|" * len(names)
    raw = [head, rule] + [f"| {r} | {100 * cell[r, '—']['mean']:.1f} ± {100 * cell[r, '—']['std']:.1f} | " + " | ".join(
        f"{100 * cell[r, d]['mean']:.1f} ± {100 * cell[r, d]['std']:.1f}" for d in names) + " |" for r in names]
    gain = ["| recipient \\ donor | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    gain += [f"| {r} | " + " | ".join(f"{cell[r, d]['normalised_gain']:.2f}" for d in names) + " |" for r in names]
    return "Accuracy (avg@n, %)\n\n" + "\n".join(raw) + "\n\nNormalised gain\n\n" + "\n".join(gain) + "\n"


def plot_transfer(rows: Sequence[dict[str, Any]], names: Sequence[str], out: Path) -> list[Path]:
    """Heatmap of the normalised gain, recipients as rows, donors as columns."""
    from rlsteer.figures import colormap, subplots

    cell = {(r["recipient"], r["donor"]): r.get("normalised_gain", math.nan) for r in rows}
    grid = [[cell[r, d] for d in names] for r in names]
    fig, ax = subplots(figsize=(1.3 * len(names) + 2.5, 1.1 * len(names) + 1.5))
    import numpy as np

    cmap = colormap("viridis").with_extremes(bad="lightgrey")  # n/a: the own vector did not beat the base
    values = np.ma.masked_invalid(np.array(grid, dtype=float))
    image = ax.imshow(values, cmap=cmap, vmin=min(0.0, float(values.min()) if values.count() else 0.0), vmax=1.0)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            nan = value != value
            ax.text(j, i, "n/a" if nan else f"{value:.2f}", ha="center", va="center",
                    color="black" if nan or value >= 0.6 else "white")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("donor vector")
    ax.set_ylabel("recipient model")
    ax.set_title("normalised gain (1 = as good as the recipient's own vector)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save_figure(fig, out / "transfer")
