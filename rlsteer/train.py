"""``train(cfg)``: RLOO training of steering vectors on a frozen model (docs/semantics.md#objective), resumable.

One step, top to bottom:

1. take the step's B prompts (a fixed permutation of the dataset per epoch and seed);
2. sample N completions per prompt from the current steered policy (per-request seeds);
3. score them (Math-Verify in a process pool, or the first-token smoke reward);
4. leave-one-out advantages per prompt group;
5. loss = −Σ a·Σ_t log π / (generated tokens in the step), accumulated over micro-batches;
6. clip the global grad norm, set the warmup lr, one Adam step; log; checkpoint every K steps.

Every random choice derives from (seed, step, prompt, sample), so a run resumed from its last checkpoint
ends with the same vectors as an uninterrupted one.

Example:
    >>> from rlsteer.config import load_config, TrainConfig
    >>> cfg = load_config(TrainConfig, "configs/smoke.yaml", ["run.dir=/tmp/smoke", "rl.steps=2"])  # doctest: +SKIP
    >>> train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import random
import shlex
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.architectures import architecture_of
from rlsteer.checkpoint import Snapshot, load_checkpoint, save_checkpoint
from rlsteer.config import TrainConfig, config_hash, to_dict
from rlsteer.configload import check_ranges, describe_differences
from rlsteer.data import Problem, load_problems, problems_jsonl, split_holdout
from rlsteer.distributed import (
    SINGLE,
    World,
    all_gather_rows,
    all_max,
    all_sum,
    barrier,
    check_in_sync,
    close_world,
    init_world,
    on_main,
    sum_gradients,
    together,
)
from rlsteer.errors import RlsteerError
from rlsteer.identity import model_identity
from rlsteer.interrupt import Interrupted, held, interruptible
from rlsteer.io import write_atomically
from rlsteer.metrics import append_metrics, format_record, make_tracker, truncate_metrics
from rlsteer.models import load_model, model_folder, model_shape
from rlsteer.packing import micro_batches, packed_attention
from rlsteer.reward_functions import RewardCallError
from rlsteer.rewards import RewardBatch
from rlsteer.rl import gradient_checkpointing, masked_advantages, policy_loss, token_logprobs, warmup_factor
from rlsteer.rollout import Backend, Request, SamplingParams
from rlsteer.rollout.factory import make_backend
from rlsteer.rundir import RunDir
from rlsteer.runstart import claim_run_dir, prepare_run_dir
from rlsteer.scorers import Scorer, make_scorer
from rlsteer.steering.hooks import steer
from rlsteer.steering.sites import HEAD_SITES, SITES, Entry, head_limit
from rlsteer.steering.vectors import SteeringVectors, VectorFileError, check_entries_fit, open_vector_file
from rlsteer.templates import Prompt, build_prompt, check_template


class TrainingError(RlsteerError):
    pass


def train(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Train steering vectors as ``cfg`` says; returns the run directory (its layout: :mod:`rlsteer.rundir`).

    Under ``torchrun``/``accelerate launch`` each process is one data-parallel rank (see
    :mod:`rlsteer.distributed`); rank 0 logs and writes the run directory.

    SIGINT/SIGTERM stop the run cleanly: the step in progress is dropped, the last finished step is
    checkpointed (if it is not yet) and :class:`rlsteer.interrupt.Interrupted` says how to resume; the
    resumed run ends with the same vectors as an uninterrupted one.

    Everything that can be checked before the model loads is (config ranges, the dataset, layers, heads and
    sites against the model's config, vector files); the run directory is locked for the whole run (a second
    process gets "in use by pid N"), and its ``config.yaml`` is written only once the model and the steering
    have been checked too. A run with no checkpoint yet may simply be started again.
    """
    check_ranges(cfg)
    world = init_world(cfg.model.device)
    try:
        with interruptible(), contextlib.ExitStack() as owned:
            return _train(cfg, resume, log if world.is_main else _silent, world, owned)
    except Interrupted as stop:
        if RunDir(cfg.run.path).is_run():
            stop.resume = f"rlsteer train {shlex.quote(str(RunDir(cfg.run.path).config))} --resume"
        raise
    except RewardCallError as err:  # raised while scoring a step, before anything of it was applied
        command = f"rlsteer train {shlex.quote(str(RunDir(cfg.run.path).config))} --resume"
        raise RewardCallError(f"{err}; the step was not applied (the run keeps its finished steps); once fixed: "
                              f"{command}") from None
    finally:
        close_world(world)


