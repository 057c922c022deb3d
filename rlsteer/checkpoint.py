"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint ``checkpoints/step-N/`` of a run directory (:mod:`rlsteer.rundir`) holds

* ``state.safetensors``: the trained parameters u (before projection and scale), the orthogonality bases,
  the optimizer's tensors (Adam moments and step counts) and the torch RNG state;
* ``state.json``: the step, the optimizer's param groups and any extra JSON the trainer adds;
* ``vectors.safetensors``: the step's vectors as an ordinary vector file (what ``rlsteer eval --step N``
  and the analyses read).

The folder is written under a temporary name and renamed into place, so a crash leaves either the whole
checkpoint or none of it. Resuming restores a bit-identical trainer state.

Example:
    >>> import tempfile, torch
    >>> from rlsteer.steering import SteeringVectors
    >>> sv = SteeringVectors(4, layers=[0])
    >>> opt = torch.optim.Adam(sv.parameters(), lr=0.1)
    >>> run = RunDir(Path(tempfile.mkdtemp()))
    >>> path = save_checkpoint(run, 3, sv, opt, {"note": "x"})
    >>> path.name, run.latest_checkpoint() == path
    ('step-3', True)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlsteer.errors import RlsteerError, first_line, writing
from rlsteer.io import staged_folder
from rlsteer.rundir import STATE_JSON, STATE_TENSORS, VECTORS, RunDir
from rlsteer.steering.vectors import SteeringVectors


class CheckpointError(RlsteerError):
    pass


def save_checkpoint(run: RunDir, step: int, vectors: SteeringVectors, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any] | None = None, *, vector_metadata: dict[str, str] | None = None) -> Path:
    """Write ``run``'s ``checkpoints/step-{step}`` atomically and return its path (``vector_metadata`` goes to
    its vector file)."""
    from safetensors.torch import save_file

    with writing(run.checkpoints):
        run.checkpoints.mkdir(parents=True, exist_ok=True)
    target = run.checkpoint(step)
    tensors: dict[str, torch.Tensor] = {}
    for entry in vectors.entries:
        tensors[f"param.{entry.name}"] = vectors.parameter(entry).detach().cpu().contiguous()
        basis = vectors.basis(entry)
        if basis is not None:
            tensors[f"basis.{entry.name}"] = basis.detach().cpu().contiguous()
    names = {id(p): e.name for e, p in ((e, vectors.parameter(e)) for e in vectors.entries)}
    state = optimizer.state_dict()
    index_to_name = {}
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        for param, index in zip(group["params"], saved["params"], strict=True):
            index_to_name[index] = names[id(param)]
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{index_to_name[index]}.{key}"] = tensor.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [index_to_name[i] for i in g["params"]]}
              for g in state["param_groups"]]
    meta = {"step": step, "entries": [e.name for e in vectors.entries], "scale": vectors.scale,
            "d_model": vectors.d_model, "param_groups": groups, "extra": extra or {}}
    with staged_folder(target) as staging:
        save_file(tensors, str(staging / STATE_TENSORS))
        (staging / STATE_JSON).write_text(json.dumps(meta, indent=1, default=_json_default))
        vectors.save(staging / VECTORS, **(vector_metadata or {}))
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to a checkpoint")


def load_checkpoint(path: Path, vectors: SteeringVectors, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``vectors`` (parameters and bases) and ``optimizer`` from ``path``; returns the JSON metadata.

    ``vectors`` and ``optimizer`` must have been built exactly as for the run that wrote the checkpoint.
    """
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / STATE_JSON).read_text())
        tensors = load_file(str(path / STATE_TENSORS))
    except Exception as err:  # OSError, JSON errors and safetensors' own error type
        raise CheckpointError(f"checkpoint {path} is unreadable ({first_line(err)}); delete it to "
                              "resume from the previous one") from None
    if meta["entries"] != [e.name for e in vectors.entries]:
        raise CheckpointError(f"checkpoint {path} holds entries {meta['entries']} but this run trains "
                              f"{[e.name for e in vectors.entries]}; resume with the run's own config")
    with torch.no_grad():
        for entry in vectors.entries:
            param = vectors.parameter(entry)
            param.copy_(tensors[f"param.{entry.name}"].to(param.device))
            basis = tensors.get(f"basis.{entry.name}")
            if basis is not None:
                vectors.set_basis(entry, basis)
    name_to_index = {}
    params = {e.name: vectors.parameter(e) for e in vectors.entries}
    index = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            name_to_index[next(n for n, p in params.items() if p is param)] = index
            index += 1
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optim."):
            name, _, field = key[len("optim."):].rpartition(".")
            state.setdefault(name_to_index[name], {})[field] = tensor
    groups = [{**g, "params": [name_to_index[n] for n in g["params"]]} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


@dataclass(frozen=True)
class Snapshot:
    """The trainer's state after ``step``, in memory: what :func:`save_checkpoint` would write at that step.

    The trainer takes one after each finished step, so when a signal stops a step half way (possibly in the
    middle of the optimizer's update) it can still checkpoint the last finished step exactly.
    """

    step: int
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: torch.Tensor

    @classmethod
    def take(cls, step: int, vectors: SteeringVectors, optimizer: torch.optim.Optimizer) -> Snapshot:
        params = {e.name: vectors.parameter(e).detach().clone() for e in vectors.entries}
        return cls(step, params, copy.deepcopy(optimizer.state_dict()), torch.get_rng_state())

    def restore(self, vectors: SteeringVectors, optimizer: torch.optim.Optimizer) -> None:
        """Put the state back into ``vectors`` and ``optimizer`` (the ones it was taken from)."""
        with torch.no_grad():
            for entry in vectors.entries:
                vectors.parameter(entry).copy_(self.params[entry.name])
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        torch.set_rng_state(self.rng)
