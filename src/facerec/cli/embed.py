"""`facerec embed --model M IMAGES_OR_DIRS... [--landmarks TSV] --out emb.npy`: L2-normalised
embeddings, one row per readable image, with a JSON index of paths (and of the failures)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--model", required=True, help="checkpoint, .safetensors or .onnx")
    parser.add_argument("--arch", default=None, help="architecture of a plain state_dict checkpoint")
    parser.add_argument("--out", required=True, help="embeddings .npy ([N, D] float32)")
    parser.add_argument("--index", default=None, help="JSON index (default: OUT with .json)")
    parser.add_argument("--landmarks", default=None, help="5-point landmarks TSV to align the faces")
    parser.add_argument("--flip", default=None, choices=["none", "sum"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import io
    import numpy as np

    from facerec.cli.common import warnings_to_stderr
    from facerec.inference import Embedder, expand_inputs
    from facerec.io import atomic_write_bytes, atomic_write_text

    embedder = Embedder(args.model, flip=args.flip, batch_size=args.batch_size, arch=args.arch)
    files = expand_inputs(args.inputs)
    with warnings_to_stderr():
        result = embedder.embed(files, args.landmarks, progress=not args.no_progress)
    for path, reason in result.failed:
        print(f"failed: {reason}", file=sys.stderr)
    buf = io.BytesIO()
    np.save(buf, result.embeddings)
    atomic_write_bytes(args.out, buf.getvalue())
    index = Path(args.index) if args.index else Path(args.out).with_suffix(".json")
    atomic_write_text(index, json.dumps({
        "model": args.model, "flip": embedder.flip, "preprocess": embedder.preprocess.to_dict(),
        "shape": list(result.embeddings.shape), "paths": result.paths, "alignment": result.alignment,
        "failed": [{"path": p, "error": e} for p, e in result.failed]}, indent=1))
    print(f"embedded {len(result.paths)} of {len(files)} images -> {args.out} {tuple(result.embeddings.shape)}, "
          f"index {index}; alignment: {result.alignment}" + (f"; {len(result.failed)} failed" if result.failed else ""))
    return 0 if result.paths or not files else 2
