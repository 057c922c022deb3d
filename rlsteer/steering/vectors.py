"""``SteeringVectors``: a set of (site, layer[, head]) → fp32 vector entries, trainable and savable.

Example:
    >>> import torch
    >>> from rlsteer.steering import SteeringVectors
    >>> sv = SteeringVectors(64, layers=[2, 3])           # two zero resid_post vectors, trainable
    >>> [e.name for e in sv.entries]
    ['resid_post.2', 'resid_post.3']
    >>> sv2 = SteeringVectors.from_dict({3: torch.ones(64)})
    >>> float((sv + 2 * sv2).vector(("resid_post", 3))[0])
    2.0
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.errors import RlsteerError, first_line
from rlsteer.io import write_atomically
from rlsteer.steering.constraints import orthonormal_basis, project_out
from rlsteer.steering.sites import Entry, SiteError, head_limit

FORMAT = "rlsteer.steering_vectors/1"

EntryLike = Entry | tuple[str, int] | tuple[str, int, int | None] | str


class VectorFileError(RlsteerError):
    """A vector file that cannot be read, or does not fit the model it is loaded for."""


def as_entry(entry: EntryLike) -> Entry:
    if isinstance(entry, Entry):
        return entry
    if isinstance(entry, str):
        return Entry.parse(entry)
    return Entry(*entry)


def _key(entry: Entry) -> str:  # nn.ParameterDict keys may not contain "."
    return entry.name.replace(".", "__")


class SteeringVectors(nn.Module):
    """Steering vectors: one fp32 parameter [d_model] per entry, zero-initialised.

    Args:
        d_model: the model width.
        entries: (site, layer[, head]) entries; or use ``layers`` with one ``site`` for all of them.
        layers: shorthand for ``[(site, l) for l in layers]``.
        site: the site used with ``layers``.
        scale: a global multiplier applied when the vectors are added.
        trainable: whether the vectors require grad.
        metadata: str → str pairs saved in the file header (model id, template, config hash, …).

    The effective vector of an entry is ``scale · (I − BBᵀ) u`` where u is the parameter and B the
    optional orthonormal basis set by :meth:`constrain_orthogonal` (identity when unconstrained).
    """

    def __init__(self, d_model: int, entries: Iterable[EntryLike] = (), *, layers: Iterable[int] = (),
                 site: str = "resid_post", scale: float = 1.0, trainable: bool = True,
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__()
        if d_model <= 0:
            raise ValueError(f"d_model must be positive, got {d_model}")
        self.d_model = int(d_model)
        self.scale = float(scale)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.params = nn.ParameterDict()
        self._entries: dict[str, Entry] = {}
        self._bases: dict[str, torch.Tensor] = {}
        for entry in [*map(as_entry, entries), *(Entry(site, int(layer)) for layer in layers)]:
            self.add(entry, trainable=trainable)

    # ---------------------------------------------------------------------------------- construction

    def add(self, entry: EntryLike, value: torch.Tensor | None = None, *, trainable: bool = True) -> Entry:
        """Add an entry (zero unless ``value`` [d_model] is given); an existing entry is an error."""
        entry = as_entry(entry)
        key = _key(entry)
        if key in self.params:
            raise SiteError(f"entry {entry.name} is already in this set")
        data = torch.zeros(self.d_model, dtype=torch.float32)
        if value is not None:
            value = torch.as_tensor(value).detach()
            if value.shape != (self.d_model,):
                raise VectorFileError(f"vector for {entry.name} has shape {tuple(value.shape)}; expected "
                                      f"({self.d_model},)")
            data = value.to(torch.float32).clone()
        device = next(iter(self.params.values())).device if len(self.params) else None
        self.params[key] = nn.Parameter(data.to(device) if device is not None else data,
                                        requires_grad=trainable)
        self._entries[key] = entry
        return entry

    @classmethod
    def from_dict(cls, vectors: Mapping[int, torch.Tensor] | Mapping[EntryLike, torch.Tensor], *,
                  site: str = "resid_post", trainable: bool = False, **kwargs: Any) -> SteeringVectors:
        """Copy ``{layer: tensor}`` (meaning ``site`` at those layers) or ``{entry: tensor}`` into a set."""
        if not vectors:
            raise ValueError("from_dict needs at least one vector")
        items = [(Entry(site, k) if isinstance(k, int) else as_entry(k), v) for k, v in vectors.items()]
        d_model = int(torch.as_tensor(items[0][1]).shape[-1])
        out = cls(d_model, **kwargs)
        for entry, value in items:
            out.add(entry, value, trainable=trainable)
        return out

    @classmethod
    def for_model(cls, model: nn.Module, layers: Iterable[int] | str = "all", *, site: str = "resid_post",
                  **kwargs: Any) -> SteeringVectors:
        """Zero vectors sized for ``model`` at ``layers`` ("all" or a list), with its identity as metadata."""
        from rlsteer.architectures import architecture_of
        from rlsteer.identity import model_identity

        arch = architecture_of(model)
        chosen = range(arch.n_layers) if layers == "all" else layers
        metadata = {**model_identity(model), **kwargs.pop("metadata", {})}
        out = cls(arch.d_model, layers=[int(x) for x in chosen], site=site, metadata=metadata, **kwargs)
        return out.to(next(model.parameters()).device)

    # ------------------------------------------------------------------------------------------ access

    @property
    def entries(self) -> list[Entry]:
        return sorted(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: object) -> bool:
        try:
            return _key(as_entry(entry)) in self.params  # type: ignore[arg-type]
        except (SiteError, TypeError):
            return False

    def parameter(self, entry: EntryLike) -> nn.Parameter:
        """The trained parameter u of an entry (before projection and scale)."""
        entry = as_entry(entry)
        try:
            return self.params[_key(entry)]
        except KeyError:
            raise KeyError(f"no entry {entry.name}; entries: {[e.name for e in self.entries]}") from None

    def vector(self, entry: EntryLike, *, scaled: bool = True) -> torch.Tensor:
        """The effective vector [d_model] of an entry, differentiable w.r.t. its parameter."""
        entry = as_entry(entry)
        u = self.parameter(entry)
        basis = self._bases.get(_key(entry))
        s = u if basis is None else project_out(u, basis.to(u.device))
        return s * self.scale if scaled and self.scale != 1.0 else s

    def vectors(self, *, scaled: bool = True) -> dict[Entry, torch.Tensor]:
        return {e: self.vector(e, scaled=scaled) for e in self.entries}

    def set_trainable(self, entries: Iterable[EntryLike] | None = None) -> None:
        """Make exactly ``entries`` trainable (all when None); the rest are frozen."""
        chosen = None if entries is None else {_key(as_entry(e)) for e in entries}
        for key, param in self.params.items():
            param.requires_grad_(chosen is None or key in chosen)

    def trainable_entries(self) -> list[Entry]:
        return [self._entries[k] for k, p in self.params.items() if p.requires_grad]

    def norms(self) -> dict[str, float]:
        return {e.name: float(v.detach().norm()) for e, v in self.vectors().items()}

    # ----------------------------------------------------------------------------------- constraints

    def constrain_orthogonal(self, entry: EntryLike, against: torch.Tensor) -> None:
        """Keep ``entry`` orthogonal to the rows of ``against`` [k, d]: s = (I − BBᵀ)u from now on."""
        entry = as_entry(entry)
        u = self.parameter(entry)
        against = torch.as_tensor(against)
        if against.shape[-1] != self.d_model:
            raise VectorFileError(f"orthogonality targets have width {against.shape[-1]}, vectors {self.d_model}")
        self._bases[_key(entry)] = orthonormal_basis(against).to(u.device)

    def basis(self, entry: EntryLike) -> torch.Tensor | None:
        return self._bases.get(_key(as_entry(entry)))

    def set_basis(self, entry: EntryLike, basis: torch.Tensor) -> None:
        """Restore an orthonormal basis [k, d] saved from :meth:`basis` (a checkpoint's), as it is."""
        self._bases[_key(as_entry(entry))] = basis.to(self.parameter(entry).device)

    def _apply(self, fn: Any, recurse: bool = True) -> SteeringVectors:
        """Follow ``.to(device)`` with the orthogonality bases, which stay fp32 whatever the dtype."""
        super()._apply(fn, recurse)
        device = fn(torch.zeros(())).device
        self._bases = {k: b.to(device) for k, b in self._bases.items()}
        return self

    # -------------------------------------------------------------------------------------- algebra

    def _combine(self, other: SteeringVectors, sign: float) -> SteeringVectors:
        if not isinstance(other, SteeringVectors):
            return NotImplemented
        if other.d_model != self.d_model:
            raise ValueError(f"cannot combine vectors of width {self.d_model} and {other.d_model}")
        mine, theirs = self.vectors(), other.vectors()
        out = SteeringVectors(self.d_model, metadata=self.metadata, trainable=False)
        for entry in sorted(set(mine) | set(theirs)):
            a = mine.get(entry)
            b = theirs.get(entry)
            value = (a.detach().cpu() if a is not None else 0) + sign * (b.detach().cpu() if b is not None else 0)
            out.add(entry, torch.as_tensor(value), trainable=False)
        return out

    def __add__(self, other: SteeringVectors) -> SteeringVectors:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVectors) -> SteeringVectors:
        return self._combine(other, -1.0)

    def __mul__(self, factor: float) -> SteeringVectors:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        out = SteeringVectors(self.d_model, metadata=self.metadata, trainable=False)
        for entry, v in self.vectors().items():
            out.add(entry, v.detach().cpu() * float(factor), trainable=False)
        return out

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVectors:
        return self * -1.0

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self.entries[:6]) + (", …" if len(self) > 6 else "")
        return f"SteeringVectors(d_model={self.d_model}, n={len(self)}, scale={self.scale}, entries=[{names}])"

    # -------------------------------------------------------------------------------------- validation

    def validate(self, model: nn.Module) -> None:
        """Raise :class:`VectorFileError` unless every entry fits ``model`` (width, layer and head indices)."""
        from rlsteer.architectures import architecture_of

        check_entries_fit(architecture_of(model), self.d_model, self.entries, self.metadata)

    # ----------------------------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str], **metadata: str) -> Path:
        """Write a safetensors file: fp32 tensor ``{site}.{layer}[.{head}]`` per entry, metadata in the header.

        The projected (constrained) vectors are saved, without the global scale, which goes to the header.
        The file appears atomically (temp file + rename); its bytes depend only on the vectors and the
        metadata (the header in a canonical order), and a file that already holds them is not rewritten.
        """
        from safetensors.torch import save

        import rlsteer

        path = Path(path)
        header = {**self.metadata, **{k: str(v) for k, v in metadata.items()}}
        header.update(format=FORMAT, rlsteer_version=rlsteer.__version__, d_model=str(self.d_model),
                      scale=repr(self.scale))
        tensors = {e.name: v.detach().to("cpu", torch.float32).contiguous()
                   for e, v in self.vectors(scaled=False).items()}
        data = _canonical(save(tensors, metadata=header))
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path  # unchanged: the file, its sha256 and its mtime stay as they are
        write_atomically(path, data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str] | VectorFile, model: nn.Module | None = None, *,
             trainable: bool = False) -> SteeringVectors:
        """Read a vector file (never pickle), or take one already read; with ``model``, check that it fits and
        move it to its device."""
        file = path if isinstance(path, VectorFile) else open_vector_file(path)
        tensors, header = file.tensors, file.header
        d_model = int(header["d_model"])
        out = cls(d_model, scale=float(header.get("scale", "1.0")), metadata=_user_metadata(header))
        for name, value in sorted(tensors.items()):
            out.add(Entry.parse(name), value, trainable=trainable)
        if model is not None:
            out.validate(model)
            out = out.to(next(model.parameters()).device)
        return out


