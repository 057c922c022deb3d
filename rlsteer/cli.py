"""The ``rlsteer`` command line: thin wrappers over the library functions.

Every subcommand prints one ``rlsteer: error: …`` line and exits with status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rlsteer.errors import RlsteerError


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
    from rlsteer.config import TrainConfig, dump_yaml, load_config

    cfg = load_config(TrainConfig, args.config, args.overrides)
    if args.dry_run:
        print(f"# resolved config of {args.config} (run directory: {cfg.run.path})")
        print(dump_yaml(cfg), end="")
        return 0
    from rlsteer.train import train

    run_dir = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per data-parallel rank
        print(f"done: vectors in {run_dir / 'vectors.safetensors'}, metrics in {run_dir / 'metrics.jsonl'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rlsteer.demo import DemoConfig, run_demo

    run_demo(DemoConfig(model=args.model, out_dir=args.out, steps=args.steps))
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

    p = sub.add_parser("train", help="train steering vectors with RLOO from a YAML config")
    p.add_argument("config", type=Path, help="a YAML config, or a preset name: smoke, demo-cpu, paper/…")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. rl.steps=10 optim.lr=1e-2")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit (loads no model)")
    p.set_defaults(run=_train)

    p = sub.add_parser("demo", help="the newcomer's first run: train and compare a steering vector on CPU, offline")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, hub id, folder or .gguf")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--steps", type=int, default=12, help="RLOO steps (default 12, ~5 minutes on 2 cores)")
    p.set_defaults(run=_demo)

    p = sub.add_parser("models", help="list the built-in model aliases and supported architectures")
    p.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 0
    try:
        return run(args)
    except RlsteerError as err:
        print(f"rlsteer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlsteer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
