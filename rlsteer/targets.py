"""What an evaluation evaluates: the base model, or vector files (from a run or not), scaled, prefixed or
patched into a circuit.

:func:`resolve_targets` turns ``cfg.target`` into :class:`Target` s (a run directory gives its latest
vectors, one checkpoint's or every checkpoint's, through :class:`rlsteer.rundir.RunDir`);
:func:`resolve_defaults` fills the model, template and prefix left open from the vectors' own header (or
their run's config); :func:`steering_for` is what the backend then applies.

Example:
    >>> from rlsteer.config import EvalConfig, load_config
    >>> [t.label for t in resolve_targets(load_config(EvalConfig, None, ["target.prefix=To"]))]
    ['base-prefix-To']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rlsteer.config import EvalConfig, read_yaml
from rlsteer.errors import RlsteerError
from rlsteer.models import DEFAULT_MODEL, resolve_dtype
from rlsteer.rundir import RunDir, RunDirError
from rlsteer.steering.patching import patch_from
from rlsteer.steering.sites import Entry, SiteError
from rlsteer.steering.vectors import SteeringVectors, read_vector_header
from rlsteer.templates import DEFAULT_TEMPLATE

EVALS = Path("evals")  # where evaluations of the base model or of loose vector files go by default


class TargetError(RlsteerError):
    pass


@dataclass(frozen=True)
class Target:
    """One thing to evaluate: a label, its vector file (None: the base model) and its output directory."""

    label: str
    vectors: Path | None
    out: Path


def resolve_targets(cfg: EvalConfig) -> list[Target]:
    """The vector files ``cfg.target`` names, with their output directories.

    A run directory gives its latest vectors, one checkpoint's (``step: N``) or every checkpoint's
    (``step: all``, each into ``out/step-N``).
    """
    t = cfg.target
    suffix = "".join([f"-x{t.scale:g}" if t.scale != 1.0 else "", f"-prefix-{t.prefix}" if t.prefix else "",
                      f"-{t.patch}" if t.patch else "", f"-h{t.patch_head}" if t.patch_head is not None else ""])
    suffix = folder_name(suffix)  # a prefix or patch is text: it names a folder, never a path
    if t.vectors is None:
        label = "base" + suffix
        return [Target(label, None, Path(cfg.out or EVALS / label))]
    path = Path(t.vectors).expanduser()
    if path.is_file():
        label = path.stem + suffix
        return [Target(label, path, Path(cfg.out or EVALS / label))]
    run = RunDir(path)
    if not run.is_run():
        raise TargetError(f"target.vectors={t.vectors!r} is neither a vector file nor a run directory (no "
                          "config.yaml)")
    try:
        files = run.resolve(t.step)
    except RunDirError as err:
        raise TargetError(str(err)) from None
    if t.step == "all":
        root = Path(cfg.out or run.eval_dir(f"all{suffix}"))
        return [Target(f"{run.name}/{label}{suffix}", file, root / label) for label, file in files]
    [(label, file)] = files
    return [Target(f"{run.name}/{label}{suffix}", file, Path(cfg.out or run.eval_dir(label + suffix)))]


def folder_name(text: str) -> str:
    """``text`` made safe as (part of) one folder name: path separators and control characters become ``_``.

    Example:
        >>> folder_name("-prefix-x/../../esc")
        '-prefix-x_.._.._esc'
    """
    return re.sub(r"[/\\\x00-\x1f]", "_", text)


def resolve_defaults(cfg: EvalConfig, targets: Sequence[Target], header: dict[str, str] | None = None) -> EvalConfig:
    """Fill the model, template and prefix left open from the first target's vectors (their header, given
    as ``header`` when already read, else read here; or their run's config)."""
    meta: dict[str, str] = {}
    first = targets[0].vectors if targets else None
    if first is not None:
        meta = dict(header if header is not None else read_vector_header(first))
        owner = RunDir.of_vectors(first)
        if not meta.get("model") and owner is not None:
            meta["model"] = str(read_yaml(owner[0].config).get("model", {}).get("name", ""))
    model = cfg.model.name or meta.get("model") or DEFAULT_MODEL
    template = cfg.target.template or meta.get("template") or DEFAULT_TEMPLATE
    prefix = cfg.target.prefix if cfg.target.prefix is not None else meta.get("prefix")
    dtype = resolve_dtype(cfg.model.dtype, cfg.model.device)  # "auto" is float32 off CUDA, the checkpoint's on it
    return replace(cfg, model=replace(cfg.model, name=model, dtype=dtype if dtype == "auto" else _name(dtype)),
                   target=replace(cfg.target, template=template, prefix=prefix or None))


def _name(dtype: torch.dtype) -> Any:
    return str(dtype).removeprefix("torch.")


def steering_for(vectors: SteeringVectors | None,
                 cfg: EvalConfig) -> SteeringVectors | dict[Entry, torch.Tensor] | None:
    """What the backend applies: the vectors (scaled), a circuit patch built from one of them, or None.

    ``vectors`` is a freshly loaded file; its ``scale`` is multiplied by ``target.scale`` in place.
    """
    t = cfg.target
    if vectors is None:
        if t.patch is not None:
            raise TargetError("target.patch needs target.vectors: a patch moves a trained vector into a circuit")
        return None
    vectors.scale *= t.scale
    if t.patch is None:
        return vectors
    try:
        return patch_from(vectors, t.patch, layer=t.patch_layer, head=t.patch_head)
    except SiteError as err:
        raise TargetError(f"target.patch: {err}") from None