def _train(cfg: TrainConfig, resume: bool, log: Callable[[str], None], world: World,
           owned: contextlib.ExitStack) -> Path:
    problems = load_problems(cfg.data.dataset, data_dir=cfg.data.data_dir, limit=cfg.data.limit,
                             problem_field=cfg.data.problem_field, answer_field=cfg.data.answer_field)
    problems, held_out = split_holdout(problems, cfg.data.holdout, cfg.data.shuffle_seed)
    check_problem_count(len(problems), cfg)
    check_template(cfg.data.template, "data.template")
    world.shard(cfg.rl.prompts_per_step)  # fail early when the groups do not split over the ranks
    check_steering(cfg, model_shape(cfg.model.name, revision=cfg.model.revision,
                                    trust_remote_code=cfg.model.trust_remote_code))  # before the weights load
    # one owner per run directory, and a run that may start (or resume) here, before the model loads
    run, changes = on_main(lambda: claim_run_dir(cfg, resume=resume, owned=owned, log=log), world)
    # converted/tiny model folders are written once, by rank 0 (transformers' save_pretrained is a no-op on
    # other ranks); the others then read the cached copy
    on_main(lambda: model_folder(cfg.model.name) if cfg.rollout.backend == "vllm" or world.enabled else None, world)
    model, tok = load_model(cfg.model.name, dtype=cfg.model.dtype, device=world.device(cfg.model.device),
                            revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    prompts = [build_prompt(tok, p.problem, cfg.data.template, cfg.data.prefix) for p in problems]
    problems, prompts = within_budget(problems, prompts, cfg, log)
    vectors = build_vectors(model, cfg)
    scorer = make_scorer(cfg, model, tok, prompts)  # imports reward functions from user code: checked here too
    # config.yaml appears only once the model, data, steering config and reward have been checked, so bad
    # input leaves no half-made run behind
    on_main(lambda: prepare_run_dir(cfg), world)
    if held_out and world.is_main:  # the validation split, for checkpoint selection (rlsteer.selection)
        write_atomically(run.holdout, problems_jsonl(held_out))
    optimizer = torch.optim.Adam(param_groups(vectors, cfg), betas=cfg.optim.betas, eps=cfg.optim.eps,
                                 weight_decay=0.0)
    start = 0
    if resume and (ckpt := run.latest_checkpoint()) is not None:
        start = load_checkpoint(ckpt, vectors, optimizer)["step"]
        use_optim_config(optimizer, vectors, cfg)  # optim.* may have changed since the checkpoint
        log(f"resuming {run.path} from {ckpt.name}"
            + (f" with {describe_differences(changes)}" if changes else ""))
        if start >= cfg.rl.steps:
            log(f"note: the run has {start} finished steps and rl.steps={cfg.rl.steps}: nothing is left to train "
                f"(the vectors stay those of step {start}); raise rl.steps to go on")
    if world.is_main and run.metrics.is_file():  # drops the steps after the checkpoint (all when there is none)
        for lost in truncate_metrics(run.metrics, start):
            log(lost)
    backend = make_backend(cfg.model, cfg.rollout, model, tok, seed=cfg.rl.seed,
                           max_model_len=cfg.rollout.max_total_tokens, share_prompts=cfg.rl.share_prompts, world=world)
    sampling = cfg.rollout.sampling()
    tracker = make_tracker(cfg.run.logger if world.is_main else "none", run.path, to_dict(cfg))
    if cfg.reward.kind == "math" and cfg.reward.worker_count(functions=False) == 0:
        log(f"note: reward.workers=0 verifies answers in this process without the {cfg.reward.timeout_s:g} s "
            "deadline of reward.timeout_s (a verification that hangs stops the run)")
    ranks = f" on {world.size} ranks" if world.enabled else ""
    log(f"training {len(vectors.trainable_entries())} vector(s) on {cfg.model.name}{ranks}: {cfg.rl.steps} steps × "
        f"{cfg.rl.prompts_per_step} prompts × {cfg.rl.samples_per_prompt} samples → {run.path}")
    completed = Snapshot.take(start, vectors, optimizer)  # the state after the last finished step
    try:
        for step in range(start, cfg.rl.steps):
            batch = batch_indices(len(problems), step, cfg.rl.prompts_per_step, cfg.rl.seed + cfg.data.shuffle_seed)
            record = rl_step(step, [prompts[i] for i in batch], [problems[i] for i in batch], model, tok, vectors,
                             optimizer, backend, sampling, scorer, cfg, world)
            check_finite(step + 1, record, vectors, run)  # before anything of the step is written
            if changes and step == start:
                record["resumed_with"] = {key: list(pair) for key, pair in changes.items()}
            if cfg.run.check_sync:
                record["checksum"] = check_in_sync(list(vectors.parameters()), world, step + 1)
            with held():  # SIGINT/SIGTERM wait until the finished step is logged (and checkpointed when due)
                if world.is_main:
                    append_metrics(run.metrics, record)
                    tracker.log(step + 1, {k: v for k, v in record.items() if isinstance(v, (int, float))})
                log(format_record(record))
                if world.is_main and ((step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == cfg.rl.steps):
                    save_step(run, step + 1, vectors, optimizer, cfg)
                completed = Snapshot.take(step + 1, vectors, optimizer)
        if world.is_main:
            save_vectors(vectors, cfg, run)
        barrier(world)  # no rank leaves before the run directory is complete (and before vLLM's shutdown,
        #                 which in torchrun mode tears down the process group)
    except Interrupted as stop:
        if world.is_main:
            stop.detail = checkpoint_interrupted(completed, vectors, optimizer, cfg, run)
        raise
    finally:
        tracker.close()
        scorer.close()
        backend.close()
    return run.path


def _silent(_: str) -> None:
    pass


def rl_step(step: int, prompts: Sequence[Prompt], problems: Sequence[Problem], model: nn.Module, tok: Any,
            vectors: SteeringVectors, optimizer: torch.optim.Optimizer, backend: Backend, sampling: SamplingParams,
            scorer: Scorer, cfg: TrainConfig, world: World = SINGLE) -> dict[str, Any]:
    """One RLOO round over the step's prompts: sample, score, one optimizer step. Returns the step's metrics.

    With several ranks, this rank takes its slice of the prompt groups; seeds follow the prompt's place in
    the whole step, so the samples do not depend on the number of ranks.
    """
    n = cfg.rl.samples_per_prompt
    mine = world.shard(len(prompts))
    t0 = time.perf_counter()
    requests = [Request(prompts[i].ids, prompts[i].stop_ids, seed=request_seed(cfg.rl.seed, step, i, k))
                for i in mine for k in range(n)]
    rollouts = backend.generate(requests, vectors, sampling)  # [b·N], grouped by prompt (b = this rank's groups)
    t1 = time.perf_counter()
    per_sample = [problems[i] for i in mine for _ in range(n)]  # all ranks fail if one rank's reward function does
    scored: RewardBatch = together(lambda: scorer.score(rollouts, per_sample), world, RewardCallError,
                                   lambda r: RewardCallError(f"a reward function failed on rank {r}"))
    rewards = torch.tensor(scored.rewards).view(len(mine), n)  # [b, N]
    truncated = torch.tensor([r.finish_reason == "length" for r in rollouts]).view(len(mine), n)
    t2 = time.perf_counter()

    keep = ~truncated if cfg.reward.mask_truncated else torch.ones_like(truncated)
    adv = masked_advantages(rewards, keep, cfg.rl.baseline).flatten()  # [b·N]
    lengths = torch.tensor([r.num_tokens for r in rollouts])
    total_tokens = int(all_sum(float(lengths[keep.flatten()].sum()), world))  # the normaliser spans all ranks
    optimizer.zero_grad(set_to_none=True)
    loss_value = 0.0
    active = [i for i in range(len(rollouts)) if adv[i] != 0]  # zero-advantage samples add nothing to the loss
    if active and total_tokens > 0:
        rl, checkpointed = cfg.rl, cfg.rl.gradient_checkpointing
        share = rl.share_prompts and (rl.pack or not checkpointed)  # unpacked sharing needs a KV cache
        pairs = [(rollouts[i].request.prompt_ids, rollouts[i].token_ids) for i in active]
        chunks = micro_batches(pairs, max_tokens=rl.micro_batch_tokens, max_sequences=rl.micro_batch_size,
                               share_prompts=share)
        # packed attention stays on through backward, where checkpointing recomputes it
        packed = packed_attention(model) if rl.pack else nullcontext()
        with steer(model, vectors), gradient_checkpointing(model, checkpointed), packed:
            for chunk in chunks:
                lps = token_logprobs(model, [pairs[j] for j in chunk], temperature=cfg.rollout.temperature,
                                     pad_id=tok.pad_token_id, share_prompts=share, pack=rl.pack)
                loss = policy_loss(torch.stack([lp.sum() for lp in lps]), adv[[active[j] for j in chunk]],
                                   total_tokens)
                loss.backward()
                loss_value += float(loss.detach())
    t3 = time.perf_counter()

    params = [p for p in vectors.parameters() if p.requires_grad]
    stepped = sum_gradients(params, world)  # one all-reduce; every rank then holds the same gradient
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)) if stepped else 0.0
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * warmup_factor(step, cfg.optim.warmup_steps)
    optimizer.step()
    t4 = time.perf_counter()

    rewards, truncated, lengths = (all_gather_rows(t, world) for t in (rewards, truncated, lengths.view(len(mine), n)))
    counts = {k: all_sum(float(v), world) for k, v in (("correct", scored.count("correct")),
                                                        ("timeouts", scored.timeouts),
                                                        ("parse_failures", scored.parse_failures),
                                                        ("missing_answers", scored.missing_answers))}
    times = [all_max(t, world) for t in (t1 - t0, t2 - t1, t3 - t2, t4 - t3)]
    record: dict[str, Any] = {
        "step": step + 1,
        "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
        "accuracy": counts["correct"] / rewards.numel(),
        "zero_adv_groups": float((rewards.std(dim=1, unbiased=False) == 0).float().mean()),
        "len_mean": float(lengths.float().mean()), "len_max": int(lengths.max()),
        "truncated": float(truncated.float().mean()),
        "verifier_timeouts": int(counts["timeouts"]), "parse_failures": int(counts["parse_failures"]),
        "missing_answers": int(counts["missing_answers"]),
        "loss": all_sum(loss_value, world), "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"],
        "time_generate": times[0], "time_reward": times[1], "time_backward": times[2], "time_optim": times[3],
        "tokens_per_s": float(lengths.sum()) / max(times[0], 1e-9),
    }
    for name, values in scored.components.items():  # each reward function's own mean (reward.functions)
        record[f"reward/{name}"] = all_sum(math.fsum(values), world) / rewards.numel()
    record.update({f"norm/{name}": value for name, value in vectors.norms().items()})
    return record


