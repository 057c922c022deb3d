"""rlsteer's configs: ``TrainConfig`` (``rlsteer train``) and ``EvalConfig`` (``rlsteer eval``), each made of
small frozen sections that YAML files and ``section.key=value`` overrides fill (:mod:`rlsteer.configload`).

Sections that mean the same thing in training and evaluation are one class: sampling settings
(:class:`SamplingSection`: ``rollout.*`` and ``protocol.*``), the rollout engine (:class:`BackendSection`:
``rollout.*`` and ``engine.*``) and the reward's workers and user functions (:class:`RewardFunctionsSection`:
``reward.*`` in both, so training and evaluation score completions the same way).

Longer than most modules because it declares every section with its documented fields and their valid
ranges: it is the reference for every key a YAML file or an override can set.

Example:
    >>> cfg = load_config(TrainConfig, "smoke", ["rl.steps=3"])
    >>> cfg.rl.steps, cfg.rollout.temperature
    (3, 0.3)
    >>> load_config(EvalConfig, None, ["engine.reward_workers=0"])
    Traceback (most recent call last):
    ...
    rlsteer.configload.ConfigError: config key 'engine.reward_workers' is now 'reward.workers'; write reward.workers=0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from rlsteer.configload import (
    PRESETS,
    ConfigError,
    Loaded,
    build,
    config_hash,
    dump_yaml,
    load_config,
    preset_path,
    ranged,
    read_yaml,
    to_dict,
)
from rlsteer.rundir import CONFIG, RunDir
from rlsteer.templates import DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from rlsteer.rollout.base import SamplingParams

__all__ = ["PRESETS", "ConfigError", "EvalConfig", "TrainConfig", "build", "config_hash", "dump_yaml", "load_config",
           "load_train_config", "preset_path", "read_yaml", "to_dict"]


# ------------------------------------------------------------------------------------------ shared sections


@dataclass(frozen=True)
class SamplingSection:
    """How completions are sampled (paper: T = 1, top_p = 1, 4096 total tokens for Qwen-Math).

    Attributes:
        temperature: softmax temperature; 0 is greedy.
        top_p: nucleus mass kept (1 = off).
        top_k: keep the k most likely tokens (-1 = off).
        max_new_tokens: generated tokens per completion at most.
        max_total_tokens: prompt + completion at most (None: no limit); the tighter limit wins.
    """

    temperature: float = ranged(1.0, ge=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    top_k: int = ranged(-1, ge=-1, why="-1 or 0 is off")
    max_new_tokens: int = ranged(4096, ge=1)
    max_total_tokens: int | None = ranged(4096, ge=2, why="the prompt and at least one new token")

    def sampling(self, *, logprobs: bool = False) -> SamplingParams:
        """These settings as the backends' :class:`rlsteer.rollout.SamplingParams`."""
        from rlsteer.rollout.base import SamplingParams

        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, max_total_tokens=self.max_total_tokens,
                              logprobs=logprobs)


@dataclass(frozen=True)
class BackendSection:
    """The rollout engine (:func:`rlsteer.rollout.factory.make_backend` builds it).

    Attributes:
        backend: ``hf`` (transformers, any site or patch) or ``vllm`` (residual sites, much faster on GPU).
        batch_size: HF rows decoded together.
        vllm_tensor_parallel_size: GPUs per vLLM engine.
        vllm_gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache).
        vllm_enforce_eager: skip vLLM's graph capture (faster start, slower decoding).
    """

    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = ranged(32, ge=1)
    vllm_tensor_parallel_size: int = ranged(1, ge=1)
    vllm_gpu_memory_utilization: float = ranged(0.5, gt=0, le=1)
    vllm_enforce_eager: bool = False


@dataclass(frozen=True)
class VerifierSection:
    """Where rewards are computed: in this process, or in worker processes with a per-answer deadline.

    Attributes:
        timeout_s: hard per-answer timeout in worker processes (the worker is killed past it).
        workers: processes; 0 computes rewards in this process, without a timeout. None (the default) takes
            2 for Math-Verify and 0 for reward functions from user code (see :class:`RewardFunctionsSection`).
    """

    timeout_s: float = ranged(5.0, gt=0)
    workers: int | None = ranged(None, ge=0, why="0 computes rewards in this process, without a deadline")

    def worker_count(self, *, functions: bool) -> int:
        """``workers``, or its default: 2 Math-Verify processes, none (this process) for user functions."""
        if self.workers is not None:
            return self.workers
        return 0 if functions else 2


@dataclass(frozen=True)
class RewardFunction:
    """One term of a weighted reward: ``function`` (``package.module:fn`` or ``file.py:fn``), its ``weight``,
    and the ``name`` its rewards are logged under (default: the function's name)."""

    function: str
    weight: float = 1.0
    name: str | None = None


