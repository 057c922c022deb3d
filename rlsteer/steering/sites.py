"""Named places where a steering vector enters block ℓ (docs/semantics.md#sites, #places, #patching).

With X the residual entering block ℓ, U = LN1(X), Y = X + Attn(U), Z = Y + MLP(LN2(Y)):

=============  ==================================================================================
site           what adding s does
=============  ==================================================================================
resid_post     Z ← Z + s (the paper's "steering at layer ℓ"; identical to a ``down_proj`` bias)
resid_pre      X ← X + s (the residual entering block ℓ)
attn_out       Y ← Y + s (the post-attention residual: s added to ``self_attn``'s output)
ln1_out        LN1's output + s, and the attention output + s (reference vLLM semantics)
ln2_out        LN2's output + s, and the MLP output + s
full           patch: Q, K, V from LN1(X+s), residual X+s (≡ resid_pre)
skip_attn      patch: attention reads LN1(X), residual X+s
skip_layer     patch: block untouched, s added after the MLP (≡ resid_post)
steer_q        patch, one query head: that head's Q slice from LN1(X+s), the rest vanilla; residual X+s
steer_k        patch, one KV head: that head's K slice from LN1(X+s); residual X+s
steer_v        patch, one KV head: that head's V slice from LN1(X+s); residual X+s
steer_head     patch, one query head: its pre-o_proj output from the fully steered attention; residual X+s
skip_head      patch, one query head: every head steered except this one (vanilla); residual X+s
=============  ==================================================================================

Example:
    >>> Entry("resid_post", 29).name, Entry("steer_v", 29, head=1).name
    ('resid_post.29', 'steer_v.29.1')
"""

from __future__ import annotations

from dataclasses import dataclass

from rlsteer.errors import RlsteerError

RESIDUAL_SITES = ("resid_post", "resid_pre", "attn_out", "ln1_out", "ln2_out")
PATCH_SITES = ("full", "skip_attn", "skip_layer", "steer_q", "steer_k", "steer_v", "steer_head", "skip_head")
SITES = RESIDUAL_SITES + PATCH_SITES

#: Sites that take a head index; K/V heads are KV-head indices under GQA, the others query heads.
HEAD_SITES = ("steer_q", "steer_k", "steer_v", "steer_head", "skip_head")
KV_HEAD_SITES = ("steer_k", "steer_v")

#: Patches that run a vanilla and a steered attention branch side by side in one block.
BRANCH_SITES = ("skip_attn", "steer_q", "steer_k", "steer_v", "steer_head", "skip_head")


class SiteError(RlsteerError):
    """An entry that names an unknown site or has a missing/unexpected head index."""


@dataclass(frozen=True, order=True)
class Entry:
    """One steering entry: a site, a 0-based layer and, for per-head sites, a head index."""

    site: str
    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise SiteError(f"unknown site {self.site!r}; sites are: {', '.join(SITES)}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"layer must be a non-negative int, got {self.layer!r}")
        if self.site in HEAD_SITES and self.head is None:
            raise SiteError(f"site {self.site!r} needs a head index, e.g. Entry({self.site!r}, {self.layer}, head=0)")
        if self.site not in HEAD_SITES and self.head is not None:
            raise SiteError(f"site {self.site!r} takes no head index (only {', '.join(HEAD_SITES)} do)")
        if self.head is not None and (isinstance(self.head, bool) or not isinstance(self.head, int)
                                      or self.head < 0):
            raise SiteError(f"head must be a non-negative int, got {self.head!r}")

    @property
    def name(self) -> str:
        """The tensor name in a vector file: ``{site}.{layer}`` or ``{site}.{layer}.{head}``."""
        return f"{self.site}.{self.layer}" if self.head is None else f"{self.site}.{self.layer}.{self.head}"

    @classmethod
    def parse(cls, name: str) -> Entry:
        """Inverse of :attr:`name`."""
        parts = name.split(".")
        try:
            if len(parts) == 2:
                return cls(parts[0], int(parts[1]))
            if len(parts) == 3:
                return cls(parts[0], int(parts[1]), int(parts[2]))
        except ValueError as err:
            if isinstance(err, SiteError):
                raise
        raise SiteError(f"bad entry name {name!r}; expected 'site.layer' or 'site.layer.head'")


# ------------------------------------------------------------------------------------------ geometry
#
# Which block a vector belongs to, and how many heads bound a head index, asked by the vLLM backend, the
# exporters, evaluation's circuit patches, training's config checks and vector files alike.

#: Sites whose vector is added to a block's output, and which block: resid_pre ℓ (the input of block ℓ) is
#: the output of block ℓ − 1; skip_layer and full are their patch twins.
_BLOCK_OUTPUT_OFFSET = {"resid_post": 0, "skip_layer": 0, "resid_pre": -1, "full": -1}
#: Sites whose vector is added to the output of block ℓ's attention (post-attention residual).
ATTN_OUTPUT_SITES = ("attn_out", "skip_attn")


def output_block(entry: Entry) -> int | None:
    """The block whose output ``entry``'s vector is added to (−1: before block 0, the embeddings); None for
    sites that act inside a block.

    Example:
        >>> [output_block(Entry(site, 5)) for site in ("resid_post", "resid_pre", "attn_out")]
        [5, 4, None]
    """
    offset = _BLOCK_OUTPUT_OFFSET.get(entry.site)
    return None if offset is None else entry.layer + offset


def fed_block(entry: Entry) -> int:
    """The block whose input a residual vector feeds: resid_post ℓ (and skip_layer ℓ) feed block ℓ + 1,
    resid_pre ℓ (and full ℓ) block ℓ. This is where a circuit patch of the vector goes (the paper moves
    s26 into block 27).

    Example:
        >>> fed_block(Entry("resid_post", 26)), fed_block(Entry("resid_pre", 27))
        (27, 27)
    """
    block = output_block(entry)
    if block is None:
        raise SiteError(f"{entry.name} is not added to the residual stream between blocks; only "
                        f"{', '.join(_BLOCK_OUTPUT_OFFSET)} vectors feed a block")
    return block + 1


def head_limit(site: str, n_heads: int, n_kv_heads: int) -> tuple[int, str]:
    """How many heads bound ``site``'s head index, and what they are called: KV heads for steer_k / steer_v
    (under GQA several query heads share one), query heads for the other per-head sites.

    Example:
        >>> head_limit("steer_v", 14, 2), head_limit("steer_q", 14, 2)
        ((2, 'KV heads'), (14, 'query heads'))
    """
    if site not in HEAD_SITES:
        raise SiteError(f"site {site!r} takes no head index")
    return (n_kv_heads, "KV heads") if site in KV_HEAD_SITES else (n_heads, "query heads")
