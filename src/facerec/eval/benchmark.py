"""Evaluate a model on `.bin` verification sets: every protocol and flip mode from one pass.

Each distinct image is embedded once with and once without mirroring, so the "none", "sum" and
"concat" flip fusions and both protocols cost one pass of the model over the set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from facerec.errors import DataError, not_a_file_reason

# The usual file names of the standard verification sets in a data directory.
STANDARD_BENCHES = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")


def resolve_bench(name: str, data_dir: str | Path | None) -> Path:
    """`lfw` -> DATA/lfw.bin; a path to a `.bin` is used as is."""
    p = Path(name)
    if p.suffix in (".bin", ".npz"):
        if not p.is_file():
            raise DataError(f"verification set {str(p)!r} {not_a_file_reason(p, f'{p.suffix} verification file')}")
        return p
    if data_dir is None:
        raise DataError(f"benchmark {name!r} needs --data DIR holding {name}.bin")
    q = Path(data_dir) / f"{name}.bin"
    if not q.is_file() and (Path(data_dir) / f"{name}.npz").is_file():
        q = Path(data_dir) / f"{name}.npz"
    if not q.is_file():
        known = ", ".join(STANDARD_BENCHES)
        raise DataError(f"benchmark {name!r}: {str(q)!r} {not_a_file_reason(q, f'{q.suffix} verification file')} "
                        f"(standard names: {known})")
    return q


def embed_bin(model: nn.Module, path: str | Path, batch_size: int = 256, device: str = "cpu",
              progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(embeddings, embeddings of the mirrored images, issame, folds or None) of a pair set."""
    from facerec.data.bins import read_pairs
    from facerec.data.decode import decode_image
    from facerec.eval.embeddings import extract_embeddings

    images, issame, folds = read_pairs(path)
    index: dict[bytes, int] = {}
    inverse = np.array([index.setdefault(b, len(index)) for b in images])
    uniq = list(index)
    decoded = [decode_image(b, "RGB", f"{path} (image {i})") for i, b in enumerate(uniq)]
    if len({d.shape for d in decoded}) != 1:
        raise DataError(f"{path}: images of several sizes; a .bin must hold one size")
    x = np.stack(decoded)
    pre = model.preprocess
    e = extract_embeddings(model, x, pre, flip="none", batch_size=batch_size, device=device, progress=progress)
    ef = extract_embeddings(model, x[:, :, ::-1], pre, flip="none", batch_size=batch_size, device=device,
                            progress=progress)
    return e[inverse], ef[inverse], issame, folds


def fuse(e: np.ndarray, ef: np.ndarray, flip: str) -> np.ndarray:
    if flip == "none":
        return e
    if flip == "sum":
        return e + ef
    if flip == "concat":
        return np.concatenate([e, ef], axis=1)
    raise ValueError(f"flip must be none, sum or concat, got {flip!r}")


def evaluate_bins(
    model: nn.Module,
    benches: Sequence[str],
    data_dir: str | Path | None = None,
    protocols: Sequence[str] = ("insightface",),
    flips: Sequence[str] = ("sum",),
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
    threshold_criterion: str | None = None,
    curves: dict | None = None,
) -> list[dict[str, Any]]:
    """One result row per (bench, protocol, flip), in the stable JSON shape of `facerec eval`.

    With `threshold_criterion` (see `facerec.eval.thresholds.fit_threshold`), rows of flip
    "none"/"sum" also carry "threshold": the cosine decision threshold fitted on all pairs.
    """
    from facerec.eval.thresholds import fit_threshold, pair_cosines
    from facerec.eval.verification import evaluate

    rows = []
    for bench in benches:
        path = resolve_bench(bench, data_dir)
        e, ef, issame, folds = embed_bin(model, path, batch_size, device, progress)
        name = Path(bench).stem if Path(bench).suffix in (".bin", ".npz") else bench
        if curves is not None:
            for flip in flips:
                curves[(name, flip)] = (pair_cosines(fuse(e, ef, flip)), np.asarray(issame, dtype=bool))
        for protocol in protocols:
            for flip in flips:
                r = evaluate(fuse(e, ef, flip), issame, protocol=protocol, folds=folds)
                rows.append({
                    "bench": name, "protocol": protocol, "flip": flip, "num_pairs": r.num_pairs,
                    "num_folds": len(r.fold_accuracies),
                    "accuracy_mean": r.accuracy_mean, "accuracy_std": r.accuracy_std,
                    "threshold_mean": r.threshold_mean, "tar_at_far": r.tar_at_far, "auc": r.auc, "eer": r.eer,
                })
                if threshold_criterion and flip != "concat":
                    rows[-1]["threshold"] = fit_threshold(pair_cosines(fuse(e, ef, flip)), issame, threshold_criterion,
                                                          name, flip).to_dict()
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of result rows."""
    lines = ["| set | protocol | flip | accuracy (%) | TAR@FAR=1e-3 | AUC |", "|---|---|---|---|---|---|"]
    for r in rows:
        tar = r["tar_at_far"].get("1e-3")
        tar_s = "n/a" if tar is None else f"{100 * tar:.2f}"
        lines.append(f"| {r['bench']} | {r['protocol']} | {r['flip']} | {100 * r['accuracy_mean']:.3f} ± "
                     f"{100 * r['accuracy_std']:.2f} | {tar_s} | {r['auc']:.4f} |")
    return "\n".join(lines)