_RESERVED = ("format", "rlsteer_version", "d_model", "scale")


def _canonical(data: bytes) -> bytes:
    """safetensors bytes with the JSON header's keys sorted (``__metadata__`` first). safetensors writes the
    metadata in hash-map order, which changes from one process to the next, so the same vectors would
    otherwise get another sha256 each time they are saved. The tensors' bytes and offsets are untouched."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the tensors' data starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


def _user_metadata(header: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in header.items() if k not in _RESERVED}


@dataclass(frozen=True)
class VectorFile:
    """A vector file read once: its fp32 tensors by entry name, its header, and the sha256 of its bytes."""

    path: Path
    tensors: dict[str, torch.Tensor]
    header: dict[str, str]
    sha256: str

    @property
    def tensors_sha256(self) -> str:
        """A sha256 of what the file steers with: each entry's name, shape and fp32 values, and the scale;
        the same for two files that differ only in other metadata or in the order of their header."""
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            tensor = self.tensors[name].to(torch.float32).contiguous()
            h.update(f"{name}{tuple(tensor.shape)}".encode())
            h.update(tensor.numpy().tobytes())
        h.update(f"scale={float(self.header.get('scale', '1.0'))!r}".encode())
        return h.hexdigest()


def read_vector_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a vector file, validated; every failure is one :class:`VectorFileError` line."""
    file = open_vector_file(path)
    return file.tensors, file.header


