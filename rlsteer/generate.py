"""``rlsteer generate``: completions of the base and the steered model side by side, one row per scale.

The quickest look at what a vector does. The target (a vector file or a run directory), its template,
prefix and circuit patches are resolved exactly as ``rlsteer eval`` resolves them
(:mod:`rlsteer.targets`); every row of a prompt samples from the same prompt tokens with the same seed, so
the rows differ only by the steering.

Example:
    >>> cfg = GenerateConfig(target="runs/demo/all-layers", prompts=("What is 3 + 4?",), scales=(0.5, 1.0))
    >>> comparisons = generate(cfg)  # doctest: +SKIP
    >>> print(format_comparisons(comparisons))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rlsteer.config import EngineSection, EvalConfig, EvalModelSection, ProtocolSection, TargetSection
from rlsteer.errors import RlsteerError
from rlsteer.models import DEFAULT_MODEL, load_model
from rlsteer.rollout import Request, Rollout, SamplingParams
from rlsteer.rollout.factory import make_backend
from rlsteer.steering.patching import check_patch_fits
from rlsteer.steering.vectors import SteeringVectors
from rlsteer.targets import Target, resolve_defaults, resolve_targets, steering_for
from rlsteer.templates import DEFAULT_TEMPLATE, build_prompt


class GenerateError(RlsteerError):
    pass


@dataclass(frozen=True)
class GenerateConfig:
    """What ``rlsteer generate`` samples.

    Attributes:
        target: a vector file or a run directory (its latest vectors, or checkpoint ``step``).
        prompts: the problems / messages, each rendered with ``template`` and ``prefix``.
        scales: multipliers on the vectors, one steered row per scale.
        template / prefix: None takes the vectors' training template / prefix; prefix "" forces none.
        patch / patch_layer / patch_head: move the trained vector into a circuit (as ``rlsteer eval --patch``).
        model: the model spec (None: the one the vectors were trained on).
        temperature: 0 is greedy (the default); otherwise sampled with ``top_p`` / ``top_k`` and ``seed``.
    """

    target: str
    prompts: tuple[str, ...]
    scales: tuple[float, ...] = (1.0,)
    step: int | Literal["latest"] = "latest"
    template: str | None = None
    prefix: str | None = None
    patch: str | None = None
    patch_layer: int | None = None
    patch_head: int | None = None
    model: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 128
    seed: int = 0

    def eval_config(self) -> EvalConfig:
        """The evaluation config that names the same target (resolved by :mod:`rlsteer.targets`)."""
        return EvalConfig(
            model=EvalModelSection(name=self.model, device=self.device, dtype=self.dtype),
            target=TargetSection(vectors=self.target, step=self.step, template=self.template, prefix=self.prefix,
                                 patch=self.patch, patch_layer=self.patch_layer, patch_head=self.patch_head),
            protocol=ProtocolSection(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                     max_new_tokens=self.max_new_tokens, max_total_tokens=None, seeds=(self.seed,)),
            engine=EngineSection(backend=self.backend, batch_size=self.batch_size))

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens)


@dataclass(frozen=True)
class Completion:
    """One row: ``label`` is ``base`` or ``×scale`` (``scale`` None for the base model)."""

    label: str
    scale: float | None
    text: str
    finish_reason: str
    tokens: int


@dataclass(frozen=True)
class Comparison:
    """One prompt (as given and as fed to the model) and its rows, base first."""

    prompt: str
    rendered: str
    completions: tuple[Completion, ...]


def resolve_target(cfg: EvalConfig) -> tuple[EvalConfig, Target]:
    """The one vector file ``cfg.target`` names, with the model, template and prefix filled in."""
    if cfg.target.vectors is None:
        raise GenerateError("generate needs a TARGET: a vector file or a run directory")
    targets = resolve_targets(cfg)
    if len(targets) != 1 or targets[0].vectors is None:
        raise GenerateError(f"{cfg.target.vectors} names {len(targets)} vector files; pick one checkpoint (--step N)")
    return resolve_defaults(cfg, targets), targets[0]


def generate(cfg: GenerateConfig) -> list[Comparison]:
    """Sample every prompt from the base model and from the steered model at every scale.

    All prompts of a row are decoded in one batch; request ``i`` of every row has seed ``cfg.seed``.
    """
    if not cfg.prompts:
        raise GenerateError("no prompts: give them on the command line or with --prompts FILE")
    if not cfg.scales:
        raise GenerateError("no scales: --scale takes one or more numbers, e.g. --scale 0.5 1 2")
    sampling = cfg.sampling()  # checks temperature, top_p, max_new_tokens before the model loads
    ecfg, target = resolve_target(cfg.eval_config())
    assert target.vectors is not None
    t = ecfg.target
    model, tok = load_model(ecfg.model.name or DEFAULT_MODEL, dtype=ecfg.model.dtype, device=ecfg.model.device,
                            revision=ecfg.model.revision, trust_remote_code=ecfg.model.trust_remote_code)
    prompts = [build_prompt(tok, p, t.template or DEFAULT_TEMPLATE, t.prefix) for p in cfg.prompts]
    requests = [Request(p.ids, p.stop_ids, seed=cfg.seed) for p in prompts]
    steerings = []
    for scale in cfg.scales:  # every scale's steering is checked before anything is sampled
        scaled = replace(ecfg, target=replace(t, scale=scale))
        steering = steering_for(SteeringVectors.load(target.vectors, model), scaled)
        if isinstance(steering, dict):
            check_patch_fits(steering, model)
        steerings.append(steering)
    backend = make_backend(ecfg.model, ecfg.engine, model, tok, seed=cfg.seed, progress=False)
    try:
        rows: list[tuple[str, float | None, list[Rollout]]] = [
            ("base", None, backend.generate(requests, None, sampling))]
        rows += [(f"×{scale:g}", scale, backend.generate(requests, steering, sampling))
                 for scale, steering in zip(cfg.scales, steerings, strict=True)]
    finally:
        backend.close()
    return [Comparison(prompt=q, rendered=p.text,
                       completions=tuple(Completion(label, scale, r[i].text, r[i].finish_reason, r[i].num_tokens)
                                         for label, scale, r in rows))
            for i, (q, p) in enumerate(zip(cfg.prompts, prompts, strict=True))]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: JSONL with a ``prompt`` or ``problem`` field per line, else one prompt per line.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "p.txt"
        >>> _ = f.write_text("What is 2 + 2?\\n\\nName a prime.\\n")
        >>> read_prompts(f)
        ['What is 2 + 2?', 'Name a prime.']
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise GenerateError(f"cannot read prompts file {path}: {err.strerror or err}") from None
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise GenerateError(f"{path}:{n} is not JSON ({err.msg}); write one JSON object per line") from None
        text = record.get("prompt", record.get("problem")) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise GenerateError(f"{path}:{n} has no \"prompt\" or \"problem\" string field")
        prompts.append(text)
    return prompts


def to_json(cfg: GenerateConfig, comparisons: list[Comparison]) -> dict[str, Any]:
    """The ``--json`` record: the settings and, per prompt, every row."""
    return {"target": cfg.target, "scales": list(cfg.scales), "seed": cfg.seed,
            "sampling": asdict(cfg.sampling()) | {"greedy": cfg.temperature == 0},
            "prompts": [asdict(c) for c in comparisons]}


def format_comparisons(comparisons: list[Comparison], width: int = 100) -> str:
    """Each prompt, then one row per model: its label, then the completion wrapped beside it.

    Example:
        >>> row = Completion("base", None, "4.\\nDone", "stop", 3)
        >>> print(format_comparisons([Comparison("2 + 2?", "2 + 2?", (row,))]))
        ── 1. 2 + 2?
        base │ 4.
             │ Done
    """
    blocks = []
    for n, c in enumerate(comparisons, 1):
        label_width = max(len(r.label) for r in c.completions)
        text_width = max(width - label_width - 3, 20)
        lines = [f"── {n}. {c.prompt}"]
        for row in c.completions:
            wrapped = [piece for line in row.text.splitlines() or [""]
                       for piece in textwrap.wrap(line, text_width, replace_whitespace=False, drop_whitespace=False)
                       or [""]]
            if row.finish_reason == "length":
                wrapped[-1] += " …"
            for k, piece in enumerate(wrapped):
                lines.append(f"{row.label if k == 0 else '':<{label_width}} │ {piece}".rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


__all__ = ["Comparison", "Completion", "GenerateConfig", "format_comparisons", "generate", "read_prompts",
           "resolve_target", "to_json"]