# ------------------------------------------------------------------------------------------------ pieces


def batch_indices(n_problems: int, step: int, batch: int, seed: int) -> list[int]:
    """The problems of ``step``: epoch e is the permutation Random(seed, e) of the dataset, cut into batches."""
    per_epoch = n_problems // batch  # drop_last, as the authors
    epoch, index = divmod(step, per_epoch)
    order = list(range(n_problems))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[index * batch:(index + 1) * batch]


def request_seed(seed: int, step: int, prompt: int, sample: int) -> int:
    """A distinct, reproducible sampling seed per (run seed, step, prompt, sample)."""
    return ((seed * 1_000_003 + step) * 65_537 + prompt) * 1_031 + sample


def build_vectors(model: nn.Module, cfg: TrainConfig) -> SteeringVectors:
    """Zero (or ``steering.init``) vectors at the configured sites, constraints applied, all trainable."""
    arch = architecture_of(model)
    s = cfg.steering
    layers = range(arch.n_layers) if s.layers == "all" else s.layers
    check_steering(cfg, arch)
    entries = [Entry(site, layer, s.head if site in HEAD_SITES else None) for layer in layers for site in s.sites]
    meta = {**model_identity(model), "template": cfg.data.template, "config_hash": config_hash(cfg)}
    if cfg.data.prefix is not None:
        meta["prefix"] = cfg.data.prefix
    vectors = SteeringVectors(arch.d_model, entries, metadata=meta)
    vectors.validate(model)
    if s.init is not None:
        start = SteeringVectors.load(s.init, model)
        with torch.no_grad():
            for entry in entries:
                if entry in start:
                    vectors.parameter(entry).copy_(start.vector(entry).cpu())
    if s.orthogonal_to:
        fixed = [SteeringVectors.load(path, model) for path in s.orthogonal_to]
        for entry in entries:
            missing = [path for path, f in zip(s.orthogonal_to, fixed, strict=True) if entry not in f]
            if missing:
                raise TrainingError(f"{missing[0]} has no {entry.name} entry for this run to stay orthogonal to")
            vectors.constrain_orthogonal(entry, torch.stack([f.vector(entry).detach().cpu() for f in fixed]))
    return vectors.to(next(model.parameters()).device)


