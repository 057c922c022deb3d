"""Steering vectors in other tools' formats: ``rlsteer export`` and ``rlsteer import``.

=========  =================================================  ==================================================
format     what                                               where rlsteer's vectors go
=========  =================================================  ==================================================
bias       a HF model folder (the authors' checkpoints)       ``model.layers.{ℓ}.mlp.down_proj.bias`` = resid_post.ℓ
npy        the authors' ``steering_vectors.npy``, ``[L, d]``  row ℓ = resid_post.ℓ
gguf       llama.cpp control vector (repeng's format)         tensor ``direction.{ℓ}`` = resid_post.ℓ, ℓ ≥ 1
lm-eval    lm-evaluation-harness ``steered`` model, ``.pt``   ``layers.{ℓ}`` = resid_post.ℓ, ``layers.{ℓ}.self_attn``
           (export only)                                      = attn_out.ℓ
=========  =================================================  ==================================================

All four formats index a vector by the block whose output it is added to. Export therefore writes
``resid_pre.ℓ`` (ℓ ≥ 1) as ``resid_post.ℓ−1``, the same tensor: block ℓ−1's output is block ℓ's input in every
supported family. It writes ``skip_layer`` as ``resid_post`` and ``full`` as ``resid_pre``, as the vLLM backend
does. Vectors that land on the same place are summed. The global scale is multiplied in. Import always
gives ``resid_post`` entries. Any other entry (per-head patches, ``ln*_out``, and ``attn_out`` outside lm-eval)
raises :class:`InteropError`. The message names the entry and the formats that can hold it.
:func:`export_caveats` says what the consuming tool gets wrong (lm-eval 0.4.8-0.4.9 with several hook points).

**llama.cpp's layer index, read in its source** (line numbers at ggerganov/llama.cpp c392e50):
``common/common.cpp:1935-1951`` (``common_control_vector_load_one``) parses ``direction.N`` and rejects N = 0,
which skips the whole file. ``:1973-1979`` then stores direction.N at offset n_embd·(N−1) of a buffer that
``include/llama.h:571-572`` says starts "from layer 1". ``src/llama-adapter.cpp:124-131``
(``llama_adapter_cvec::apply``) fills ``tensors[il]`` from offset n_embd·(il−1) for il = 1..n_layer−1, and
``:65`` never gives block 0 a tensor. ``:22-28`` (``apply_to``) adds ``tensors[il]`` to ``cur``.
``src/llama.cpp:1610-1614`` (``build_llama``) calls ``apply_to(ctx0, cur, il)`` right after the FFN residual
add and names the result ``l_out``; on ggml-org/llama.cpp master, ``src/models/llama.cpp`` has
``cur = build_cvec(cur, il); cb(cur, "l_out", il)`` in the same place. ``blk.{il}`` is HF's
``model.layers.{il}`` (gguf-py ``tensor_mapping.py``: ``model.layers.{bid}.mlp.down_proj`` → ``blk.{bid}.ffn_down``).
So **direction.N is resid_post.N**, and block 0's output cannot be steered. repeng (vgel/repeng 0ba7196) agrees:
``extract.py:137-146`` writes ``direction.{layer}`` for its layer ids; ``control.py:30-35, 149-197`` adds
``directions[i]`` to the output of ``model.layers[i]``; ``extract.py:274`` picks layers L−1…1 by default.
Import reads a ``direction.0`` as resid_post.0, which is repeng's meaning. Export refuses resid_post.0
because llama.cpp would reject the whole file; :func:`drop_unsupported` (``--drop-unsupported``) leaves it
out and says what share of the vectors' norm went with it. llama-cpp-python has no control-vector call, so
:func:`llama_cpp_cvec` builds the buffer its ``llama_set_adapter_cvec`` takes (block 1 first).

**lm-eval** (EleutherAI/lm-evaluation-harness 4e7e0d4, ``lm_eval/models/hf_steered.py``): ``:51-54`` resolves
hook names in ``model.base_model.named_modules()``, the decoder inside ``*ForCausalLM``, so the names are
``layers.{ℓ}``, not ``model.layers.{ℓ}``. ``:36-44`` adds the vector to the hooked module's output (or its first
element). ``:79-90`` gives the ``.pt`` layout. ``:124-131``: ``action="add"`` adds
vector × coefficient at every position and needs ``bias`` None.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from rlsteer.steering import SteeringVectors
    >>> sv = SteeringVectors.from_dict({1: torch.ones(8), 3: torch.full((8,), 2.0)})
    >>> out = export_vectors(sv, Path(tempfile.mkdtemp()) / "v.gguf", "gguf")
    >>> back = import_vectors(out, "gguf")
    >>> [e.name for e in back.entries], float(back.vector("resid_post.3")[0])
    (['resid_post.1', 'resid_post.3'], 2.0)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlsteer.bias_checkpoint import BiasCheckpointError, read_checkpoint_biases
from rlsteer.errors import first_line
from rlsteer.formats import (
    FORMATS,
    Dropped,
    InteropError,
    block_rows,
    check_fits,
    drop_unsupported,
    nonzero_rows,
    placed,
)
from rlsteer.identity import config_identity
from rlsteer.io import replacing, staged_folder
from rlsteer.models import load_model
from rlsteer.steering.vectors import SteeringVectors

IMPORT_FORMATS = ("bias", "npy", "gguf")

#: site → offset of the block whose output the vector is added to (the vLLM backend's table)
BIAS_SITE = "down_proj_bias"
_GGUF_ARCH = "controlvector"


# --------------------------------------------------------------------------------------------- dispatch


def export_vectors(vectors: SteeringVectors, out: str | os.PathLike[str], fmt: str, *, model: str | None = None,
                   dtype: str = "float32") -> Path:
    """Write ``vectors`` to ``out`` in format ``fmt`` (see the module table); the path written.

    ``model`` is the base model of a bias checkpoint (default: the one the vectors record). For the other
    formats it is optional and only checks that the vectors fit it. ``dtype`` is the bias checkpoint's
    weights dtype. Nothing is left at ``out`` when writing fails.
    """
    out = Path(out)
    if fmt == "bias":
        return export_bias(vectors, out, model=model, dtype=dtype)
    if fmt not in FORMATS:
        raise InteropError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    identity = config_identity(model) if model else None
    if identity is not None:
        check_fits(vectors.d_model, placed(vectors, fmt), identity)
    if fmt == "npy":
        n_layers = (identity or vectors.metadata).get("n_layers")
        if n_layers is None:
            raise InteropError("an [L, d] matrix needs the model's depth and these vectors do not record it; pass "
                               "--model SPEC")
        return export_npy(vectors, out, n_layers=int(n_layers))
    return export_gguf(vectors, out) if fmt == "gguf" else export_lm_eval(vectors, out)


def import_vectors(source: str | os.PathLike[str], fmt: str, *, model: str | None = None) -> SteeringVectors:
    """Read a bias checkpoint folder, an ``[L, d]`` .npy matrix or a GGUF control vector as ``resid_post`` vectors.

    ``model`` (a :func:`rlsteer.load_model` spec) is required for .npy, which records no model. For the
    other formats it overrides the recorded model. The vectors must fit it.
    """
    source = Path(source)
    if fmt not in IMPORT_FORMATS:
        hint = " (lm-eval files are export only)" if fmt == "lm-eval" else ""
        raise InteropError(f"unknown import format {fmt!r}{hint}; choose from {', '.join(IMPORT_FORMATS)}")
    if not source.exists():
        raise InteropError(f"{source} does not exist")
    if fmt == "npy" and not model:
        raise InteropError("an .npy matrix records no model; pass --model SPEC (the model it was trained on)")
    identity = config_identity(model) if model else None
    if fmt == "bias":
        rows, metadata = import_bias(source)
    elif fmt == "npy":
        rows, metadata = import_npy(source, n_layers=int(identity["n_layers"]) if identity else None)
    else:
        rows, metadata = import_gguf(source)
    if identity is not None:
        check_fits(next(iter(rows.values())).shape[0], {("block", k): v for k, v in rows.items()}, identity)
        metadata = {**metadata, **identity}
    return SteeringVectors.from_dict(dict(sorted(rows.items())), site="resid_post", metadata=metadata)


# ------------------------------------------------------------------------------------- bias checkpoint


def export_bias(vectors: SteeringVectors, out: Path, *, model: str | None = None,
                dtype: str = "float32") -> Path:
    """Save the base model with every block's ``mlp.down_proj.bias`` [d_model] set to its vector, as a model folder.

    Layers without a vector get a zero bias, as in the authors' checkpoints. ``config.json`` records
    ``rlsteer_steering`` (site, base model, steered layers, the vectors' metadata). :func:`rlsteer.load_model`
    loads the folder steered. The folder appears at once, from a staging folder beside it. Like the
    authors' bf16 checkpoints, ``dtype`` rounds the biases.
    """
    from rlsteer.architectures import architecture_of

    spec = model or vectors.metadata.get("model")
    if not spec:
        raise InteropError("these vectors record no model; pass --model SPEC (the base model to save)")
    revision = None if model else vectors.metadata.get("model_revision") or None
    rows = block_rows(vectors, "bias")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"{out} already exists; remove it or choose another folder")
    with staged_folder(out) as staging:
        base, tok = load_model(spec, dtype=dtype, revision=revision)
        vectors.validate(base)
        arch = architecture_of(base)
        for layer in range(arch.n_layers):
            down = arch.down_proj(layer)
            value = rows.get(layer, torch.zeros(arch.d_model))  # [d_model]
            down.bias = nn.Parameter(value.to(down.weight.dtype), requires_grad=False)
        config: Any = base.config
        for attr in ("rlsteer_source", "rlsteer_revision"):  # load_model's notes about where it came from
            if hasattr(config, attr):
                delattr(config, attr)
        config.rlsteer_steering = {"site": BIAS_SITE, "base_model": spec, "layers": sorted(nonzero_rows(rows)),
                                   "metadata": dict(vectors.metadata)}
        base.save_pretrained(staging)  # type: ignore[operator]  # transformers' stubs confuse mypy here
        tok.save_pretrained(staging)
    return out


def import_bias(folder: Path) -> tuple[dict[int, torch.Tensor], dict[str, str]]:
    """The non-zero ``down_proj`` biases of a model folder (layer → [d_model] fp32) and the vectors' metadata."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InteropError(f"{folder} is not a model folder (no config.json)")
    try:
        rows = read_checkpoint_biases(folder)
    except BiasCheckpointError as err:
        raise InteropError(str(err)) from None
    if not rows:
        raise InteropError(f"{folder} has no model.layers.*.mlp.down_proj.bias tensors: not a bias checkpoint")
    config = json.loads(config_file.read_text())
    recorded = config.get("rlsteer_steering")
    if recorded:  # written by export_bias
        metadata = {str(k): str(v) for k, v in (recorded.get("metadata") or {}).items()}
        metadata["model"] = str(recorded["base_model"])
    else:  # the authors' checkpoints: a hub id in _name_or_path, if anything
        metadata = {"source": str(folder)}
        if re.fullmatch(r"[\w.-]+/[\w.-]+", str(config.get("_name_or_path") or "")):
            metadata["model"] = str(config["_name_or_path"])
    return nonzero_rows(rows), metadata


# -------------------------------------------------------------------------------------------- npy matrix


def export_npy(vectors: SteeringVectors, out: Path, *, n_layers: int) -> Path:
    """Write the authors' ``[n_layers, d_model]`` float32 matrix: row ℓ = resid_post.ℓ, zeros elsewhere."""
    rows = block_rows(vectors, "npy")
    matrix = np.zeros((n_layers, vectors.d_model), dtype=np.float32)  # [L, d]
    for layer, value in rows.items():
        if layer >= n_layers:
            raise InteropError(f"a vector lands on block {layer} but the model has {n_layers} layers")
        matrix[layer] = value.numpy()
    with replacing(out) as tmp, open(tmp, "wb") as f:
        np.save(f, matrix, allow_pickle=False)
    return out


def import_npy(path: Path, *, n_layers: int | None = None) -> tuple[dict[int, torch.Tensor], dict[str, str]]:
    """Row ℓ of an ``[L, d]`` matrix → resid_post.ℓ, skipping all-zero rows (unless every row is zero)."""
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InteropError(f"{path} is not a numeric .npy matrix ({first_line(err)}); rlsteer never unpickles "
                           "object arrays") from None
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or matrix.dtype.kind != "f":
        raise InteropError(f"{path} holds {getattr(matrix, 'shape', '?')} {getattr(matrix, 'dtype', '')}; expected "
                           "a float [n_layers, d_model] matrix")
    if n_layers is not None and matrix.shape[0] != n_layers:
        raise InteropError(f"{path} has {matrix.shape[0]} rows but the model has {n_layers} layers; one row per "
                           "layer is expected")
    if not np.isfinite(matrix).all():
        raise InteropError(f"{path} contains NaN or inf")
    rows = {i: torch.from_numpy(np.array(row, dtype=np.float32)) for i, row in enumerate(matrix)}
    return nonzero_rows(rows), {"source": str(path)}


# ------------------------------------------------------------------------------------------ GGUF (llama.cpp)


def export_gguf(vectors: SteeringVectors, out: Path) -> Path:
    """A llama.cpp / repeng control vector: one F32 ``direction.{ℓ}`` [d_model] per block output ℓ ≥ 1.

    Keys as repeng writes them: ``controlvector.model_hint`` (the model type) and ``controlvector.layer_count``
    (the number of directions). The vectors' metadata goes under ``rlsteer.*``, which llama.cpp ignores.
    """
    import gguf

    rows = block_rows(vectors, "gguf")
    meta = vectors.metadata
    with replacing(out) as tmp:
        writer = gguf.GGUFWriter(tmp, _GGUF_ARCH)
        writer.add_string(f"{_GGUF_ARCH}.model_hint", meta.get("architecture") or meta.get("model") or "unknown")
        writer.add_uint32(f"{_GGUF_ARCH}.layer_count", len(rows))
        for key, text in sorted(meta.items()):  # add_string would drop empty values
            writer.add_key_value(f"rlsteer.{key}", text, gguf.GGUFValueType.STRING)
        for layer, value in rows.items():
            writer.add_tensor(f"direction.{layer}", value.numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def import_gguf(path: Path) -> tuple[dict[int, torch.Tensor], dict[str, str]]:
    """``direction.{ℓ}`` → resid_post.ℓ, with the ``rlsteer.*`` metadata rlsteer wrote (if any)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # gguf raises several types for bad or truncated files
        raise InteropError(f"{path} is not a readable GGUF file ({first_line(err)})") from None
    arch = _gguf_string(reader, "general.architecture")
    if arch != _GGUF_ARCH:
        raise InteropError(f"{path} is a GGUF of architecture {arch!r}, not a control vector ({_GGUF_ARCH!r})")
    rows: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        match = re.fullmatch(r"direction\.(\d+)", tensor.name)
        if match is None or tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise InteropError(f"{path}: tensor {tensor.name!r} ({tensor.tensor_type.name}, shape "
                               f"{list(tensor.shape)}) is not a 1-D F32 direction.N")
        rows[int(match.group(1))] = torch.from_numpy(np.array(tensor.data, dtype=np.float32))  # [d_model]
    if not rows:
        raise InteropError(f"{path} holds no direction tensors")
    if len({v.shape[0] for v in rows.values()}) != 1:
        raise InteropError(f"{path} has directions of different widths")
    metadata = {name[len("rlsteer."):]: _gguf_string(reader, name) or "" for name in reader.fields
                if name.startswith("rlsteer.")}
    if not metadata:  # a file from another tool (repeng, llama.cpp's cvector-generator)
        metadata = {"source": str(path), "model_hint": _gguf_string(reader, f"{_GGUF_ARCH}.model_hint") or ""}
    return dict(sorted(rows.items())), metadata


def llama_cpp_cvec(source: SteeringVectors | str | os.PathLike[str], *, strength: float = 1.0) -> np.ndarray:
    """The buffer llama.cpp's ``llama_set_adapter_cvec`` takes: float32 [n_embd · N], block 1's direction first.

    ``source`` is a GGUF control vector, a rlsteer vector file or a :class:`SteeringVectors`. Block ℓ's
    direction (resid_post.ℓ) sits at offset n_embd·(ℓ−1), zeros where there is none, up to the deepest
    block N that has one, as llama.cpp's own loader (``common_control_vector_load``) builds it, times
    ``strength`` (its ``--control-vector-scaled``). Block 0 has no slot: a ``direction.0`` or
    ``resid_post.0`` is an error (drop it with :func:`drop_unsupported` or ``--drop-unsupported``).

    Example:
        >>> sv = SteeringVectors.from_dict({1: torch.ones(2), 3: torch.full((2,), 3.0)})
        >>> llama_cpp_cvec(sv).tolist()
        [1.0, 1.0, 0.0, 0.0, 3.0, 3.0]
    """
    if isinstance(source, SteeringVectors):
        rows = block_rows(source, "gguf")
    elif Path(source).suffix.lower() == ".gguf":
        rows, _ = import_gguf(Path(source))
        if 0 in rows:
            raise InteropError(f"{source} has direction.0, which llama.cpp cannot apply (it rejects the whole file); "
                               "re-export the vectors with --drop-unsupported")
    else:
        rows = block_rows(SteeringVectors.load(source), "gguf")
    n_embd = next(iter(rows.values())).shape[0]
    buffer = np.zeros(n_embd * max(rows), dtype=np.float32)  # [n_embd · N]
    for layer, value in rows.items():
        buffer[n_embd * (layer - 1):n_embd * layer] = value.numpy() * np.float32(strength)
    return buffer


def _gguf_string(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------ lm-eval steered .pt


#: the install whose ``--model steered`` works: the ``hf`` extra brings accelerate, 0.4.10 fixed multi-hook files,
#: and 0.4.10-0.4.11 register "steered" as ``hf_steered:SteeredHF``, a class that does not exist, so loading
#: it raises "alias 'steered' already registered"; 0.4.12 names ``SteeredModel``
LM_EVAL_INSTALL = 'pip install "lm-eval[hf]>=0.4.12"'
_LM_EVAL_HOOKS = {"block": "layers.{}", "attn": "layers.{}.self_attn"}


def export_lm_eval(vectors: SteeringVectors, out: Path) -> Path:
    """lm-evaluation-harness's ``steered`` config: ``{hook: {"steering_vector": [d], "action": "add", …}}``.

    Hooks are ``layers.{ℓ}`` (block ℓ's output = resid_post.ℓ) and ``layers.{ℓ}.self_attn`` (attn_out.ℓ).
    Use it with ``lm_eval --model steered --model_args pretrained=MODEL,steer_path=OUT`` on lm-eval ≥ 0.4.12
    (see :func:`export_caveats`). The file holds only tensors, floats, strings and None, so
    ``torch.load(..., weights_only=True)`` reads it.
    """
    config = {hook: {"steering_vector": value, "steering_coefficient": 1.0, "action": "add", "bias": None,
                     "head_index": None} for hook, value in _lm_eval_vectors(vectors).items()}
    with replacing(out) as tmp:
        torch.save(config, tmp)
    return out


def _lm_eval_vectors(vectors: SteeringVectors) -> dict[str, torch.Tensor]:
    """hook point (``layers.1``, ``layers.2.self_attn``) → its summed effective vector [d_model]."""
    return {_LM_EVAL_HOOKS[kind].format(layer): value for (kind, layer), value in placed(vectors, "lm-eval").items()}


def export_caveats(vectors: SteeringVectors, fmt: str) -> list[str]:
    """What a user of ``vectors`` exported as ``fmt`` must know about the tool that reads it, one line each.

    lm-eval 0.4.8 and 0.4.9 build their ``add`` hooks as ``lambda acts: acts + steering_coefficient *
    steering_vector`` inside the loop over hook points (``lm_eval/models/hf_steered.py``), so every hook adds
    the last hook's vector; 0.4.10 binds each with ``functools.partial``. A file with one hook is right in all.

    Example:
        >>> sv = SteeringVectors.from_dict({1: torch.ones(2), 3: torch.ones(2)})
        >>> export_caveats(sv, "lm-eval")[0][:46], export_caveats(sv, "gguf")
        ('this file steers 2 hook points (layers.1, laye', [])
    """
    if fmt != "lm-eval":
        return []
    hooks = list(_lm_eval_vectors(vectors))
    if len(hooks) < 2:
        return []
    shown = ", ".join(hooks[:3]) + (", …" if len(hooks) > 3 else "")
    return [f"this file steers {len(hooks)} hook points ({shown}); lm-eval 0.4.8 and 0.4.9 add the last one's "
            f"vector at every hook, so use a later lm-eval: {LM_EVAL_INSTALL}"]


__all__ = ["FORMATS", "IMPORT_FORMATS", "LM_EVAL_INSTALL", "Dropped", "InteropError", "drop_unsupported",
           "export_caveats", "export_vectors", "import_vectors", "llama_cpp_cvec"]
