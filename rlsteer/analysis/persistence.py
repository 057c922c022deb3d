"""Persistence of single-layer vectors through later layers (docs/semantics.md#persistence; paper Fig. 2, 3, App. D).

Input: stacked single-layer vectors S = [s_i] (``resid_post`` entries, one per injection layer i, each from
its own single-layer run; :mod:`rlsteer.analysis.sweep` builds the file). For every prompt and injection
layer i the text is one completion sampled from the s_i-steered model (``text="steered"``, the authors'
choice) or one completion of the base model shared by all i (``text="base"``). With Z_ℓ the output of
block ℓ (before the final norm) and

    ΔF_{ℓ,i}[t] = Z_ℓ(x; s_i)[t] − Z_ℓ(x)[t]        (ℓ ≥ i; zero below i, and s_i itself at ℓ = i)

the metrics, token-weighted over all tokens of all sequences, are

* Diff-Vector(i, ℓ) = mean_t cos(ΔF_{ℓ,i}[t], s_ℓ);
* Diff-Diff(i, ℓ) = mean_t cos(ΔF_{ℓ,i}[t], m) with m the mean of ΔF_{ℓ,i} over the same sequence's
  tokens (default, the authors' code) or over the whole dataset (``reference="dataset"``, the paper's text);
* the mean shift m_{ℓ,i} (fp32 sums) and the matrix C[i, j] = cos(m_{L−1,i}, m_{L−1,j}) (Fig. 3).

Positions: the sequence is prompt + completion without its last token, and its last position is dropped
once more, as in the reference. Cost per prompt: with ``text="steered"`` two passes per injection layer
(the text differs per i), with ``text="base"`` one base pass plus one pass per injection layer; every pass
captures all later blocks at once, and only [d]-sized sums per (i, ℓ) are kept.

Example:
    >>> import torch
    >>> round(cosine_sum(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 1.0])), 4)  # 2 × cos 45°
    1.4142
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from rlsteer.analysis.inputs import analysis_prompts, load_with_vectors
from rlsteer.analysis.output import analysis_dir, save_figure, write_records
from rlsteer.architectures import architecture_of
from rlsteer.errors import RlsteerError
from rlsteer.io import write_atomically
from rlsteer.rollout import HFBackend, Request, SamplingParams
from rlsteer.steering.handles import first
from rlsteer.steering.hooks import steer
from rlsteer.steering.sites import Entry
from rlsteer.steering.vectors import SteeringVectors


@dataclass(frozen=True)
class PersistenceConfig:
    """Options of :func:`persistence`.

    Attributes:
        text: ``steered`` (one completion per prompt from each s_i-steered model, the reference) or ``base``.
        reference: Diff-Diff against the ``sequence`` mean (the reference's code) or the ``dataset`` mean.
        max_new_tokens, temperature, seed: how completions are sampled.
        layers: inject only at these layers (default: every ``resid_post`` entry); Diff-Vector still compares
            with every later entry the file has, so an all-layer vector can be probed at a few layers.
    """

    text: Literal["steered", "base"] = "steered"
    reference: Literal["sequence", "dataset"] = "sequence"
    max_new_tokens: int = 512
    temperature: float = 1.0
    seed: int = 0
    layers: tuple[int, ...] | None = None


def cosine_sum(units: torch.Tensor, direction: torch.Tensor) -> float:
    """Σ_t cos(x_t, direction) given units = Σ_t x_t / ‖x_t‖ ([d]) or the unit rows themselves ([T, d])."""
    return float((units @ direction.to(units.dtype)).sum() / direction.norm().clamp_min(1e-30))


@contextmanager
def capture_blocks(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the output hidden state [B, T, d] of each block in ``layers`` during the forward passes inside.

    Register it inside any ``steer`` block so that it sees the steered outputs.
    """
    arch = architecture_of(model)
    seen: dict[int, torch.Tensor] = {}

    def hook(i: int) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: Any) -> None:
            seen[i] = first(output).detach()
        return record

    handles = [arch.layer(i).register_forward_hook(hook(i)) for i in layers]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class _Sums:
    """Streaming accumulators per (injection layer i, block ℓ)."""

    def __init__(self, injections: Sequence[int], n_layers: int, d: int) -> None:
        self.dv: dict[tuple[int, int], float] = {}
        self.dd: dict[tuple[int, int], float] = {}
        self.units = {(i, ell): torch.zeros(d, dtype=torch.float64) for i in injections for ell in range(i, n_layers)}
        self.shift = {k: torch.zeros(d, dtype=torch.float64) for k in self.units}
        self.tokens = {i: 0 for i in injections}

    def add(self, i: int, ell: int, delta: torch.Tensor, s_ell: torch.Tensor | None) -> None:
        """delta: ΔF_{ℓ,i} [T, d] of one sequence."""
        d = delta.double()
        unit = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # [T, d]
        if s_ell is not None:
            self.dv[i, ell] = self.dv.get((i, ell), 0.0) + cosine_sum(unit, s_ell)
        self.dd[i, ell] = self.dd.get((i, ell), 0.0) + cosine_sum(unit, d.mean(dim=0))
        self.units[i, ell] += unit.sum(dim=0)
        self.shift[i, ell] += d.sum(dim=0)


