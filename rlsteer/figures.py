"""Figures without pyplot: every figure rlsteer draws is a plain :class:`matplotlib.figure.Figure`.

Nothing here touches pyplot's global state or its backend, so importing rlsteer in a notebook leaves the
notebook's backend alone, and figures render headless (on a server, in CI) with no ``matplotlib.use``.

Example:
    >>> fig, ax = subplots(figsize=(3, 2))
    >>> _ = ax.plot([0, 1], [1, 0])
    >>> png_bytes(fig)[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io
from typing import Any, Literal

from matplotlib import colormaps
from matplotlib.colors import Colormap
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             layout: Literal["constrained", "compressed", "tight"] | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    """``pyplot.subplots`` without pyplot: a new figure and its axes (same arguments and squeezing)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colormap(name: str) -> Colormap:
    """A registered colormap by name (``pyplot.get_cmap`` without pyplot)."""
    return colormaps[name]


def png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()