@dataclass(frozen=True)
class RewardFunctionsSection(VerifierSection):
    """Rewards from user code, the same in training and evaluation (:mod:`rlsteer.reward_functions`).

    Attributes:
        function: one reward function, ``package.module:fn`` or ``path/to/file.py:fn``, called as
            ``fn(completions, *, problems, answers, **fields) -> list[float]``.
        functions: several, summed with weights: ``[{function: …, weight: …, name: …}]`` (each function's own
            rewards are logged as ``reward/<name>``).
        success_above: a completion counts as a success (training accuracy; evaluation's first, avg@n and
            pass@k) when its total reward is above this.
        timeout_s, workers: where the functions run. ``workers`` 0 (the default for user functions) calls each
            function once per batch in this process, with no timeout; ``workers`` > 0 calls it once per
            completion in that many worker processes (per function), each call within ``timeout_s`` seconds (a
            function that hangs then stops the run with an error instead of stalling it).
    """

    function: str | None = None
    functions: tuple[RewardFunction, ...] = ()
    success_above: float = 0.0

    def __post_init__(self) -> None:
        if self.function is not None and self.functions:
            raise ConfigError("reward.function and reward.functions are both set; give one function, or list them "
                              "all in reward.functions")

    def entries(self) -> tuple[tuple[str, float, str | None], ...]:
        """``(function, weight, name)`` of every term; empty when no user function is set."""
        if self.function is not None:
            return ((self.function, 1.0, None),)
        return tuple((f.function, f.weight, f.name) for f in self.functions)


@dataclass(frozen=True)
class ModelSection:
    """The frozen model: an alias, hub id, folder or .gguf file (see :func:`rlsteer.load_model`).

    ``dtype`` ``auto`` is the checkpoint's own dtype on a GPU and float32 on a CPU.
    """

    name: str = "smollm2-135m-instruct"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
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

    layers: Literal["all"] | tuple[int, ...] = ranged("all", ge=0)
    sites: tuple[str, ...] = ("resid_post",)
    head: int | None = ranged(None, ge=0)
    orthogonal_to: tuple[str, ...] = ()
    init: str | None = None
    lr_per_layer: dict[int, float] | None = ranged(None, gt=0, le=1)


@dataclass(frozen=True)
class DataSection:
    """Training problems and how they become prompts.

    Attributes:
        dataset: a registry name (``math_train``, ``gsm8k_train``, ``deepscaler``, ``synthetic-addition`` …),
            an HF dataset id, or a local JSONL/Parquet file or folder.
        data_dir: where registry names are looked up as ``<name>.jsonl`` (also ``$RLSTEER_DATA_DIR``).
        limit: use at most this many problems.
        shuffle_seed: the order of problems (one epoch is a fixed permutation per seed).
        holdout: keep this many problems (drawn by ``shuffle_seed``) out of training and write them to
            ``RUN/holdout.jsonl``, a validation split to select checkpoints on (:mod:`rlsteer.selection`).
        template: ``qwen-math``, ``r1``, ``chat`` or ``plain``.
        prefix: text appended right after the generation prompt (the paper's "To"/"Step").
        problem_field, answer_field: the columns of a dataset file (or function) that hold the problem and the
            gold answer; ``answer_field`` None for rewards that need no gold. The other columns reach reward
            functions as keyword lists.
    """

    dataset: str = "math_train"
    data_dir: str | None = None
    limit: int | None = ranged(None, ge=1)
    shuffle_seed: int = 0
    holdout: int = 0
    template: str = DEFAULT_TEMPLATE
    prefix: str | None = None
    problem_field: str = "problem"
    answer_field: str | None = "answer"


@dataclass(frozen=True)
class RolloutSection(BackendSection, SamplingSection):
    """Sampling during training, and the engine that samples (the fields of both sections)."""