def persistence(model: nn.Module, tokenizer: Any, vectors: SteeringVectors, prompts: Sequence[Any],
                cfg: PersistenceConfig = PersistenceConfig(), *, progress: bool | None = None) -> dict[str, Any]:
    """Diff-Diff, Diff-Vector, mean shifts and the final-block shift matrix for every injection layer.

    Returns a dict with ``records`` (one per (i, ℓ ≥ i)), ``shift_cosines`` [I, I] (Fig. 3), ``injections``
    and ``passes`` (forward passes run, for the cost bound).
    """
    arch = architecture_of(model)
    stack = {e.layer: v.detach().float() for e, v in vectors.vectors().items()
             if e.site == "resid_post" and e.head is None}
    if not stack:
        raise RlsteerError("persistence needs resid_post vectors (one per injection layer)")
    injections = sorted(stack) if cfg.layers is None else sorted(set(cfg.layers))
    missing = [i for i in injections if i not in stack]
    if missing:
        raise RlsteerError(f"no resid_post vector at layer(s) {missing}; the file has layers {sorted(stack)}")
    L = arch.n_layers
    device = next(model.parameters()).device
    sums = _Sums(injections, L, arch.d_model)
    passes = 0
    backend = HFBackend(model, tokenizer, progress=False)
    sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    requests = [Request(p.ids, p.stop_ids, seed=cfg.seed * 1_000_003 + k) for k, p in enumerate(prompts)]

    def texts(vector: dict[Entry, torch.Tensor] | None) -> list[list[int]]:
        outs = backend.generate(requests, vector, sampling)
        return [[*r.request.prompt_ids, *r.token_ids][:-1] for r in outs]  # drop the last token

    def blocks(ids: list[int], layers: Sequence[int], vector: dict[Entry, torch.Tensor] | None) -> dict[int, Any]:
        nonlocal passes
        x = torch.tensor([ids], device=device)
        with torch.no_grad(), steer(model, vector or {}), capture_blocks(model, layers) as seen:
            arch.decoder()(input_ids=x)
        passes += 1
        return {ell: seen[ell][0, :-1].float().cpu() for ell in layers}  # [T−1, d]: last position dropped

    shared = texts(None) if cfg.text == "base" else None
    base_cache: dict[int, dict[int, Any]] = {}
    bar = tqdm(total=len(injections) * len(prompts), desc="persistence", unit="seq",
               disable=None if progress is None else not progress)
    with bar:
        for i in injections:
            only = {Entry("resid_post", i): stack[i]}
            sequences = shared if shared is not None else texts(only)
            later = list(range(i, L))
            for k, ids in enumerate(sequences):
                if shared is not None:  # one base pass per prompt, all blocks, reused by every i
                    if k not in base_cache:
                        base_cache[k] = blocks(ids, range(L), None)
                    base = base_cache[k]
                else:
                    base = blocks(ids, later, None)
                steered = blocks(ids, later, only)
                for ell in later:
                    sums.add(i, ell, steered[ell] - base[ell], stack.get(ell))
                sums.tokens[i] += len(ids) - 1
                bar.update(1)

    records = []
    for (i, ell), unit_sum in sums.units.items():
        n = sums.tokens[i]
        mean = sums.shift[i, ell] / max(n, 1)
        s_ell = stack.get(ell)
        records.append({
            "injection": i, "layer": ell, "tokens": n,
            "diff_vector": sums.dv[i, ell] / n if (i, ell) in sums.dv else None,
            "diff_diff": (sums.dd[i, ell] if cfg.reference == "sequence" else cosine_sum(unit_sum, mean)) / n,
            "mean_shift_norm": float(mean.norm()),
            "mean_shift_vs_vector": float(mean @ s_ell.double() / (mean.norm() * s_ell.norm()).clamp_min(1e-30))
            if s_ell is not None else None,
        })
    finals = torch.stack([sums.shift[i, L - 1] / max(sums.tokens[i], 1) for i in injections]).float()  # [I, d]
    unit = finals / finals.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return {"records": records, "shift_cosines": (unit @ unit.T).tolist(), "injections": injections,
            "passes": passes, "reference": cfg.reference, "text": cfg.text}