def check_problem_count(count: int, cfg: TrainConfig) -> None:
    if count < cfg.rl.prompts_per_step:
        raise TrainingError(f"the dataset has {count} problems, fewer than rl.prompts_per_step="
                            f"{cfg.rl.prompts_per_step}; lower it or use more data")


def within_budget(problems: list[Problem], prompts: list[Prompt], cfg: TrainConfig,
                  log: Callable[[str], None]) -> tuple[list[Problem], list[Prompt]]:
    """The problems whose prompt leaves room for at least one new token under ``rollout.max_total_tokens``;
    the others are left out (never prefilled), with a warning."""
    limit = cfg.rollout.max_total_tokens
    keep = [i for i, p in enumerate(prompts) if limit is None or len(p.ids) < limit]
    if len(keep) == len(prompts):
        return problems, prompts
    longest = max(len(p.ids) for p in prompts)
    log(f"warning: {len(prompts) - len(keep)} of {len(prompts)} prompts are as long as rollout.max_total_tokens="
        f"{limit} or longer (the longest has {longest} tokens) and leave no room to answer; they are left out")
    check_problem_count(len(keep), cfg)
    return [problems[i] for i in keep], [prompts[i] for i in keep]


def check_steering(cfg: TrainConfig, arch: Any) -> None:
    """Raise :class:`TrainingError` unless the steering sites exist and ``steering.layers``, ``steering.head``
    and the vector files of ``steering.init`` / ``orthogonal_to`` fit the model ``arch`` (a loaded model's
    :class:`rlsteer.architectures.Architecture`, or :func:`rlsteer.models.model_shape` of its config; None
    checks what needs no model)."""
    s, name = cfg.steering, cfg.model.name
    unknown = [site for site in s.sites if site not in SITES]
    if unknown or not s.sites:
        raise TrainingError(f"steering.sites has {unknown[0]!r}, not a site; sites are: {', '.join(SITES)}"
                            if unknown else "steering.sites is empty; give at least one site, e.g. [resid_post]")
    files = [open_vector_file(path) for path in (s.init, *s.orthogonal_to) if path is not None]  # or one line
    for file in files if arch is not None else []:
        try:
            check_entries_fit(arch, int(file.header["d_model"]), [Entry.parse(n) for n in file.tensors], file.header)
        except VectorFileError as err:
            raise TrainingError(f"{file.path}: {err}") from None
    if arch is None:
        return
    if s.layers != "all":
        bad = [layer for layer in s.layers if not 0 <= layer < arch.n_layers]
        if bad:
            raise TrainingError(f"steering.layers has {bad[0]}, out of range: {name} has {arch.n_layers} layers "
                                f"(0..{arch.n_layers - 1}); use steering.layers=[{arch.n_layers - 1}] or 'all'")
    head_sites = [site for site in s.sites if site in HEAD_SITES]
    if head_sites and s.head is None:
        raise TrainingError(f"steering.sites has {head_sites[0]}, which needs steering.head (e.g. steering.head=0)")
    for site in head_sites:
        limit, kind = head_limit(site, arch.n_heads, arch.n_kv_heads)
        if not 0 <= int(s.head or 0) < limit:
            raise TrainingError(f"steering.head={s.head} is out of range for {site}: {name} has {limit} {kind} "
                                f"(0..{limit - 1})")


