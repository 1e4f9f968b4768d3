"""`facerec train CONFIG.yaml [--set k=v ...] [--resume auto|PATH] [--tune]`."""

from __future__ import annotations

import argparse

from facerec.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default=None, help="output directory (default: train.output_dir)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="resume from the newest checkpoint of the run directory (auto) or from PATH")
    parser.add_argument("--tune", action="store_true",
                        help="tuning mode: train and evaluate, but write no checkpoints or logs")


def run(args: argparse.Namespace) -> int:
    from facerec.config import load_config
    from facerec.train.engine import train
    from facerec.train.runtime import Runtime

    cfg = load_config(args.config, args.overrides)
    runtime = Runtime.from_config(cfg.train)  # under torchrun: joins the process group
    try:
        result = train(cfg, args.run_dir, tune=args.tune, resume=args.resume, runtime=runtime)
    finally:
        runtime.close()  # leave the group cleanly (NCCL warns at exit otherwise)
    for name, r in result.val.items():
        print(f"{name}: accuracy {100 * r['accuracy']:.2f} +- {100 * r['accuracy_std']:.2f}")
    if result.run_dir is not None:
        print(f"run directory: {result.run_dir}")
    return 0
