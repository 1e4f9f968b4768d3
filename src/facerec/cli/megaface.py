"""`facerec megaface --model M --images DIR [--landmarks TSV]`: MegaFace-style identification on an
identity-per-folder tree (the LFW mini-protocol: people with 2+ images are probes, everyone else
a distractor), with optional @R noise lists."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint, .safetensors or .onnx")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--images", required=True, help="one folder per person (e.g. ../shared/data/lfw/images)")
    parser.add_argument("--landmarks", default=None, help="5-point landmarks TSV to align the faces")
    parser.add_argument("--probe-noise", default=None, help="noise list of probe images (@R)")
    parser.add_argument("--distractor-noise", default=None, help="noise list of distractor images (@R)")
    parser.add_argument("--max-rank", type=int, default=10)
    parser.add_argument("--flip", default=None, choices=["none", "sum"])
    parser.add_argument("--faiss", action="store_true", help="search with faiss's exact index (faiss-cpu)")
    parser.add_argument("--json", default=None, metavar="OUT")


def run(args: argparse.Namespace) -> int:
    from facerec.cli.common import warnings_to_stderr
    from facerec.eval.identification import folder_protocol, megaface_evaluate, read_noise_list
    from facerec.inference import Embedder
    from facerec.io import atomic_write_text

    probes, labels, distractors = folder_protocol(args.images)
    embedder = Embedder(args.model, flip=args.flip, arch=args.arch)
    with warnings_to_stderr():
        p = embedder.embed(probes, args.landmarks, progress=True)
        d = embedder.embed(distractors, args.landmarks, progress=True)
    for path, reason in p.failed + d.failed:
        print(f"skipped: {reason}", file=sys.stderr)
    ok = {s: i for i, s in enumerate(map(str, probes))}
    keep_labels = labels[[ok[s] for s in p.paths]]
    result = megaface_evaluate(
        p.embeddings, keep_labels, d.embeddings, max_rank=args.max_rank, fars=(1e-3, 1e-4, 1e-5, 1e-6),
        probe_names=p.paths, distractor_names=d.paths,
        probe_noise=read_noise_list(args.probe_noise) if args.probe_noise else None,
        distractor_noise=read_noise_list(args.distractor_noise) if args.distractor_noise else None,
        use_faiss=args.faiss)
    people = len(set(keep_labels.tolist()))
    print(f"probes: {len(p.paths)} images of {people} people ({result.num_pairs} probe pairs); "
          f"distractors: {result.num_distractors} images"
          + (f"; @R removed {result.removed_probes} probes, {result.removed_distractors} distractors"
             if args.probe_noise or args.distractor_noise else ""))
    print("rank-1: {:.2f}%   CMC: {}".format(100 * result.rank1,
                                               " ".join(f"r{r + 1}={100 * v:.2f}" for r, v in enumerate(result.cmc))))
    print("verification: " + "  ".join(f"TAR@FAR={k}: {'n/a' if v is None else f'{100 * v:.2f}%'}"
                                       for k, v in result.tar_at_far.items()))
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "model": args.model, "images": args.images, "rank1": result.rank1, "cmc": result.cmc.tolist(),
            "num_pairs": result.num_pairs, "num_distractors": result.num_distractors,
            "tar_at_far": result.tar_at_far, "removed_probes": result.removed_probes,
            "removed_distractors": result.removed_distractors}, indent=2))
    return 0
