"""Verification pair lists (LFW `pairs.txt`, a generic CSV) and building aligned `.bin` sets from them."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facerec.errors import DataError, not_a_file_reason


@dataclass(frozen=True)
class Pair:
    path1: str
    path2: str
    issame: bool
    fold: int


def read_lfw_pairs(path: str | Path) -> list[Pair]:
    """LFW View 2 `pairs.txt`: header `folds<TAB>n`, then per fold n matched (`name i j`) and n
    mismatched (`name1 i name2 j`) pairs. Paths are `name/name_%04d.jpg`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"pairs file {str(p)!r} {not_a_file_reason(p, 'pairs.txt file')}")
    lines = [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
    try:
        nfolds, n = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError):
        raise DataError(f"{p}: first line must be '<folds> <pairs per half-fold>' (LFW pairs.txt)") from None
    body = lines[1:]
    if len(body) != nfolds * 2 * n:
        raise DataError(f"{p}: header announces {nfolds} folds x {2 * n} pairs, found {len(body)} pair lines")
    out = []
    for k, f in enumerate(body):
        fold = k // (2 * n)
        img = lambda name, i: f"{name}/{name}_{int(i):04d}.jpg"  # noqa: E731
        if len(f) == 3:
            out.append(Pair(img(f[0], f[1]), img(f[0], f[2]), True, fold))
        elif len(f) == 4:
            out.append(Pair(img(f[0], f[1]), img(f[2], f[3]), False, fold))
        else:
            raise DataError(f"{p}:{k + 2}: expected 'name i j' or 'name1 i name2 j', got {' '.join(f)!r}")
    return out


def read_pairs_csv(path: str | Path) -> list[Pair]:
    """A pairs CSV `path1,path2,issame[,fold]` (issame: 1/0/true/false; a header line is allowed)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"pairs file {str(p)!r} {not_a_file_reason(p, 'pairs CSV file')}")
    out = []
    with open(p, newline="", encoding="utf-8") as fh:
        for k, row in enumerate(csv.reader(fh), 1):
            if not row or row[0].startswith("#"):
                continue
            if k == 1 and row[2].strip().lower() in ("issame", "same", "label"):
                continue
            if len(row) not in (3, 4):
                raise DataError(f"{p}:{k}: expected path1,path2,issame[,fold], got {len(row)} fields")
            flag = row[2].strip().lower()
            if flag not in ("1", "0", "true", "false"):
                raise DataError(f"{p}:{k}: issame must be 1/0/true/false, got {row[2]!r}")
            fold = int(row[3]) if len(row) == 4 else -1
            out.append(Pair(row[0].strip(), row[1].strip(), flag in ("1", "true"), fold))
    return out


def build_pairs_bin(
    pairs: Sequence[Pair],
    image_root: str | Path,
    landmarks: dict[str, np.ndarray | None],
    out: str | Path,
    template: str = "arcface",
    size: tuple[int, int] | None = None,
    missing: str = "mean",
    quality: int = 95,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Align every image of `pairs` once and write the set (pairs in the given order).

    `out` ending in `.npz` writes the non-pickle format with the folds of the pairs file; a
    `.bin` has no fold field (its pairs stay in file order, i.e. contiguous folds).

    Args:
        missing: what to do with an image whose landmarks are NA: "mean" (use the mean landmarks
            of the set, sensible for roughly centred photos such as LFW), "center" (centre
            crop), or "error".
    Returns counts: pairs, images, images without landmarks.
    """
    from PIL import Image

    from facerec.data.align import align_face, center_crop
    from facerec.data.bins import write_bin, write_pairs_npz
    from facerec.data.synthetic import encode_jpeg

    root = Path(image_root)
    names = sorted({p.path1 for p in pairs} | {p.path2 for p in pairs})
    known = [v for v in landmarks.values() if v is not None]
    mean_lm = np.mean(known, axis=0) if known else None
    out_size = size or ((112, 112) if template == "arcface" else (112, 96))
    encoded: dict[str, bytes] = {}
    n_missing = 0
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataError(f"image {str(path)!r} of the pairs list {not_a_file_reason(path, 'face image file')}")
        if name not in landmarks:
            raise DataError(f"no landmarks for {name!r} in the landmarks file")
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from None
        lm = landmarks[name]
        if lm is None:
            n_missing += 1
            if missing == "mean" and mean_lm is not None:
                lm = mean_lm
            elif missing == "center":
                encoded[name] = encode_jpeg(center_crop(img, out_size), quality)
                continue
            else:
                raise DataError(f"{name}: no landmarks (NA) and missing={missing!r}")
        encoded[name] = encode_jpeg(align_face(img, lm, template, out_size), quality)
    if log and n_missing:
        log(f"{n_missing} image(s) without landmarks handled by policy {missing!r}")
    images = []
    for p in pairs:
        images += [encoded[p.path1], encoded[p.path2]]
    if str(out).endswith(".npz"):  # keeps the folds of the pairs file explicitly
        folds = [p.fold for p in pairs] if all(p.fold >= 0 for p in pairs) else None
        write_pairs_npz(out, images, [p.issame for p in pairs], folds)
    else:
        write_bin(out, images, [p.issame for p in pairs])
    return {"pairs": len(pairs), "images": len(names), "missing_landmarks": n_missing}