def param_groups(vectors: SteeringVectors, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One Adam group per entry, with the per-layer lr when given; ``base_lr`` is the post-warmup lr."""
    lrs = cfg.steering.lr_per_layer or {}
    groups = []
    for entry in vectors.trainable_entries():
        lr = lrs.get(entry.layer, cfg.optim.lr)
        groups.append({"params": [vectors.parameter(entry)], "lr": lr, "base_lr": lr})
    return groups


# ------------------------------------------------------------------------------------------- run files


def use_optim_config(optimizer: torch.optim.Optimizer, vectors: SteeringVectors, cfg: TrainConfig) -> None:
    """Set ``cfg``'s learning rates, betas and eps in ``optimizer`` (over those a checkpoint restored)."""
    for group, fresh in zip(optimizer.param_groups, param_groups(vectors, cfg), strict=True):
        group.update(base_lr=fresh["base_lr"], betas=cfg.optim.betas, eps=cfg.optim.eps)


def save_vectors(vectors: SteeringVectors, cfg: TrainConfig, run: RunDir) -> Path:
    return vectors.save(run.vectors, config_hash=config_hash(cfg))


def save_step(run: RunDir, step: int, vectors: SteeringVectors, optimizer: torch.optim.Optimizer,
              cfg: TrainConfig) -> Path:
    """``checkpoints/step-{step}`` and ``vectors.safetensors``: the run's state after ``step``."""
    path = save_checkpoint(run, step, vectors, optimizer,
                           vector_metadata={"config_hash": config_hash(cfg), "step": str(step)})
    save_vectors(vectors, cfg, run)
    return path


def checkpoint_interrupted(completed: Snapshot, vectors: SteeringVectors, optimizer: torch.optim.Optimizer,
                           cfg: TrainConfig, run: RunDir) -> str:
    """After a signal: checkpoint the last finished step unless a checkpoint holds it already (the vectors
    and optimizer are first put back to that step, since the signal may have come in the middle of the
    next one's update); returns what is on disk, in words."""
    with held():
        steps = run.checkpoint_steps()
        latest = run.checkpoint(steps[-1]) if steps else None
        if completed.step > (steps[-1] if steps else 0):
            completed.restore(vectors, optimizer)
            latest = save_step(run, completed.step, vectors, optimizer, cfg)
    if latest is None:
        return f"0 of {cfg.rl.steps} steps done"
    return f"{completed.step} of {cfg.rl.steps} steps done, checkpoint {latest}"


def check_finite(step: int, record: dict[str, Any], vectors: SteeringVectors, run: RunDir) -> None:
    """Stop the run when ``step`` produced a NaN or inf loss, gradient norm or vector.

    Called before the step's metrics line or checkpoint is written, so the run directory keeps only good
    steps; the error names the step and the last good checkpoint to resume from.
    """
    bad = [name for name in ("loss", "grad_norm") if not math.isfinite(record[name])]
    bad += [f"vector {e.name}" for e, v in vectors.vectors().items() if not bool(torch.isfinite(v).all())]
    bad += [f"the norm of vector {key[5:]}" for key, value in record.items()  # finite entries, overflowing norm
            if key.startswith("norm/") and not math.isfinite(value) and f"vector {key[5:]}" not in bad]
    if not bad:
        return
    last = run.latest_checkpoint()
    kept = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written yet"
    raise TrainingError(f"step {step} made {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} NaN or inf, so the "
                        f"run stopped without saving it; {kept}; lower optim.lr (or optim.max_grad_norm) and "
                        "rerun with --resume")
