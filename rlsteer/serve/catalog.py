"""The models a server offers: the base model and one steered model per vector file or run.

Targets are resolved as ``rlsteer eval`` resolves them (:func:`rlsteer.targets.resolve_targets`), and a
request's steering scale multiplies the vectors as ``rlsteer eval --scale`` does
(:func:`rlsteer.targets.steering_for`).

Example:
    >>> names = served_names(["runs/demo/all-layers", "last=runs/demo/last-layer/vectors.safetensors"])
    >>> names
    [('all-layers', 'runs/demo/all-layers'), ('last', 'runs/demo/last-layer/vectors.safetensors')]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsteer.config import EvalConfig, TargetSection
from rlsteer.errors import RlsteerError
from rlsteer.steering.vectors import SteeringVectors, read_vector_file
from rlsteer.targets import resolve_defaults, resolve_targets, steering_for


class ServeError(RlsteerError):
    pass


@dataclass
class ServedModel:
    """One model name of the API: the base model (``vectors`` None) or the base model steered by a file."""

    name: str
    vectors: Path | None
    metadata: dict[str, str] = field(default_factory=dict)
    _steering: dict[float, Any] = field(default_factory=dict)

    def steering(self, scale: float, model: Any) -> Any:
        """What the backend applies for ``scale`` (loaded once per scale, at most 32 scales kept)."""
        if self.vectors is None:
            return None
        if scale not in self._steering:
            if len(self._steering) >= 32:
                self._steering.clear()
            cfg = EvalConfig(target=TargetSection(vectors=str(self.vectors), scale=scale))
            self._steering[scale] = steering_for(SteeringVectors.load(self.vectors, model), cfg)
        return self._steering[scale]

    def card(self, base: str, created: int) -> dict[str, Any]:
        """The ``/v1/models`` entry."""
        card: dict[str, Any] = {"id": self.name, "object": "model", "created": created, "owned_by": "rlsteer",
                                "root": base, "parent": None if self.vectors is None else base}
        if self.vectors is not None:
            card["rlsteer"] = {"vectors": str(self.vectors), **{k: self.metadata[k] for k in
                                                                ("template", "prefix", "model") if k in self.metadata}}
        return card


def served_names(targets: Sequence[str]) -> list[tuple[str, str]]:
    """(name, target) pairs: ``NAME=TARGET`` names itself; a run directory goes by its folder name, a vector
    file by its stem (by its folder's name when the stem is ``vectors``)."""
    pairs = []
    for spec in targets:
        named = re.fullmatch(r"([A-Za-z0-9_.:-]+)=(.+)", spec)
        if named and not Path(spec).exists():
            pairs.append((named[1], named[2]))
            continue
        path = Path(spec)
        if path.suffix == ".safetensors":
            name = path.parent.name if path.stem == "vectors" and path.parent.name else path.stem
            if path.parent.name.startswith("step-"):  # a checkpoint: run/step-N
                name = f"{path.parent.parent.parent.name}-{path.parent.name}"
        else:
            name = path.resolve().name
        pairs.append((name, spec))
    return pairs


def build_catalog(targets: Sequence[str], model: str | None, base_name: str | None) -> tuple[str, list[ServedModel]]:
    """The base model spec and the served models (base first); checks that every file belongs to one model."""
    models: list[ServedModel] = []
    specs: dict[str, str] = {}
    for name, spec in served_names(targets):
        if any(m.name == name for m in models):
            raise ServeError(f"two targets are served as {name!r}; name them: NAME={spec}")
        cfg = EvalConfig(target=TargetSection(vectors=spec))
        resolved = resolve_targets(cfg)
        if len(resolved) != 1 or resolved[0].vectors is None:
            raise ServeError(f"{spec} names {len(resolved)} vector files; serve one file or run")
        file = resolved[0].vectors
        metadata = read_vector_file(file)[1]
        trained_on = resolve_defaults(cfg, resolved).model.name or ""
        specs[name] = trained_on
        models.append(ServedModel(name, file, metadata))
    base = model or next(iter(specs.values()), None)
    if base is None:
        from rlsteer.models import DEFAULT_MODEL

        base = DEFAULT_MODEL
    if model is None:
        others = {n: s for n, s in specs.items() if s != base}
        if others:
            raise ServeError(f"the vectors belong to different models ({base} and {others}); serve one model's "
                             "vectors per server, or pass --model to use them all on one")
    name = base_name or base
    if any(m.name == name for m in models):
        raise ServeError(f"a target is named like the base model ({name!r}); pass --base-name or NAME=TARGET")
    return base, [ServedModel(name, None), *models]
