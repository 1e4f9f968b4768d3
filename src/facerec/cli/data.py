"""`facerec data pairs2bin | info`: build and inspect face data sets."""

from __future__ import annotations

import argparse
import json


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 112x112 (HxW), got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("pairs2bin", help="aligned .bin from an LFW pairs.txt or a pairs CSV")
    p.add_argument("--pairs", required=True, help="LFW pairs.txt, or CSV path1,path2,issame[,fold]")
    p.add_argument("--images", required=True, help="image root the pair paths are relative to")
    p.add_argument("--landmarks", required=True, help="5-point landmarks TSV")
    p.add_argument("--template", default="arcface", choices=["arcface", "sphereface"])
    p.add_argument("--size", type=_size, default=None, help="output HxW (default: the template's)")
    p.add_argument("--missing", default="mean", choices=["mean", "center", "error"],
                   help="images with NA landmarks: mean landmarks, centre crop, or an error")
    p.add_argument("--out", required=True, help="output .bin")
    i = sub.add_parser("info", help="what a .rec or .bin holds")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.action == "pairs2bin":
        from facerec.data.align import read_landmarks
        from facerec.data.pairs import build_pairs_bin, read_lfw_pairs, read_pairs_csv

        pairs = read_pairs_csv(args.pairs) if args.pairs.endswith(".csv") else read_lfw_pairs(args.pairs)
        stats = build_pairs_bin(pairs, args.images, read_landmarks(args.landmarks), args.out, args.template,
                                args.size, args.missing, log=print)
        print(f"wrote {args.out}: {stats['pairs']} pairs ({sum(p.issame for p in pairs)} same), "
              f"{stats['images']} images aligned to the {args.template} template, "
              f"{stats['missing_landmarks']} without landmarks ({args.missing})")
        return 0
    if args.action == "info":
        info = data_info(args.path)
        print(json.dumps(info, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
        return 0
    return 2


def data_info(path: str) -> dict:
    from pathlib import Path

    import numpy as np

    from facerec.data.decode import decode_image

    if path.endswith(".bin"):
        from facerec.data.bins import read_bin

        images, issame = read_bin(path)
        h, w = decode_image(images[0], where=f"{path} (image 0)").shape[:2]
        return {"path": path, "num_pairs": int(len(issame)), "num_same": int(np.sum(issame)), "image_size": [h, w]}
    from facerec.data.dataset import RecordFaceDataset

    ds = RecordFaceDataset(Path(path))
    x, _ = ds[0]
    return {"path": path, "num_images": len(ds), "num_classes": ds.num_classes,
            "image_size": [int(x.shape[1]), int(x.shape[2])],
            "label_range": [int(ds.labels.min()), int(ds.labels.max())]}
