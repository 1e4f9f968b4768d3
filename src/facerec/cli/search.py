"""`facerec search --model M --gallery DIR --probe IMAGE [--top 5]`: the gallery identities
(first-level folders) most similar to the probe, with an index of the gallery cached to disk."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint, .safetensors or .onnx")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--gallery", required=True, help="directory: one folder per identity")
    parser.add_argument("--probe", required=True, help="image to search for")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--landmarks", default=None, help="5-point landmarks TSV (gallery and probe)")
    parser.add_argument("--cache", default=None,
                        help="gallery index .npz (default: .facerec-gallery.npz inside the gallery; 'none' to skip)")
    parser.add_argument("--flip", default=None, choices=["none", "sum"])


def run(args: argparse.Namespace) -> int:
    from facerec.cli.common import warnings_to_stderr
    from facerec.inference import Embedder, Landmarks

    embedder = Embedder(args.model, flip=args.flip, arch=args.arch)
    cache = None if args.cache == "none" else Path(args.cache or Path(args.gallery) / ".facerec-gallery.npz")
    landmarks = Landmarks.of(args.landmarks)
    with warnings_to_stderr():
        gallery = embedder.index_gallery(args.gallery, landmarks, cache=cache, progress=True)
        matches = embedder.search(args.probe, gallery, top=args.top, landmarks=landmarks)
    print(f"gallery: {len(set(gallery.identities))} identities, {len(gallery.paths)} images"
          + (f" (index {cache})" if cache else ""))
    thr = embedder.threshold
    for m in matches:
        mark = "" if thr is None else ("  match" if m.score >= thr.cosine else "")
        print(f"{m.rank:>3}  {m.score:7.4f}  {m.identity}  ({m.path}){mark}")
    if thr is not None:
        print(f"match: {thr.describe()}")
    return 0
