"""Frozen dataclass configs from YAML files plus ``section.key=value`` overrides.

Every stage has one config class made of small frozen sections; :func:`load_config` builds it from a YAML
file (or dict) and command-line overrides, checking every key and type, and suggesting the closest valid
key for a typo. :func:`config_hash` identifies a resolved config (it is recorded in vector files).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     lr: float = 1e-3
    ...     steps: int = 10
    >>> load_config(Opt, {"steps": 5}, ["lr=0.01"])
    Opt(lr=0.01, steps=5)
    >>> load_config(Opt, {}, ["lrr=1"])
    Traceback (most recent call last):
    ...
    rlsteer.config.ConfigError: unknown config key 'lrr'; did you mean 'lr'?
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from rlsteer.errors import RlsteerError

T = TypeVar("T")


class ConfigError(RlsteerError):
    pass


def load_config(cls: type[T], source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file or a dict, then apply ``key.path=value`` overrides (YAML values)."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        try:
            data = json.loads(json.dumps(source))  # a deep, plain copy
        except (TypeError, ValueError) as err:
            raise ConfigError(f"the config is not plain data ({err}); use mappings, lists, strings, numbers, "
                              "booleans and None") from None
    else:
        data = read_yaml(Path(source))
    source_protocol = data.get("protocol")
    greedy_n_in_source = (isinstance(source_protocol, Mapping) and bool(source_protocol.get("n"))
                          and source_protocol.get("temperature") == 0)
    keys = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value (e.g. rl.lr=1e-3)")
        keys.append(key.strip())
        _set_path(data, keys[-1].split("."), _override_value(key, raw))
    cfg = build(cls, data)
    _check_greedy_samples(cfg, greedy_n_in_source, keys)
    return cfg


def _override_value(key: str, raw: str) -> Any:
    """The YAML value of an override (empty: None); unparsable YAML is a one-line :class:`ConfigError`."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"override {key.strip()}={raw!r} is not a valid YAML value ({reason}); quote strings, "
                          "e.g. data.prefix='\"To\"'") from None


def _check_greedy_samples(cfg: Any, in_source: bool, override_keys: Sequence[str]) -> None:
    """Refuse ``protocol.n`` > 1 given explicitly together with ``protocol.temperature`` 0.

    Greedy decoding gives one sample per problem, and :meth:`ProtocolSection.samples` forces n = 1 when a
    sampled protocol (e.g. ``paper``) is made greedy with ``protocol.temperature=0``. An n > 1 set in the same
    file as temperature 0, or as an override, asks for something greedy decoding cannot give.
    """
    protocol = getattr(cfg, "protocol", None)
    if not isinstance(protocol, ProtocolSection) or protocol.temperature != 0:
        return
    many = {bench: n for bench, n in protocol.n.items() if n > 1}
    if not many:
        return
    in_overrides = any(k == "protocol.n" or k.startswith("protocol.n.") for k in override_keys)
    if in_overrides or in_source:
        shown = ", ".join(f"{b}: {n}" for b, n in many.items())
        raise ConfigError(f"protocol.n asks for several samples ({shown}) but protocol.temperature=0 (greedy) "
                          "gives one sample per problem; drop protocol.n or set protocol.temperature > 0")


PRESETS = Path(__file__).resolve().parent / "presets"


def preset_path(name: str | os.PathLike[str]) -> Path:
    """A config file: an existing path, else a preset shipped with rlsteer (``demo-cpu``, ``paper/…``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (PRESETS / path, PRESETS / f"{path}.yaml", PRESETS / path.name):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.rglob("*.yaml"))
    raise ConfigError(f"config file {path} does not exist and is not a preset; presets: {', '.join(names)}")


def read_yaml(path: Path) -> dict[str, Any]:
    path = preset_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not a {type(data).__name__}")
    return data


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Instantiate the dataclass ``cls`` from ``data``, recursively, with key and type checks."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key(prefix + str(key), [prefix + k for k in _all_keys(cls)]))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, RlsteerError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def _all_keys(cls: type) -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in _all_keys(hints[f.name])]
    return keys


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return f"unknown config key {key!r}; {hint}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        reasons = "; or ".join(e.removeprefix(f"{where}: ") for e in errors)
        raise ConfigError(f"{where}: {reasons}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, where + ".")  # type: ignore[arg-type]
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
                try:
                    return int(value)
                except ValueError:  # e.g. more digits than Python converts
                    pass
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Any) -> str:
    """A short, stable hash of a resolved config (sorted JSON, sha256, 12 hex digits)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ train config