def read_vector_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """A vector file's header (metadata) without reading its tensors; an unreadable file is the same one-line
    :class:`VectorFileError` as :func:`open_vector_file` gives."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - let the full reader say what is wrong
        return open_vector_file(path).header


def open_vector_file(path: str | os.PathLike[str]) -> VectorFile:
    """Read a vector file in one pass (its bytes give the tensors, the header and the sha256), validated;
    every failure is one :class:`VectorFileError` line."""
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"vector file {path} does not exist")
    try:
        data = path.read_bytes()
        tensors = load_safetensors(data)
        header = _safetensors_metadata(data)
    except Exception as err:  # safetensors raises several types for bad headers and truncated data
        kind = _foreign_kind(path)
        if kind is not None:
            raise VectorFileError(f"{path} is {kind}, not a safetensors vector file; rlsteer never unpickles "
                                  "files: convert it with `rlsteer import` or save the vectors with "
                                  "SteeringVectors.save") from None
        raise VectorFileError(f"{path} is not a readable safetensors vector file ({first_line(err)}); "
                              "rlsteer reads only safetensors files written by SteeringVectors.save "
                              "or `rlsteer export`") from None
    if not tensors:
        raise VectorFileError(f"{path} holds no vectors")
    widths = {t.shape[-1] if t.ndim else 0 for t in tensors.values()}
    if "d_model" not in header:
        if len(widths) != 1:
            raise VectorFileError(f"{path} has vectors of different widths {sorted(widths)}")
        header["d_model"] = str(widths.pop())
    try:
        d_model = int(header["d_model"])
    except ValueError:
        d_model = 0
    if d_model <= 0:
        raise VectorFileError(f"{path}: header d_model {header['d_model']!r} is not a positive integer; the file "
                              "is damaged, save the vectors again")
    seen: dict[Entry, str] = {}
    for name, t in tensors.items():
        try:
            entry = Entry.parse(name)
        except SiteError as err:
            raise VectorFileError(f"{path}: tensor {name!r} is not a steering entry ({err})") from None
        if entry in seen:
            raise VectorFileError(f"{path}: tensors {seen[entry]!r} and {name!r} are both entry {entry.name}; "
                                  "the file is damaged, save the vectors again")
        seen[entry] = name
        if t.ndim != 1 or t.shape[0] != d_model:
            raise VectorFileError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected ({d_model},)")
        if not t.is_floating_point():
            raise VectorFileError(f"{path}: tensor {name} has dtype {t.dtype}, expected a float dtype")
        if not bool(torch.isfinite(t.to(torch.float32)).all()):  # (isfinite lacks some float8 kernels)
            raise VectorFileError(f"{path}: tensor {name} contains NaN or inf")
    scale = header.get("scale", "1.0")
    try:
        if not math.isfinite(float(scale)):
            raise ValueError
    except ValueError:
        raise VectorFileError(f"{path}: header scale {scale!r} is not a finite number") from None
    return VectorFile(path, {k: v.to(torch.float32) for k, v in tensors.items()}, header,
                      hashlib.sha256(data).hexdigest())


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (the format: an 8-byte little-endian header length,
    then the JSON header); called after safetensors itself parsed the same bytes."""
    length = int.from_bytes(data[:8], "little")
    return {str(k): str(v) for k, v in (json.loads(data[8:8 + length]).get("__metadata__") or {}).items()}


