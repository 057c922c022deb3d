"""Token-level probability shifts Δp (docs/semantics.md#token-shift; paper Fig. 4/13 left, Fig. 6).

1. sample one completion per prompt from the **steered** model (T = 1, per-prompt seeds) and keep those
   that end with a stop token;
2. teacher-force each prompt + completion with and without the vectors; at every generation position
   (position 0 is the one whose logits predict the first generated token, through the position after the
   final stop token) Δp = softmax(logits_s / T) − softmax(logits_b / T) over the vocabulary;
3. per position keep the arg-max-Δp token ("dst", the promoted token) with its Δp, and for the record the
   arg-min token, the base model's arg-max and the actual next token;
4. group the dst values by token string ("To" and " To" differ), rank groups by their maximum, and draw the
   top five as box plots with one chosen token's Δp at position 0 beside them.

Memory stays O(sequence × d): the decoder runs once per condition and the vocabulary projection goes
position-chunk by chunk, so no [T, V] tensor of a long sequence is held for both conditions at once.

Example:
    >>> import torch
    >>> shifts = position_shifts(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0]]))
    >>> shifts["dst"].tolist(), shifts["src"].tolist()
    ([0], [2])
"""

from __future__ import annotations

import html
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.analysis.inputs import analysis_prompts, load_with_vectors
from rlsteer.analysis.output import analysis_dir, save_figure, write_records
from rlsteer.architectures import architecture_of
from rlsteer.errors import RlsteerError
from rlsteer.io import write_atomically
from rlsteer.packing import pack_sequences, packed_attention
from rlsteer.rollout import HFBackend, Request, Rollout, SamplingParams
from rlsteer.steering.hooks import steer
from rlsteer.steering.patching import PatchError, check_patch_fits, patch_from
from rlsteer.steering.sites import SiteError


@dataclass(frozen=True)
class ShiftConfig:
    """Options of :func:`token_shifts`.

    Attributes:
        temperature: of sampling and of both softmaxes (the paper: 1).
        max_new_tokens: completion budget.
        chunk: positions projected onto the vocabulary at once.
        seed: sampling seed (each prompt gets its own, derived from it).
    """

    temperature: float = 1.0
    max_new_tokens: int = 1024
    chunk: int = 256
    seed: int = 0