@dataclass(frozen=True)
class RewardSection(RewardFunctionsSection):
    """The reward: Math-Verify (±1 by default; ``zero_one`` for 0/1), functions from user code, or a
    first-token check for smoke runs.

    Attributes:
        kind: ``math`` (the paper), ``python`` (``function`` / ``functions``: reward functions from user code,
            see :class:`RewardFunctionsSection`) or ``first_token`` (+1 when the first generated token is
            ``target``).
        target: the token of ``first_token`` rewards; ``auto`` picks the base model's second most likely
            first token over the first step's prompts (likely enough to be sampled, not yet dominant).
        extraction: ``boxed`` (the last \\boxed{} / <answer>, the paper), ``number`` (the last number, for
            models that never box their answers) or ``any`` (Math-Verify's own extraction over the whole
            completion; it evaluates expressions, so restating "2 + 7" counts as 9 — avoid on arithmetic).
        mask_truncated: drop completions that hit the length limit from the loss (the authors keep them).
        normalize_scientific: rewrite e-notation (``4.5e33``) in golds and answers as ``4.5 \\times 10^{33}``
            before verifying (Math-Verify reads ``e`` as Euler's number); the authors do not.
        function, functions, success_above: the user functions of ``kind: python``.
        timeout_s, workers: where rewards are computed (:class:`VerifierSection`).
    """

    kind: Literal["math", "python", "first_token"] = "math"
    target: str | None = None
    values: Literal["pm1", "zero_one"] = "pm1"
    extraction: Literal["boxed", "number", "any"] = "boxed"
    mask_truncated: bool = False
    normalize_scientific: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind == "python" and not self.entries():
            raise ConfigError("reward.kind=python needs reward.function (package.module:fn or path/to/file.py:fn) "
                              "or reward.functions")
        if self.kind != "python" and self.entries():
            raise ConfigError(f"reward.function(s) is set but reward.kind={self.kind}; set reward.kind=python to "
                              "train with it")


@dataclass(frozen=True)
class OptimSection:
    """Adam without weight decay, linear warmup then constant, global grad-norm clip (the authors')."""

    lr: float = ranged(1e-3, gt=0, le=1, why="Adam moves every coordinate by about lr per step")
    betas: tuple[float, float] = ranged((0.9, 0.999), ge=0, lt=1)
    eps: float = ranged(1e-8, gt=0)
    warmup_steps: int = ranged(10, ge=0)
    max_grad_norm: float = ranged(2.0, gt=0)


@dataclass(frozen=True)
class RLSection:
    """RLOO: B prompts × N samples per step, one optimizer step per round.

    Attributes:
        micro_batch_tokens: the loss pass's token budget per micro-batch: consecutive samples are packed
            into one row until it would hold more tokens than this (shared prompts counted once; a longer
            sample gets a row of its own). Gradients accumulate over micro-batches into one optimizer step.
        micro_batch_size: also at most this many samples per micro-batch (null: no count limit).
        pack: run each micro-batch as one packed row without padding (per-sequence positions, attention
            kept inside each sequence); off pads every sample to the longest of its micro-batch. The same
            log-probs and gradients up to float rounding.
        share_prompts: prefill each distinct prompt once when sampling (HF backend), and process it once per
            micro-batch in the loss pass with its samples attending to it (the same numbers up to float
            rounding, fewer tokens through forward and backward); off computes every sample's prompt again,
            as other trainers do.
        gradient_checkpointing: recompute each layer's activations in the backward pass (less memory, one
            more forward). Unpacked, the loss pass then runs without sharing prompts (that needs a KV cache).
    """

    steps: int = ranged(314, ge=1)
    prompts_per_step: int = ranged(128, ge=1)
    samples_per_prompt: int = ranged(16, ge=2, why="each sample's baseline is the other samples of its prompt")
    baseline: Literal["loo", "mean", "group_std"] = "loo"
    micro_batch_tokens: int | None = ranged(8192, ge=1)
    micro_batch_size: int | None = ranged(None, ge=1)
    seed: int = 0
    pack: bool = True
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
    checkpoint_every: int = ranged(50, ge=1)
    logger: Literal["none", "tensorboard", "wandb"] = "none"
    check_sync: bool = False

    def __post_init__(self) -> None:
        name = self.name
        if name in ("", ".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
            raise ConfigError(f"run.name={name!r} is not a folder name: it may not be empty, '.' or '..' nor hold "
                              "'/' or '\\' (it would write outside run.dir's folder); give a plain name and put "
                              "the run elsewhere with run.dir, e.g. run.dir=/data/runs/{name}")

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


def load_train_config(source: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The :class:`TrainConfig` of ``source`` and ``overrides``, where a run's own ``RUN/config.yaml`` (a folder
    with training records) trains in RUN wherever the folder has moved or been copied to, unless an override
    sets ``run.dir`` or ``run.name``: the folder on the command line wins over the path saved in the file."""
    cfg = load_config(TrainConfig, source, overrides)
    file = Path(source)
    run = RunDir(file.parent)
    moved = file.name == CONFIG and file.is_file() and (run.metrics.is_file() or run.checkpoints.is_dir())
    if moved and not any(o.split("=")[0].strip() in ("run.dir", "run.name", "run") for o in overrides):
        here = str(file.parent).replace("{", "{{").replace("}", "}}")  # run.dir is a format string
        cfg = replace(cfg, run=replace(cfg.run, dir=here))
    return cfg


# ------------------------------------------------------------------------------------------- eval config


@dataclass(frozen=True)
class EvalModelSection(ModelSection):
    """The model; ``name`` None takes the one the vectors were trained on (else SmolLM2). ``dtype`` defaults to
    ``auto``: the checkpoint's dtype on a GPU (bf16 for the paper's models, as the authors evaluate), float32
    on a CPU; protocol.json records the dtype used."""

    name: str | None = None  # type: ignore[assignment]
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass(frozen=True)
class TargetSection:
    """What is evaluated: the base model, or vectors, possibly scaled, prefixed or patched into a circuit.

    Attributes:
        vectors: a vector file or a run directory (None: the base model).
        step: for a run directory, ``latest`` (its vectors.safetensors), a checkpoint step, ``all``
            (every checkpoint, each into ``out/step-N``) or ``best`` (the checkpoint its selection.json names).
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
    step: int | Literal["latest", "all", "best"] = ranged("latest", ge=1)
    scale: float = 1.0
    prefix: str | None = None
    template: str | None = None
    patch: str | None = None
    patch_layer: int | None = ranged(None, ge=0)
    patch_head: int | None = ranged(None, ge=0)