@dataclass(frozen=True)
class ModelSection:
    """The frozen model: an alias, hub id, folder or .gguf file (see :func:`rlsteer.load_model`)."""

    name: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    revision: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class SteeringSection:
    """What is trained.

    Attributes:
        layers: "all" or a list of 0-based layers (``[k]`` is a single-layer run).
        sites: sites trained at each of those layers (``resid_post`` is the paper's default).
        head: head index for per-head sites (steer_q/k/v, steer_head, skip_head).
        orthogonal_to: vector files; each trained entry is kept orthogonal to the same entry in all of them.
        init: a vector file to start from instead of zeros.
        lr_per_layer: per-layer learning rates (layer → lr) overriding ``optim.lr``.
    """

    layers: Literal["all"] | tuple[int, ...] = "all"
    sites: tuple[str, ...] = ("resid_post",)
    head: int | None = None
    orthogonal_to: tuple[str, ...] = ()
    init: str | None = None
    lr_per_layer: dict[int, float] | None = None


@dataclass(frozen=True)
class DataSection:
    """Training problems and how they become prompts.

    Attributes:
        dataset: a registry name (``math_train``, ``gsm8k_train``, ``deepscaler``, ``synthetic-addition`` …),
            an HF dataset id, or a local JSONL/Parquet file or folder.
        data_dir: where registry names are looked up as ``<name>.jsonl`` (also ``$RLSTEER_DATA_DIR``).
        limit: use at most this many problems.
        shuffle_seed: the order of problems (one epoch is a fixed permutation per seed).
        template: ``qwen-math``, ``r1``, ``chat`` or ``plain``.
        prefix: text appended right after the generation prompt (the paper's "To"/"Step").
    """

    dataset: str = "math_train"
    data_dir: str | None = None
    limit: int | None = None
    shuffle_seed: int = 0
    template: str = "qwen-math"
    prefix: str | None = None


@dataclass(frozen=True)
class RolloutSection:
    """Sampling during training (paper: T = 1, top_p = 1, 4096 total tokens for Qwen-Math)."""

    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 4096
    max_total_tokens: int | None = 4096
    vllm_tensor_parallel_size: int = 1
    vllm_gpu_memory_utilization: float = 0.5
    vllm_enforce_eager: bool = False


@dataclass(frozen=True)
class RewardSection:
    """The reward: Math-Verify (±1 by default; ``zero_one`` for 0/1), or a first-token check for smoke runs.

    Attributes:
        kind: ``math`` (the paper) or ``first_token`` (+1 when the first generated token is ``target``).
        target: the token of ``first_token`` rewards; ``auto`` picks the base model's second most likely
            first token over the first step's prompts (likely enough to be sampled, not yet dominant).
        extraction: ``boxed`` (the last \\boxed{} / <answer>, the paper), ``number`` (the last number, for
            models that never box their answers) or ``any`` (Math-Verify's own extraction over the whole
            completion; it evaluates expressions, so restating "2 + 7" counts as 9 — avoid on arithmetic).
        mask_truncated: drop completions that hit the length limit from the loss (the authors keep them).
        timeout_s: hard per-answer verification timeout (the worker is killed past it).
        workers: verification processes.
    """

    kind: Literal["math", "first_token"] = "math"
    target: str | None = None
    values: Literal["pm1", "zero_one"] = "pm1"
    extraction: Literal["boxed", "number", "any"] = "boxed"
    mask_truncated: bool = False
    timeout_s: float = 5.0
    workers: int = 2