# ------------------------------------------------------------------------------------------- output


def persistence_tables(result: dict[str, Any]) -> str:
    """Appendix-D style matrices: injection layer i (rows) × block ℓ (columns), Diff-Diff then Diff-Vector."""
    records = result["records"]
    layers = sorted({r["layer"] for r in records})
    cell = {(r["injection"], r["layer"]): r for r in records}
    out = []
    for metric, title in (("diff_diff", f"Diff-Diff ({result['reference']} mean)"), ("diff_vector", "Diff-Vector")):
        lines = [f"{title}", "", "| i \\ ℓ | " + " | ".join(map(str, layers)) + " |", "|---|" + "---:|" * len(layers)]
        for i in result["injections"]:
            values = [cell.get((i, ell), {}).get(metric) for ell in layers]
            lines.append(f"| {i} | " + " | ".join("" if v is None else f"{v:.2f}" for v in values) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def plot_persistence(result: dict[str, Any], out: Path) -> list[Path]:
    """Fig. 2: Diff-Diff and Diff-Vector along later blocks per injection layer; Fig. 3: final-shift cosines."""
    from rlsteer.figures import colormap, subplots
    from matplotlib.ticker import MaxNLocator

    records, injections = result["records"], result["injections"]
    cmap = colormap("viridis")
    fig, axes = subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, metric, title in ((axes[0], "diff_diff", f"Diff-Diff ({result['reference']} mean)"),
                              (axes[1], "diff_vector", "Diff-Vector")):
        for n, i in enumerate(injections):
            points = sorted((r["layer"], r[metric]) for r in records if r["injection"] == i and r[metric] is not None)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", lw=1,
                        color=cmap(n / max(1, len(injections) - 1)), label=f"s{i}")
        ax.set_title(title)
        ax.set_xlabel("block ℓ")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("token-weighted mean cosine")
    if len(injections) <= 12:
        axes[1].legend(fontsize=7, ncol=2)
    paths = save_figure(fig, out / "persistence")

    fig, ax = subplots(figsize=(0.35 * len(injections) + 3, 0.35 * len(injections) + 2.5))
    image = ax.imshow(result["shift_cosines"], cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(injections)), injections, fontsize=7)
    ax.set_yticks(range(len(injections)), injections, fontsize=7)
    ax.set_xlabel("injection layer j")
    ax.set_ylabel("injection layer i")
    ax.set_title("cos of mean final-block shifts")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return paths + save_figure(fig, out / "shift_cosines")


def run_persistence(vectors_path: str | Path, *, dataset: str = "math_train", data_dir: str | None = None,
                    prompts: int = 16, template: str | None = None, model_spec: str | None = None,
                    cfg: PersistenceConfig = PersistenceConfig(), out: str | Path | None = None, device: str = "cpu",
                    log: Callable[[str], None] = print) -> Path:
    """``rlsteer analyze persistence``: records, Appendix-D tables, Fig. 2 lines and the Fig. 3 matrix."""
    path = Path(vectors_path)
    model, tok, vectors, meta = load_with_vectors(path, model_spec, device)
    built = analysis_prompts(dataset, prompts, tok, template or meta.get("template"), data_dir=data_dir)
    result = persistence(model, tok, vectors, built, cfg)
    folder = analysis_dir(path, "persistence", out)
    write_records(folder / "persistence", result["records"])
    write_atomically(folder / "persistence.md", persistence_tables(result))
    write_atomically(folder / "shift_cosines.json", json.dumps({k: result[k] for k in (
        "injections", "shift_cosines", "passes", "reference", "text")}, indent=1))
    figures = plot_persistence(result, folder)
    log(persistence_tables(result))
    log(f"{result['passes']} forward passes over {len(built)} prompts → {folder} "
        f"({', '.join(p.name for p in figures)})")
    return folder
