"""MegaFace-style identification and verification against distractors, exact and chunked.

Challenge-1 protocol (Kemelmacher-Shlizerman et al., "The MegaFace Benchmark", CVPR 2016): for
every ordered pair (a, b) of distinct images of one probe identity, image b is hidden among N
distractors and a is the query; the rank of b is 1 + the number of distractors scoring higher
than b. CMC(r) is the fraction of pairs with rank <= r. Verification: genuine pairs are the
probe pairs, impostor pairs are probe x distractor; TAR at the threshold where a fraction FAR
of impostors is accepted.

Scores are cosine similarities. The distractor matrix is visited in chunks with a running
top-k per probe (never a full P x N score matrix), so memory stays at the distractors plus
O(P * (k + chunk)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerec.errors import DataError


def _normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).float()
    return torch.nn.functional.normalize(t, dim=1)


def topk_scores(queries, base, k: int, chunk: int = 65536, block_elements: int = 1 << 24,
                use_faiss: bool = False) -> torch.Tensor:
    """The k highest cosine scores of each query against `base`, descending: [Q, k].

    `base` is visited in chunks of rows (normalised one chunk at a time) and the queries in
    groups, so no score block exceeds `block_elements` floats; a running top-k per query is kept.
    Memory: the base itself plus O(chunk * D + block_elements + Q * k). With `use_faiss` each
    chunk is searched by faiss's exact inner-product index instead (same scores; faiss must be
    installed)."""
    q = _normalize(queries)
    n = int(base.shape[0])
    best = torch.full((q.shape[0], 0), -math.inf)
    if use_faiss:
        try:
            import faiss  # type: ignore[import-not-found]
        except ImportError:
            raise DataError("use_faiss: faiss is not installed (pip install faiss-cpu)") from None
        qn = q.numpy()
        for start in range(0, n, chunk):
            index = faiss.IndexFlatIP(q.shape[1])
            index.add(np.ascontiguousarray(_normalize(base[start : start + chunk]).numpy()))
            d, _ = index.search(qn, min(k, index.ntotal))
            merged = torch.cat([best, torch.from_numpy(d)], dim=1)
            best = torch.topk(merged, k=min(k, merged.shape[1]), dim=1)[0]
        return best
    group = max(1, block_elements // max(1, min(chunk, n)))
    for start in range(0, n, chunk):
        b = _normalize(base[start : start + chunk]).t().contiguous()
        merged_rows = []
        for qs in range(0, q.shape[0], group):
            s = q[qs : qs + group] @ b
            merged = torch.cat([best[qs : qs + group], s], dim=1)
            merged_rows.append(torch.topk(merged, k=min(k, merged.shape[1]), dim=1)[0])
        best = torch.cat(merged_rows) if merged_rows else best
    return best


@dataclass
class IdentificationResult:
    cmc: np.ndarray  # cmc[r-1] = fraction of probe pairs found at rank <= r
    rank1: float
    num_pairs: int
    num_distractors: int
    tar_at_far: dict[str, float | None]
    removed_probes: int = 0  # @R: probe images dropped by the noise list
    removed_distractors: int = 0


def read_noise_list(path: str | Path) -> set[str]:
    """A MegaFace noise list (`facescrub_noises.txt`, `megaface_noises.txt`): one image name or
    relative path per line; blank lines and `#` comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"noise list {str(p)!r} does not exist")
    return {ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")}


def is_listed(name: str, noise: set[str]) -> bool:
    """True if `name`, or any trailing part of its path (down to the file name), is in `noise`."""
    parts = str(name).replace("\\", "/").split("/")
    return any("/".join(parts[i:]) in noise for i in range(len(parts)))


def _clean(features, names, noise: set[str] | None, what: str):
    if not noise:
        return features, None, 0
    if names is None or len(names) != len(features):
        raise DataError(f"@R noise removal needs one {what} name per {what} feature")
    keep = np.array([not is_listed(n, noise) for n in names], dtype=bool)
    return features[keep], keep, int((~keep).sum())


def megaface_evaluate(
    probe_features, probe_labels, distractor_features, max_rank: int = 10, fars=(1e-6,), chunk: int = 65536,
    probe_names=None, distractor_names=None, probe_noise: set[str] | None = None,
    distractor_noise: set[str] | None = None, use_faiss: bool = False,
) -> IdentificationResult:
    """Rank-1 / CMC up to `max_rank` and TAR@FAR for probes against distractors.

    With `probe_noise` / `distractor_noise` (see `read_noise_list`) and the image names, the
    listed images are removed first: the noise-cleaned "@R" variant of the challenge."""
    labels = np.asarray(probe_labels)
    if len(labels) != len(probe_features):
        raise DataError(f"{len(labels)} probe labels for {len(probe_features)} probe features")
    probe_features, keep, removed_p = _clean(probe_features, probe_names, probe_noise, "probe")
    if keep is not None:
        labels = labels[keep]
    distractor_features, _, removed_d = _clean(distractor_features, distractor_names, distractor_noise, "distractor")
    p = _normalize(probe_features)
    n = int(distractor_features.shape[0])
    genuine_scores = []
    ranks = []
    top = topk_scores(p, distractor_features, max_rank, chunk, use_faiss=use_faiss) if n else torch.empty(len(p), 0)
    for ident in np.unique(labels):
        idx = np.nonzero(labels == ident)[0]
        if len(idx) < 2:
            continue
        s = p[idx] @ p[idx].t()
        for i in range(len(idx)):
            for j in range(len(idx)):
                if i == j:
                    continue
                target = s[i, j]
                ranks.append(1 + int((top[idx[i]] > target).sum()))  # capped at max_rank + 1
                if i < j:
                    genuine_scores.append(float(target))
    if not ranks:
        raise DataError("no probe identity has two or more images")
    ranks_arr = np.array(ranks)
    cmc = np.array([(ranks_arr <= r).mean() for r in range(1, max_rank + 1)])
    tar: dict[str, float | None] = {}
    genuine = np.array(genuine_scores)
    for far in fars:
        key = f"{far:.0e}".replace("e-0", "e-")
        n_imp = len(p) * n
        k = int(math.floor(far * n_imp))
        if n_imp == 0 or far * n_imp < 1:
            tar[key] = None
            continue
        # threshold = the (k+1)-th highest impostor score: accepting scores above it accepts k impostors
        kth = topk_scores(p, distractor_features, k + 1, chunk, use_faiss=use_faiss).flatten()
        thr = float(torch.topk(kth, k + 1)[0][-1])
        tar[key] = float((genuine > thr).mean())
    return IdentificationResult(cmc, float(cmc[0]), len(ranks), n, tar, removed_p, removed_d)


def folder_protocol(root: str | Path) -> tuple[list[Path], np.ndarray, list[Path]]:
    """A MegaFace-style protocol from an identity-per-folder tree (the LFW mini-protocol): every
    image of a person with two or more images is a probe (labelled by person), every image of
    the others is a distractor. Returns (probe paths, probe labels, distractor paths)."""
    from facerec.inference import list_images

    root = Path(root)
    by_person: dict[str, list[Path]] = {}
    for p in list_images(root):
        rel = p.relative_to(root)
        if len(rel.parts) < 2:
            continue
        by_person.setdefault(rel.parts[0], []).append(p)
    probes, labels, distractors = [], [], []
    for i, (person, files) in enumerate(sorted(by_person.items())):
        if len(files) >= 2:
            probes += files
            labels += [i] * len(files)
        else:
            distractors += files
    if not probes:
        raise DataError(f"{root}: no person has two or more images; nothing to use as probes")
    return probes, np.array(labels), distractors


def read_devkit_feature(path: str | Path) -> np.ndarray:
    """One MegaFace devkit feature file: OpenCV mat binary `int32 rows, cols, stride, type` (type 5
    = CV_32F), then rows x cols float32."""
    p = Path(path)
    data = p.read_bytes()
    if len(data) < 16:
        raise DataError(f"{p}: too short for an OpenCV mat header")
    rows, cols, stride, typ = np.frombuffer(data[:16], dtype="<i4")
    if typ != 5:
        raise DataError(f"{p}: mat type {typ}, expected 5 (CV_32F)")
    n = int(rows) * int(cols)
    if len(data) < 16 + 4 * n:
        raise DataError(f"{p}: header announces {rows}x{cols} floats, file holds {(len(data) - 16) // 4}")
    return np.frombuffer(data[16 : 16 + 4 * n], dtype="<f4").reshape(int(rows), int(cols)).copy()


def write_devkit_feature(path: str | Path, feature: np.ndarray) -> None:
    f = np.asarray(feature, dtype="<f4").reshape(1, -1) if np.ndim(feature) == 1 else np.asarray(feature, "<f4")
    rows, cols = f.shape
    Path(path).write_bytes(np.array([rows, cols, cols * 4, 5], dtype="<i4").tobytes() + f.tobytes())
