"""Hugging Face hub ids as rlsteer recognises them (models and datasets alike).

Example:
    >>> looks_like_hub_id("Qwen/Qwen2.5-Math-7B"), looks_like_hub_id("./runs/x"), looks_like_hub_id("gsm8k")
    (True, False, False)
"""

from __future__ import annotations


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` has the shape of a hub id, ``owner/name`` (not a relative or absolute path)."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))
