"""Where each export format keeps each steering entry, and what it cannot hold.

Every format indexes a vector by the block whose output it is added to (:func:`rlsteer.steering.sites.output_block`):
``resid_pre.ℓ`` is ``resid_post.ℓ−1``; lm-eval also hooks attention outputs; llama.cpp applies blocks ≥ 1 only.

Example:
    >>> place_of("gguf", Entry("resid_post", 0)), place_of("npy", Entry("resid_pre", 3))
    (None, ('block', 2))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rlsteer.errors import RlsteerError
from rlsteer.steering.sites import ATTN_OUTPUT_SITES, Entry, output_block
from rlsteer.steering.vectors import SteeringVectors

#: format → what it is, for messages
FORMATS = {"bias": "a down_proj-bias checkpoint", "npy": "an [L, d] .npy matrix",
           "gguf": "a llama.cpp control vector", "lm-eval": "an lm-eval steered .pt file"}

class InteropError(RlsteerError):
    """A vector set that a format cannot hold, or a foreign file that cannot be read."""


def place_of(fmt: str, entry: Entry) -> tuple[str, int] | None:
    """Where ``fmt`` keeps ``entry``: ("block", ℓ) = block ℓ's output, ("attn", ℓ) = its attention output."""
    block = output_block(entry)
    if block is not None and block >= (1 if fmt == "gguf" else 0):
        return "block", block
    if fmt == "lm-eval" and entry.site in ATTN_OUTPUT_SITES:  # added to self_attn's output
        return "attn", entry.layer
    return None


def placed(vectors: SteeringVectors, fmt: str) -> dict[tuple[str, int], torch.Tensor]:
    """Every entry's effective vector [d_model] (fp32, scale applied) at its place in ``fmt``, summed per place."""
    out: dict[tuple[str, int], torch.Tensor] = {}
    for entry, value in vectors.vectors().items():
        place = place_of(fmt, entry)
        if place is None:
            raise InteropError(cannot_hold(fmt, entry))
        value = value.detach().to("cpu", torch.float32)
        out[place] = out[place] + value if place in out else value.clone()
    return dict(sorted(out.items()))


def holds(fmt: str) -> str:
    """What ``fmt`` can hold, for messages."""
    return {"gguf": "llama.cpp adds direction.N to the output of block N ≥ 1 only",
            "lm-eval": "it holds vectors added to block outputs (layers.ℓ) and attention outputs (layers.ℓ.self_attn)",
            }.get(fmt, "it holds one vector per block output (resid_post.ℓ; resid_pre.ℓ as resid_post.ℓ−1)")


def cannot_hold(fmt: str, entry: Entry) -> str:
    others = [f for f in FORMATS if f != fmt and place_of(f, entry) is not None]
    where = f"--format {' or '.join(others)} can hold it" if others else "no export format can hold it"
    return (f"cannot write {entry.name} as {FORMATS[fmt]}: {holds(fmt)}; {where}, or pass --drop-unsupported to "
            "leave it out (rlsteer's .safetensors holds every entry)")


@dataclass(frozen=True)
class Dropped:
    """What :func:`drop_unsupported` left out.

    Attributes:
        norms: entry name → ‖v‖ of each dropped vector (scale applied).
        share: ‖dropped‖ / ‖all‖, the norms of the dropped and of all effective vectors laid end to end.
    """

    norms: dict[str, float]
    share: float

    def __bool__(self) -> bool:
        return bool(self.norms)

    def describe(self) -> str:
        """One line, e.g. ``dropped resid_post.0 (norm 3.298): 40.3 % of the vectors' norm``."""
        names = ", ".join(f"{name} (norm {norm:.4g})" for name, norm in self.norms.items())
        return f"dropped {names}: {100 * self.share:.1f} % of the vectors' norm"


def drop_unsupported(vectors: SteeringVectors, fmt: str) -> tuple[SteeringVectors, Dropped]:
    """The entries that ``fmt`` can hold, as a new set (scale kept), and what was left out.

    A default all-layer run has ``resid_post.0``, which llama.cpp cannot apply; dropping it is a choice the
    user makes (``rlsteer export … --drop-unsupported``), so the share of the norm it carries is reported.
    The kept set records the dropped entries as metadata ``dropped_entries``.

    Example:
        >>> sv = SteeringVectors.from_dict({0: torch.tensor([3.0, 0.0]), 1: torch.tensor([0.0, 4.0])})
        >>> kept, dropped = drop_unsupported(sv, "gguf")
        >>> [e.name for e in kept.entries], dropped.describe()
        (['resid_post.1'], "dropped resid_post.0 (norm 3): 60.0 % of the vectors' norm")
    """
    if fmt not in FORMATS:
        raise InteropError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    effective = {e: v.detach().to("cpu", torch.float32) for e, v in vectors.vectors().items()}  # [d_model] each
    gone = [e for e in effective if place_of(fmt, e) is None]
    if len(gone) == len(effective):
        raise InteropError(f"{FORMATS[fmt]} can hold none of these entries ({', '.join(e.name for e in gone)}): "
                           f"{holds(fmt)}; nothing would be left to write")
    total = torch.cat(list(effective.values())).norm()
    share = float(torch.cat([effective[e] for e in gone]).norm() / total) if gone and total > 0 else 0.0
    metadata = dict(vectors.metadata)
    if gone:
        before = [x for x in metadata.get("dropped_entries", "").split(",") if x]
        metadata["dropped_entries"] = ",".join([*before, *(e.name for e in gone)])
    kept = SteeringVectors(vectors.d_model, scale=vectors.scale, metadata=metadata, trainable=False)
    for entry, value in vectors.vectors(scaled=False).items():
        if entry not in gone:
            kept.add(entry, value.detach().cpu(), trainable=False)
    return kept, Dropped({e.name: float(effective[e].norm()) for e in gone}, share)


def block_rows(vectors: SteeringVectors, fmt: str) -> dict[int, torch.Tensor]:
    return {layer: v for (_, layer), v in placed(vectors, fmt).items()}


def nonzero_rows(rows: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The rows that are not all zero (a single-layer run's other layers); every row when all are zero."""
    kept = {k: v for k, v in rows.items() if bool(v.any())}
    return kept or dict(rows)



def check_fits(d_model: int, places: Mapping[tuple[str, int], torch.Tensor], identity: Mapping[str, str]) -> None:
    """Raise :class:`InteropError` unless vectors of width ``d_model`` at ``places`` fit the model ``identity``."""
    if d_model != int(identity["d_model"]):
        raise InteropError(f"these vectors have width {d_model} but {identity['model']} has "
                           f"d_model={identity['d_model']}")
    for _, layer in places:
        if layer >= int(identity["n_layers"]):
            raise InteropError(f"a vector lands on block {layer} but {identity['model']} has {identity['n_layers']} "
                               "layers")
