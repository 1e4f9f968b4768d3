"""`facerec eval --model M --bench lfw,cfp_fp --data DIR [--protocol ...] [--flip ...] [--json OUT]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint (facerec, arcface_torch with --arch, or the seed's)")
    parser.add_argument("--arch", default=None, help="architecture of a plain state_dict checkpoint")
    parser.add_argument("--bench", required=True, help="comma-separated names (lfw, cfp_fp, ...) or .bin paths")
    parser.add_argument("--data", default=None, help="directory holding <name>.bin")
    parser.add_argument("--protocol", default="insightface", choices=["insightface", "sphereface", "both"])
    parser.add_argument("--flip", default="sum", choices=["sum", "concat", "none", "all"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from facerec.eval.benchmark import evaluate_bins, format_rows
    from facerec.io import atomic_write_text
    from facerec.models import load_checkpoint

    model = load_checkpoint(args.model, arch=args.arch)
    protocols = ["insightface", "sphereface"] if args.protocol == "both" else [args.protocol]
    flips = ["none", "sum", "concat"] if args.flip == "all" else [args.flip]
    benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    rows = evaluate_bins(model, benches, args.data, protocols, flips, batch_size=args.batch_size)
    print(f"model: {args.model} ({model.arch}, input {model.preprocess.input_size[0]}x"
          f"{model.preprocess.input_size[1]} {model.preprocess.color}, template {model.preprocess.template})")
    print(format_rows(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": str(args.model), "preprocess": model.preprocess.to_dict(),
                                                 "results": rows}, indent=2))
    return 0