@dataclass(frozen=True)
class OptimSection:
    """Adam without weight decay, linear warmup then constant, global grad-norm clip (the authors')."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 10
    max_grad_norm: float = 2.0


@dataclass(frozen=True)
class RLSection:
    """RLOO: B prompts × N samples per step, one optimizer step per round.

    Attributes:
        share_prompts: prefill each distinct prompt once when sampling (HF backend), and process it once per
            micro-batch in the loss pass with its samples attending to its KV cache (the same numbers up to
            float rounding, fewer tokens through forward and backward); off computes every sample's prompt
            again, as other trainers do.
        gradient_checkpointing: recompute each layer's activations in the backward pass (less memory, one
            more forward); the loss pass then runs without the shared prompt cache.
    """

    steps: int = 314
    prompts_per_step: int = 128
    samples_per_prompt: int = 16
    baseline: Literal["loo", "mean", "group_std"] = "loo"
    micro_batch_size: int = 8
    seed: int = 0
    share_prompts: bool = True
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class RunSection:
    """Where the run lives and how it reports.

    Attributes:
        dir: the run directory (``{name}`` is replaced by ``name``).
        checkpoint_every: write ``checkpoints/step-N`` every this many steps (and at the end).
        logger: ``none``, ``tensorboard`` or ``wandb`` (extras; metrics.jsonl is always written).
        check_sync: after every step, check that all data-parallel ranks hold bit-identical vectors (a
            debug mode: one small all-gather per step; the checksum is logged in metrics.jsonl).
    """

    name: str = "run"
    dir: str = "runs/{name}"
    checkpoint_every: int = 50
    logger: Literal["none", "tensorboard", "wandb"] = "none"
    check_sync: bool = False

    @property
    def path(self) -> Path:
        return Path(self.dir.format(name=self.name))


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``rlsteer train`` needs; YAML sections mirror the attributes."""

    model: ModelSection = field(default_factory=ModelSection)
    steering: SteeringSection = field(default_factory=SteeringSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    reward: RewardSection = field(default_factory=RewardSection)
    optim: OptimSection = field(default_factory=OptimSection)
    rl: RLSection = field(default_factory=RLSection)
    run: RunSection = field(default_factory=RunSection)


# ------------------------------------------------------------------------------------------- eval config


@dataclass(frozen=True)
class EvalModelSection(ModelSection):
    """The model; ``name`` None takes the one the vectors were trained on (else SmolLM2)."""

    name: str | None = None  # type: ignore[assignment]


@dataclass(frozen=True)
class TargetSection:
    """What is evaluated: the base model, or vectors, possibly scaled, prefixed or patched into a circuit.

    Attributes:
        vectors: a vector file or a run directory (None: the base model).
        step: for a run directory, ``latest`` (its vectors.safetensors), a checkpoint step, or ``all``
            (every checkpoint, each into ``out/step-N``).
        scale: a multiplier on the vectors.
        prefix: text appended after the generation prompt (the paper's "To"); None takes the vectors'
            training prefix, "" forces none.
        template: prompt template; None takes the vectors' training template, else ``qwen-math``.
        patch: a circuit-patching variant (``full``, ``skip_attn``, ``skip_layer``, ``steer_q``, ``steer_k``,
            ``steer_v``, ``steer_head``, ``skip_head``) applied to one trained vector: the one at
            ``resid_post`` ℓ is patched into block ℓ + 1, the block it feeds (the paper moves s26 into block 27).
        patch_layer: the vector's layer (None: the file's only resid_post/resid_pre layer).
        patch_head: the head of per-head variants.
    """

    vectors: str | None = None
    step: int | Literal["latest", "all"] = "latest"
    scale: float = 1.0
    prefix: str | None = None
    template: str | None = None
    patch: str | None = None
    patch_layer: int | None = None
    patch_head: int | None = None


@dataclass(frozen=True)
class ProtocolSection:
    """How samples are drawn and scored (reference-semantics §3; presets ``paper``, ``paper-greedy``, ``gsm8k``).

    Attributes:
        benchmarks: registry names (aime24, aime25, amc23, math500, minerva_math, olympiadbench, gsm8k) or
            dataset files.
        n: samples per problem by benchmark (others: 1). With temperature 0 every benchmark takes n = 1,
            as in the authors' greedy configs; an n > 1 given together with temperature 0 (in one file, or
            as a ``protocol.n`` override) is an error.
        seeds: evaluation seeds; each gives every sample its own seed, so results do not depend on batching.
        limit: evaluate only the first problems of each benchmark (quick runs).
        extraction: ``boxed`` (the last \\boxed{}, the paper), ``number`` (the last number) or ``any``
            (Math-Verify over the whole completion), the latter two for models that never box answers.
        pass_k: the k of pass@k (default: 1, 2, 4, … up to n).
    """

    benchmarks: tuple[str, ...] = ("gsm8k",)
    n: dict[str, int] = field(default_factory=dict)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 4096
    max_total_tokens: int | None = 4096
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    data_dir: str | None = None
    extraction: Literal["boxed", "number", "any"] = "boxed"
    pass_k: tuple[int, ...] = ()

    def samples(self, benchmark: str) -> int:
        return 1 if self.temperature == 0 else self.n.get(benchmark, 1)


@dataclass(frozen=True)
class EngineSection:
    """Where samples come from and how they are scored.

    Attributes:
        backend: ``hf`` (transformers, any site or patch) or ``vllm`` (residual sites, much faster on GPU).
        batch_size: HF rows decoded together.
        chunk: requests generated, scored and written per round (resume granularity; None: batch_size for
            hf, 512 for vllm).
        reward_workers: Math-Verify processes (scoring overlaps the next chunk's generation).
    """

    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = 32
    chunk: int | None = None
    reward_workers: int = 2
    reward_timeout_s: float = 5.0
    vllm_tensor_parallel_size: int = 1
    vllm_gpu_memory_utilization: float = 0.5
    vllm_enforce_eager: bool = False


@dataclass(frozen=True)
class EvalConfig:
    """Everything ``rlsteer eval`` needs; ``out`` None writes to ``<run>/eval/<label>`` or ``evals/<label>``."""

    model: EvalModelSection = field(default_factory=EvalModelSection)
    target: TargetSection = field(default_factory=TargetSection)
    protocol: ProtocolSection = field(default_factory=ProtocolSection)
    engine: EngineSection = field(default_factory=EngineSection)
    out: str | None = None