def check_entries_fit(arch: Any, d_model: int, entries: Iterable[Entry], metadata: Mapping[str, str]) -> None:
    """Raise :class:`VectorFileError` if the entries do not fit the architecture ``arch``."""
    made_for = metadata.get("model") or "another model"
    if d_model != arch.d_model:
        raise VectorFileError(f"these vectors have width {d_model} (made for {made_for}) but the model has "
                              f"d_model={arch.d_model}; load vectors trained for this model")
    for entry in entries:
        if entry.layer >= arch.n_layers:
            raise VectorFileError(f"entry {entry.name}: layer {entry.layer} is out of range, the model has "
                                  f"{arch.n_layers} layers (0..{arch.n_layers - 1}); made for {made_for}")
        if entry.head is not None:
            limit, kind = head_limit(entry.site, arch.n_heads, arch.n_kv_heads)
            if entry.head >= limit:
                raise VectorFileError(f"entry {entry.name}: head {entry.head} is out of range, the model has "
                                      f"{limit} {kind} (0..{limit - 1}); made for {made_for}")


_MAGIC = ((b"PK\x03\x04", "a zip archive (torch.save's format)"), (b"\x80", "a Python pickle (torch.save)"),
          (b"\x93NUMPY", "a .npy array"), (b"GGUF", "a GGUF file"))


def _foreign_kind(path: Path) -> str | None:
    """What an unreadable vector file looks like by its first bytes alone (None: unknown); never deserialises."""
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except OSError:
        return None
    return next((kind for magic, kind in _MAGIC if start.startswith(magic)), None)