def position_shifts(logits_steered: torch.Tensor, logits_base: torch.Tensor,
                    temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Per position [T]: the promoted (dst) and demoted (src) token and their Δp, and both arg-maxes.

    Args:
        logits_steered, logits_base: [T, V] logits at the same positions of the same tokens.
    """
    t = max(temperature, 1e-6)
    p_s = torch.softmax(logits_steered.float() / t, dim=-1)  # [T, V]
    p_b = torch.softmax(logits_base.float() / t, dim=-1)  # [T, V]
    dp = p_s - p_b  # [T, V]; every row sums to 0
    dst_dp, dst = dp.max(dim=-1)
    src_dp, src = dp.min(dim=-1)
    return {"dst": dst, "dst_dp": dst_dp, "src": src, "src_dp": src_dp, "base_argmax": p_b.argmax(-1),
            "steered_argmax": p_s.argmax(-1), "dp": dp}


@torch.no_grad()
def sequence_shifts(model: nn.Module, vectors: Any, ids: Sequence[int], start: int, *, temperature: float = 1.0,
                    chunk: int = 256, track: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """Δp summaries for one token sequence from generation position ``start`` (len(prompt) − 1) to its end.

    Returns [P] tensors (P = len(ids) − start) as :func:`position_shifts`, without the full Δp, plus
    ``tracked`` [P, len(track)]: Δp of the ``track`` token ids at every position.
    """
    return batch_shifts(model, vectors, [(ids, start)], temperature=temperature, chunk=chunk, track=track)[0]


@torch.no_grad()
def batch_shifts(model: nn.Module, vectors: Any, items: Sequence[tuple[Sequence[int], int]], *,
                 temperature: float = 1.0, chunk: int = 256, track: Sequence[int] = (),
                 max_tokens: int = 4096) -> list[dict[str, torch.Tensor]]:
    """:func:`sequence_shifts` of several (ids, start) items, teacher-forced together: the sequences are packed
    into rows of up to ``max_tokens`` tokens (no padding, attention kept inside each sequence), two forward
    passes per row (steered and base) instead of two per sequence."""
    arch = architecture_of(model)
    device = next(model.parameters()).device
    decoder, head = arch.decoder(), arch.lm_head()
    results: list[dict[str, torch.Tensor]] = []
    for group in _rows(items, max_tokens):
        kwargs, offsets = pack_sequences([ids for ids, _ in group], device)
        with packed_attention(model):
            with steer(model, vectors):
                steered = decoder(**kwargs).last_hidden_state[0]  # [T, d], after the final norm
            base = decoder(**kwargs).last_hidden_state[0]  # [T, d]
        for (ids, start), offset in zip(group, offsets, strict=True):
            h_s, h_b = steered[offset + start:offset + len(ids)], base[offset + start:offset + len(ids)]  # [P, d]
            parts: dict[str, list[torch.Tensor]] = defaultdict(list)
            for i in range(0, h_s.shape[0], chunk):
                out = position_shifts(head(h_s[i:i + chunk]), head(h_b[i:i + chunk]), temperature)
                parts["tracked"].append(out.pop("dp")[:, list(track)].cpu())
                for key, value in out.items():
                    parts[key].append(value.cpu())
            results.append({k: torch.cat(v) for k, v in parts.items()})
    return results


def _rows(items: Sequence[tuple[Sequence[int], int]], max_tokens: int) -> list[list[tuple[Sequence[int], int]]]:
    """Consecutive items in groups of at most ``max_tokens`` tokens (a longer item alone)."""
    rows: list[list[tuple[Sequence[int], int]]] = []
    size = 0
    for item in items:
        if rows and size + len(item[0]) <= max_tokens:
            rows[-1].append(item)
            size += len(item[0])
        else:
            rows.append([item])
            size = len(item[0])
    return rows


def token_shifts(model: nn.Module, tokenizer: Any, vectors: Any, prompts: Sequence[Any],
                 cfg: ShiftConfig = ShiftConfig(), *, track: Sequence[str] = (),
                 progress: bool | None = None) -> tuple[list[dict[str, Any]], list[Rollout]]:
    """Sample from the steered model, keep stopped completions, and record Δp at every generation position.

    Args:
        prompts: :class:`rlsteer.templates.Prompt` objects.
        track: token strings whose Δp is recorded at every position (must be single tokens).

    Returns (records, kept rollouts): one record per (sequence, position).
    """
    track_ids = [_single_token(tokenizer, t) for t in track]
    sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    requests = [Request(p.ids, p.stop_ids, seed=cfg.seed * 1_000_003 + i) for i, p in enumerate(prompts)]
    rollouts = HFBackend(model, tokenizer, progress=progress).generate(requests, vectors, sampling)
    kept = [r for r in rollouts if r.finish_reason == "stop"]
    records = []
    items = [([*r.request.prompt_ids, *r.token_ids], r.request.prompt_len - 1) for r in kept]
    shifts = batch_shifts(model, vectors, items, temperature=cfg.temperature, chunk=cfg.chunk, track=track_ids)
    for seq, ((ids, start), s) in enumerate(zip(items, shifts, strict=True)):
        for pos in range(len(ids) - start):
            nxt = ids[start + pos + 1] if start + pos + 1 < len(ids) else None
            record = {"sequence": seq, "position": pos, "input_token": tokenizer.decode([ids[start + pos]]),
                      "next_token": tokenizer.decode([nxt]) if nxt is not None else None,
                      "dst": tokenizer.decode([int(s["dst"][pos])]), "dst_id": int(s["dst"][pos]),
                      "dst_dp": float(s["dst_dp"][pos]),
                      "src": tokenizer.decode([int(s["src"][pos])]), "src_dp": float(s["src_dp"][pos]),
                      "base_argmax": tokenizer.decode([int(s["base_argmax"][pos])]),
                      "steered_argmax": tokenizer.decode([int(s["steered_argmax"][pos])])}
            for name, column in zip(track, s["tracked"].T, strict=True):
                record[f"dp[{name}]"] = float(column[pos])
            records.append(record)
    return records, kept


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise RlsteerError(f"{text!r} is {len(ids)} tokens for this tokenizer; track a single token")
    return int(ids[0])


# ------------------------------------------------------------------------------------------- aggregation


def group_by_token(records: Sequence[dict[str, Any]], *, stat: str = "max", min_count: int = 1) -> list[dict[str, Any]]:
    """dst tokens with their Δp values, ranked by the group's ``stat`` (max, mean or count), descending."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        groups[r["dst"]].append(r["dst_dp"])
    rows = [{"token": t, "count": len(v), "max": max(v), "mean": statistics.fmean(v),
             "median": statistics.median(v), "values": v} for t, v in groups.items() if len(v) >= min_count]
    return sorted(rows, key=lambda row: -row[stat])


def first_position_table(records: Sequence[dict[str, Any]], top: int = 10) -> list[dict[str, Any]]:
    """At position 0: how often each token is the promoted one, and its mean Δp there."""
    first = [r for r in records if r["position"] == 0]
    rows = group_by_token(first, stat="count")[:top]
    return [{"token": r["token"], "count": r["count"], "share": r["count"] / max(1, len(first)),
             "mean_dp": r["mean"], "max_dp": r["max"]} for r in rows]


def plot_top_tokens(records: Sequence[dict[str, Any]], out: Path, *, top: int = 5,
                    highlight: str | None = None) -> list[Path]:
    """Box plots of the top tokens by maximum Δp, with ``highlight``'s Δp at position 0 as a sixth box."""
    from rlsteer.figures import subplots

    groups = group_by_token(records)[:top]
    data = [g["values"] for g in groups]
    labels = [repr(g["token"]) for g in groups]
    key = f"dp[{highlight}]"
    if highlight is not None and records and key in records[0]:
        data.append([r[key] for r in records if r["position"] == 0])
        labels.append(f"{highlight!r} at pos. 0")
    fig, ax = subplots(figsize=(1.4 * len(data) + 2, 3.6))
    box = ax.boxplot(data, patch_artist=True, showfliers=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    for i, patch in enumerate(box["boxes"]):
        patch.set_facecolor("tab:orange" if highlight is not None and i == len(groups) else "tab:blue")
        patch.set_alpha(0.6)
    ax.set_ylabel("Δp (steered − base)")
    n_seq = len({r["sequence"] for r in records})
    ax.set_title(f"top {len(groups)} promoted tokens by maximum Δp ({n_seq} sequence{'s' * (n_seq != 1)})")
    ax.axhline(0, color="grey", lw=0.5)
    return save_figure(fig, out / "top_tokens")


def case_study_html(records: Sequence[dict[str, Any]], *, sequences: int = 5, title: str = "Δp case study") -> str:
    """Generated tokens coloured by the largest Δp at the position that predicted them; hover: the promoted token."""
    by_seq: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_seq[r["sequence"]].append(r)
    scale = max((r["dst_dp"] for r in records), default=1.0) or 1.0
    blocks = []
    for seq in sorted(by_seq)[:sequences]:
        spans = []
        for r in by_seq[seq]:
            if r["next_token"] is None:
                continue
            alpha = min(1.0, r["dst_dp"] / scale)
            tip = (f"promoted {r['dst']!r} Δp={r['dst_dp']:+.3f}; demoted {r['src']!r} Δp={r['src_dp']:+.3f}; "
                   f"base would pick {r['base_argmax']!r}")
            spans.append(f'<span style="background: rgba(230,85,13,{alpha:.3f})" title="{html.escape(tip)}">'
                         f"{html.escape(r['next_token'])}</span>")
        blocks.append(f"<h3>sequence {seq}</h3><pre>{''.join(spans)}</pre>")
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}pre{white-space:pre-wrap;"
            "line-height:1.6;font-size:14px}span{border-radius:2px}</style>"
            f"<h1>{html.escape(title)}</h1><p>Each generated token is shaded by the largest Δp at the position that "
            "predicted it (darker: the vector promoted some token more); hover for the promoted token.</p>"
            + "".join(blocks))


def run_token_shift(vectors_path: str | Path, *, dataset: str = "math_train", data_dir: str | None = None,
                    prompts: int = 32, template: str | None = None, model_spec: str | None = None,
                    highlight: str | None = None, cfg: ShiftConfig = ShiftConfig(), out: str | Path | None = None,
                    device: str = "cpu", patch: str | None = None, patch_layer: int | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """``rlsteer analyze token-shift``: records, token groups, first-position table, box plots, HTML case study.

    ``patch`` applies one vector of the file as a circuit patch of the block it feeds instead of the vectors
    themselves (:func:`rlsteer.steering.patching.patch_from`; ``patch_layer`` picks the vector): the paper's
    Fig. 6 is the penultimate vector s26 in its post-attention placement, ``patch="skip_attn"``, against the
    base model. Its output goes to ``analysis/token-shift-<patch>``.
    """
    path = Path(vectors_path)
    model, tok, loaded, meta = load_with_vectors(path, model_spec, device)
    vectors: Any = loaded
    if patch is not None:
        try:
            vectors = patch_from(loaded, patch, layer=patch_layer)
            check_patch_fits(vectors, model)
        except (SiteError, PatchError) as err:
            raise RlsteerError(f"--patch: {err}") from None
    built = analysis_prompts(dataset, prompts, tok, template or meta.get("template"), data_dir=data_dir,
                             prefix=meta.get("prefix"))
    records, kept = token_shifts(model, tok, vectors, built, cfg, track=(highlight,) if highlight else ())
    if not records:
        raise RlsteerError(f"none of the {len(built)} completions ended with a stop token; raise max_new_tokens")
    folder = analysis_dir(path, "token-shift" if patch is None else f"token-shift-{patch}", out)
    write_records(folder / "positions", records)
    groups = group_by_token(records)
    write_records(folder / "tokens", [{k: v for k, v in g.items() if k != "values"} for g in groups])
    first = first_position_table(records)
    write_records(folder / "first_position", first)
    figures = plot_top_tokens(records, folder, highlight=highlight)
    write_atomically(folder / "case_study.html", case_study_html(records, title=f"Δp case study: {path.name}"))
    write_atomically(folder / "summary.json", json.dumps({"prompts": len(built), "kept": len(kept),
                                                          "positions": len(records), "temperature": cfg.temperature,
                                                          "dataset": dataset, "patch": patch,
                                                          "patch_layer": patch_layer}, indent=1))
    log(f"{len(kept)} of {len(built)} completions ended with a stop token; {len(records)} positions")
    log("top promoted tokens by maximum Δp: " + ", ".join(f"{g['token']!r} {g['max']:+.3f} (n={g['count']})"
                                                          for g in groups[:10]))
    log("position 0: " + ", ".join(f"{r['token']!r} {r['share']:.0%} (mean Δp {r['mean_dp']:+.3f})" for r in first[:5]))
    log(f"→ {folder} ({', '.join(p.name for p in figures)}, case_study.html)")
    return folder
