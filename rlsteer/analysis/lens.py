"""Logit lens of steering vectors (docs/semantics.md#lens; paper Table 8).

For a vector s and the unembedding W_U [V, d] (the lm_head rows; no final norm unless asked):

* dot_v = W_U[v] · s
* cos_v = (W_U[v] / ‖W_U[v]‖) · (s / ‖s‖)

tokens ranked by cosine, shown with ``tokenizer.decode([v])`` (so "To" and " To" are separate). Also the
vectors' norms, their pairwise cosines, singular values and stable rank.

Example:
    >>> import torch
    >>> cos, dot = lens_scores(torch.tensor([1.0, 0.0]), torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    >>> [round(x, 3) for x in cos.tolist()], dot.tolist()
    ([1.0, 0.0, 0.707], [2.0, 0.0, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.analysis.inputs import load_with_vectors
from rlsteer.analysis.output import analysis_dir, save_figure, write_records
from rlsteer.architectures import architecture_of
from rlsteer.io import write_atomically
from rlsteer.steering.vectors import SteeringVectors


def lens_scores(vector: torch.Tensor, unembed: torch.Tensor,
                norm: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos [V], dot [V]) of ``vector`` [d] against every row of ``unembed`` [V, d], in fp32."""
    s = vector.detach().float()
    if norm is not None:
        s = norm(s.view(1, 1, -1)).view(-1).float()
    w = unembed.detach().float()
    dot = w @ s  # [V]
    cos = dot / (w.norm(dim=1) * s.norm()).clamp_min(1e-12)  # [V]
    return cos, dot


def logit_lens(vectors: SteeringVectors, model: nn.Module, tokenizer: Any, *, k: int = 10,
               final_norm: bool = False) -> list[dict[str, Any]]:
    """Top-``k`` tokens by cosine for every entry: one record per (entry, rank) with cos and dot."""
    arch = architecture_of(model)
    unembed = arch.lm_head().weight  # [V, d]
    norm = arch.final_norm() if final_norm else None
    records = []
    with torch.no_grad():
        for entry, s in vectors.vectors().items():
            cos, dot = lens_scores(s.to(unembed.device), unembed, norm)
            top = torch.topk(cos, k)
            for rank, (c, v) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
                records.append({"entry": entry.name, "site": entry.site, "layer": entry.layer, "head": entry.head,
                                "rank": rank, "token_id": v, "token": tokenizer.decode([v]), "cos": c,
                                "dot": float(dot[v]), "norm": float(s.norm())})
    return records


def vector_stats(vectors: SteeringVectors) -> dict[str, Any]:
    """Norms, pairwise cosines, singular values and stable rank (‖S‖_F² / σ_max²) of the stacked vectors."""
    entries = vectors.entries
    stack = torch.stack([vectors.vector(e).detach().float().cpu() for e in entries])  # [n, d]
    unit = stack / stack.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sv = torch.linalg.svdvals(stack)
    return {"entries": [e.name for e in entries], "norms": stack.norm(dim=1).tolist(),
            "cosines": (unit @ unit.T).tolist(), "singular_values": sv.tolist(),
            "stable_rank": float((sv**2).sum() / sv[0] ** 2) if sv[0] > 0 else 0.0}


def lens_table(records: list[dict[str, Any]]) -> str:
    """Markdown in the paper's Table 8 format: per entry, rank, token, cosine and dot product."""
    lines = []
    for name in dict.fromkeys(r["entry"] for r in records):
        rows = [r for r in records if r["entry"] == name]
        lines += [f"**{name}** (‖s‖ = {rows[0]['norm']:.3g})", "", "| # | token | cos | dot |", "|---:|---|---:|---:|"]
        lines += [f"| {r['rank']} | `{r['token']!r}` | {r['cos']:.3f} | {r['dot']:.2f} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def plot_lens(vectors: SteeringVectors, model: nn.Module, stats: dict[str, Any], out: Path, *,
              final_norm: bool = False) -> list[Path]:
    """Figures: cosine histograms over the vocabulary per entry; norms; pairwise cosines."""
    from rlsteer.figures import subplots

    arch = architecture_of(model)
    unembed, norm = arch.lm_head().weight, arch.final_norm() if final_norm else None
    entries = vectors.entries
    cols = min(6, len(entries))
    rows = math.ceil(len(entries) / cols)
    size = (max(5.5, 2.2 * cols), max(3.6, 1.8 * rows))
    fig, axes = subplots(rows, cols, figsize=size, squeeze=False, sharex=True)
    with torch.no_grad():
        for ax, entry in zip(axes.flat, entries, strict=False):
            cos, _ = lens_scores(vectors.vector(entry).to(unembed.device), unembed, norm)
            ax.hist(cos.cpu().numpy(), bins=80, color="tab:blue")
            ax.set_yscale("log")
            ax.set_title(entry.name, fontsize=8)
            ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(entries):]:
        ax.axis("off")
    fig.suptitle("cosine of each vector with every unembedding row" + (" (after the final norm)" if final_norm else ""))
    fig.supxlabel("cos(s, W_U[v])")
    fig.supylabel("tokens")
    paths = save_figure(fig, out / "lens_histograms")

    fig, (a1, a2) = subplots(1, 2, figsize=(11, 4))
    labels = stats["entries"]
    a1.plot(range(len(labels)), stats["norms"], marker="o")
    a1.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    a1.set_ylabel("‖s‖")
    a1.set_title("vector norms")
    image = a2.imshow(stats["cosines"], cmap="RdBu_r", vmin=-1, vmax=1)
    a2.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    a2.set_yticks(range(len(labels)), labels, fontsize=6)
    a2.set_title(f"pairwise cosine (stable rank {stats['stable_rank']:.2f})")
    fig.colorbar(image, ax=a2, shrink=0.8)
    return paths + save_figure(fig, out / "norms_and_cosines")


def run_lens(vectors_path: str | Path, *, model_spec: str | None = None, k: int = 10, final_norm: bool = False,
             out: str | Path | None = None, device: str = "cpu", log: Callable[[str], None] = print) -> Path:
    """``rlsteer analyze lens``: records, a Table-8 markdown, stats and figures into ``analysis/lens``."""
    import json

    path = Path(vectors_path)
    model, tok, vectors, _ = load_with_vectors(path, model_spec, device)
    folder = analysis_dir(path, "lens", out)
    records = logit_lens(vectors, model, tok, k=k, final_norm=final_norm)
    stats = vector_stats(vectors)
    write_records(folder / "lens", records)
    write_atomically(folder / "lens.md", lens_table(records))
    write_atomically(folder / "stats.json", json.dumps(stats, indent=1))
    figures = plot_lens(vectors, model, stats, folder, final_norm=final_norm)
    last = max(vectors.entries, key=lambda e: (e.layer, e.site))
    log(lens_table([r for r in records if r["entry"] == last.name]))
    log(f"lens of {len(vectors.entries)} vector(s) → {folder} ({', '.join(p.name for p in figures)})")
    return folder


__all__ = ["lens_scores", "lens_table", "logit_lens", "plot_lens", "run_lens", "vector_stats"]
