"""`facerec compare --model M a.jpg b.jpg`: cosine similarity and a same/different decision at
the threshold stored with the model (stating which)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--model", required=True, help="checkpoint, .safetensors or .onnx")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--landmarks", default=None, help="5-point landmarks TSV to align the faces")
    parser.add_argument("--threshold", type=float, default=None, help="cosine threshold (overrides the stored one)")
    parser.add_argument("--flip", default=None, choices=["none", "sum"])


def run(args: argparse.Namespace) -> int:
    from facerec.cli.common import warnings_to_stderr
    from facerec.inference import Embedder

    embedder = Embedder(args.model, flip=args.flip, threshold=args.threshold, arch=args.arch)
    with warnings_to_stderr():
        result = embedder.compare(args.a, args.b, args.landmarks)
    print(result.describe())
    return 0
