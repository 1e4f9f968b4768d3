"""`facerec data align | pairs2bin | list | pack | export | convert | verify | info`: build and inspect
face data sets."""

from __future__ import annotations

import argparse
import json


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 112x112 (HxW), got {text!r}") from None


def _alignment_arguments(p: argparse.ArgumentParser, required: bool, missing: tuple[str, ...], missing_help: str) -> None:
    p.add_argument("--landmarks", required=required, default=None, help="5-point landmarks TSV (aligns the images)")
    p.add_argument("--template", default="arcface", choices=["arcface", "sphereface"])
    p.add_argument("--size", type=_size, default=None, help="aligned output HxW (default: the template's)")
    p.add_argument("--missing", default=missing[0], choices=list(missing), help=missing_help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("pairs2bin", help="aligned .bin from an LFW pairs.txt or a pairs CSV")
    p.add_argument("--pairs", required=True, help="LFW pairs.txt, or CSV path1,path2,issame[,fold]")
    p.add_argument("--images", required=True, help="image root the pair paths are relative to")
    _alignment_arguments(p, required=True, missing=("mean", "center", "error"),
                         missing_help="images with NA landmarks: mean landmarks, centre crop, or an error")
    p.add_argument("--out", required=True, help="output .bin")
    al = sub.add_parser("align", help="align a folder of photos with 5-point landmarks into a folder of crops")
    al.add_argument("--images", required=True, help="image root (landmark keys are paths relative to it)")
    _alignment_arguments(al, required=True, missing=("skip", "center", "error"),
                         missing_help="images without landmarks: leave out (counted), centre crop, or an error")
    al.add_argument("--quality", type=int, default=95, help="JPEG quality of the crops")
    al.add_argument("--out", required=True, help="output root (same tree, .jpg)")
    lst = sub.add_parser("list", help="list file (path<TAB>label) of an identity-per-folder tree")
    lst.add_argument("root", help="root/<identity>/<images>")
    lst.add_argument("--out", required=True, help="output list file")
    pk = sub.add_parser("pack", help="pack a list file (or a folder tree) into RecordIO")
    pk.add_argument("--list", default=None, help="list file (default: scan --root)")
    pk.add_argument("--root", required=True, help="image root the list paths are relative to")
    _alignment_arguments(pk, required=False, missing=("skip", "center", "error"),
                         missing_help="images without landmarks: leave out (counted), centre crop, or an error")
    pk.add_argument("--quality", type=int, default=95, help="JPEG quality of aligned images")
    pk.add_argument("--out", required=True, help="output .rec (the .idx and property go beside it)")
    ex = sub.add_parser("export", help="a .rec back to a folder per label (original bytes)")
    ex.add_argument("rec")
    ex.add_argument("--out", required=True)
    cv = sub.add_parser("convert", help="an insightface .bin to the non-pickle .npz pair format")
    cv.add_argument("src")
    cv.add_argument("--out", required=True, help="output .npz")
    v = sub.add_parser("verify", help="scan a .rec or .bin and report every bad record")
    v.add_argument("path")
    i = sub.add_parser("info", help="what a .rec or .bin holds")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.action == "align":
        from facerec.data.align import align_folder

        align_folder(args.images, args.landmarks, args.out, args.template, args.size, args.missing, args.quality,
                     log=print)
        return 0
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
    if args.action == "list":
        from facerec.data.folder import scan_folder, write_list

        entries = scan_folder(args.root)
        write_list(entries, args.out)
        print(f"wrote {args.out}: {len(entries)} images of {len({e.label for e in entries})} identities")
        return 0
    if args.action == "pack":
        return _pack(args)
    if args.action == "export":
        from facerec.data.folder import export_rec

        n = export_rec(args.rec, args.out)
        print(f"exported {n} images of {args.rec} into {args.out}/<label>/")
        return 0
    if args.action == "convert":
        from facerec.data.bins import convert_bin_to_npz

        n = convert_bin_to_npz(args.src, args.out)
        print(f"wrote {args.out}: {n} pairs (no pickle)")
        return 0
    if args.action == "verify":
        from facerec.data.verify import verify_bin, verify_rec

        report = verify_bin(args.path) if args.path.endswith((".bin", ".npz")) else verify_rec(args.path)
        for problem in report.problems:
            print(problem)
        print(f"{args.path}: {report.checked} records checked, {len(report.problems)} problem(s)")
        return 0 if report.ok else 1
    if args.action == "info":
        info = data_info(args.path)
        print(json.dumps(info, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
        return 0
    return 2


def data_info(path: str) -> dict:
    from pathlib import Path

    import numpy as np

    from facerec.data.decode import decode_image

    if path.endswith((".bin", ".npz")):
        from facerec.data.bins import read_pairs

        images, issame, folds = read_pairs(path)
        h, w = decode_image(images[0], where=f"{path} (image 0)").shape[:2]
        return {"path": path, "num_pairs": int(len(issame)), "num_same": int(np.sum(issame)), "image_size": [h, w],
                "num_folds": int(len(np.unique(folds))) if folds is not None else None}
    from facerec.data.dataset import RecordFaceDataset

    ds = RecordFaceDataset(Path(path))
    x, _ = ds[0]
    return {"path": path, "num_images": len(ds), "num_classes": ds.num_classes,
            "image_size": [int(x.shape[1]), int(x.shape[2])],
            "label_range": [int(ds.labels.min()), int(ds.labels.max())]}


def _pack(args: argparse.Namespace) -> int:
    from facerec.data.folder import pack_list, read_list, scan_folder

    entries = read_list(args.list) if args.list else scan_folder(args.root)
    transform = None
    if args.landmarks:
        import numpy as np

        from facerec.data.align import align_face, center_crop, read_landmarks
        from facerec.data.decode import decode_image
        from facerec.data.synthetic import encode_jpeg
        from facerec.errors import DataError

        lms = read_landmarks(args.landmarks)
        size = args.size or ((112, 112) if args.template == "arcface" else (112, 96))
        kept, skipped = [], []
        for e in entries:
            if lms.get(e.path) is None and args.missing == "skip":
                skipped.append(e.path)
            elif e.path not in lms and args.missing == "error":
                raise DataError(f"{e.path}: not in the landmarks file {args.landmarks}")
            else:
                kept.append(e)
        if skipped:
            print(f"skipped {len(skipped)} image(s) without landmarks (policy 'skip'), e.g. {skipped[0]}")
        entries = kept

        def transform(data: bytes, path: str) -> bytes:
            img = decode_image(data, where=path)
            lm = lms.get(path)
            if lm is None:
                if args.missing == "error":
                    raise DataError(f"{path}: landmarks are NA")
                return encode_jpeg(center_crop(img, size), args.quality)
            return encode_jpeg(align_face(img, np.asarray(lm), args.template, size), args.quality)

    pack_list(entries, args.root, args.out, transform, log=print)
    return 0