@dataclass(frozen=True)
class ProtocolSection(SamplingSection):
    """How samples are drawn and scored (docs/semantics.md#evaluation; presets ``paper``, ``paper-greedy``, ``gsm8k``).

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
        normalize_scientific: rewrite e-notation (``4.5e33``) before verifying, as ``reward.normalize_scientific``;
            off by default, as in the authors' scorer (it makes 58 of MinervaMath's 272 golds score leniently).
        pass_k: the k of pass@k (default: 1, 2, 4, … up to n).
        problem_field, answer_field: the problem and gold columns of dataset files (as ``data.*`` in training).
    """

    benchmarks: tuple[str, ...] = ("gsm8k",)
    n: dict[str, int] = ranged({}, ge=1)
    seeds: tuple[int, ...] = (0,)
    limit: int | None = ranged(None, ge=1)
    data_dir: str | None = None
    extraction: Literal["boxed", "number", "any"] = "boxed"
    normalize_scientific: bool = False
    pass_k: tuple[int, ...] = ranged((), ge=1)
    problem_field: str = "problem"
    answer_field: str | None = "answer"

    def samples(self, benchmark: str) -> int:
        return 1 if self.temperature == 0 else self.n.get(benchmark, 1)


@dataclass(frozen=True)
class EngineSection(BackendSection):
    """Where evaluation samples come from.

    Attributes:
        chunk: requests generated, scored and written per round (resume granularity; None: batch_size for
            hf, 512 for vllm).
    """

    chunk: int | None = ranged(None, ge=1)


@dataclass(frozen=True)
class EvalConfig:
    """Everything ``rlsteer eval`` needs; ``out`` None writes to ``<run>/eval/<label>`` or ``evals/<label>``."""

    model: EvalModelSection = field(default_factory=EvalModelSection)
    target: TargetSection = field(default_factory=TargetSection)
    protocol: ProtocolSection = field(default_factory=ProtocolSection)
    engine: EngineSection = field(default_factory=EngineSection)
    reward: RewardFunctionsSection = field(default_factory=RewardFunctionsSection)
    out: str | None = None
    select: str | None = None  # with target.step=all: "best:METRIC[@BENCH,…]" records the best checkpoint

    RENAMED: ClassVar[dict[str, str]] = {"engine.reward_workers": "reward.workers",
                                         "engine.reward_timeout_s": "reward.timeout_s"}

    @classmethod
    def checked(cls, cfg: EvalConfig, loaded: Loaded) -> None:
        """Refuse ``protocol.n`` > 1 given explicitly together with ``protocol.temperature`` 0.

        Greedy decoding gives one sample per problem, and :meth:`ProtocolSection.samples` forces n = 1 when a
        sampled protocol (e.g. ``paper``) is made greedy with ``protocol.temperature=0``. An n > 1 set in the
        same file as temperature 0, or as an override, asks for something greedy decoding cannot give.
        """
        protocol = cfg.protocol
        many = {bench: n for bench, n in protocol.n.items() if n > 1}
        if protocol.temperature != 0 or not many:
            return
        given: Any = loaded.source.get("protocol")
        in_source = isinstance(given, dict) and bool(given.get("n")) and given.get("temperature") == 0
        if in_source or loaded.overrides("protocol.n"):
            shown = ", ".join(f"{b}: {n}" for b, n in many.items())
            raise ConfigError(f"protocol.n asks for several samples ({shown}) but protocol.temperature=0 (greedy) "
                              "gives one sample per problem; drop protocol.n or set protocol.temperature > 0")
