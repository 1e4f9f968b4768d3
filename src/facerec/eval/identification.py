"""MegaFace-style identification and verification against distractors, exact and chunked.

Challenge-1 protocol (Kemelmacher-Shlizerman et al., "The MegaFace Benchmark", CVPR 2016): for
every ordered pair (a, b) of distinct images of one probe identity, image b is hidden among N
distractors and a is the query; the rank of b is 1 + the number of distractors scoring higher
than b. CMC(r) is the fraction of pairs with rank <= r. Verification: genuine pairs are the
probe pairs, impostor pairs are probe x distractor; TAR at the threshold where a fraction FAR
of impostors is accepted.

Scores are cosine similarities, each the exact cosine of the fp32-normalised features rounded
once to fp32 (`facerec.eval.search.exact_scores`). The distractor matrix is visited in chunks
with a running top-k per probe and a running global top-k for the FAR threshold (never a full
P x N score matrix), screened by the fastest exact-safe matmul (`facerec.eval.search`), so
memory stays at the distractors plus O(P * k + chunk * D + block).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerec.errors import DataError, not_a_file_reason
from facerec.eval.search import exact_scores, topk_scores, topk_search, unit_norm_bound, unit_rows

__all__ = ["IdentificationResult", "megaface_evaluate", "topk_scores", "read_noise_list", "is_listed",
           "folder_protocol", "read_devkit_feature", "write_devkit_feature", "read_template_list",
           "load_devkit_features", "devkit_evaluate"]


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
        raise DataError(f"noise list {str(p)!r} {not_a_file_reason(p, 'noise list file')}")
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


def _far_key(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")


def megaface_evaluate(
    probe_features, probe_labels, distractor_features, max_rank: int = 10, fars=(1e-6,), chunk: int | None = None,
    probe_names=None, distractor_names=None, probe_noise: set[str] | None = None,
    distractor_noise: set[str] | None = None, use_faiss: bool = False, screen: str = "auto",
) -> IdentificationResult:
    """Rank-1 / CMC up to `max_rank` and TAR@FAR for probes against distractors.

    With `probe_noise` / `distractor_noise` (see `read_noise_list`) and the image names, the
    listed images are removed first: the noise-cleaned "@R" variant of the challenge. `screen`
    ("auto", "bf16", "fp16", "none") and `use_faiss` choose how candidates are found
    (`facerec.eval.search.topk_search`); the result is the same, exactly, for every choice."""
    labels = np.asarray(probe_labels)
    if len(labels) != len(probe_features):
        raise DataError(f"{len(labels)} probe labels for {len(probe_features)} probe features")
    probe_features, keep, removed_p = _clean(probe_features, probe_names, probe_noise, "probe")
    if keep is not None:
        labels = labels[keep]
    distractor_features, _, removed_d = _clean(distractor_features, distractor_names, distractor_noise, "distractor")
    p = unit_rows(probe_features)
    n = int(distractor_features.shape[0])
    if n and distractor_features.shape[1] != p.shape[1]:
        raise DataError(f"distractor features have {distractor_features.shape[1]} dimensions, probes {p.shape[1]}")
    n_imp = len(p) * n
    need = {far: int(math.floor(far * n_imp)) for far in fars if n_imp and far * n_imp >= 1}
    k_global = max(need.values()) + 1 if need else 0
    if n:
        top, glob = topk_search(p, distractor_features, max_rank, k_global, chunk, screen=screen, use_faiss=use_faiss)
        top = top.cpu()
    else:
        top, glob = torch.full((len(p), max_rank), -math.inf), torch.empty(0)
    ranks, genuine = [], []
    for ident in np.unique(labels):
        idx = torch.from_numpy(np.nonzero(labels == ident)[0])
        m = len(idx)
        if m < 2:
            continue
        a, b = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
        off = a != b
        ia, ib = idx[a[off]], idx[b[off]]  # every ordered pair of distinct images
        target = exact_scores(p[ia], p[ib], unit_norm_bound(p.shape[1]) ** 2)
        ranks.append(1 + (top[ia] > target[:, None]).sum(1))  # capped at max_rank + 1
        genuine.append(target[ia < ib])
    if not ranks:
        raise DataError("no probe identity has two or more images")
    ranks_arr = torch.cat(ranks).numpy()
    cmc = np.array([(ranks_arr <= r).mean() for r in range(1, max_rank + 1)])
    genuine_arr = torch.cat(genuine).numpy()
    glob = glob.cpu().numpy()
    tar: dict[str, float | None] = {}
    for far in fars:
        # threshold = the (k+1)-th highest impostor score: accepting scores above it accepts k impostors
        tar[_far_key(far)] = float((genuine_arr > glob[need[far]]).mean()) if far in need else None
    return IdentificationResult(cmc, float(cmc[0]), len(ranks_arr), n, tar, removed_p, removed_d)


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


DEVKIT_SIZES = [10, 100, 1000, 10000, 100000, 1000000]  # run_experiment.py's default distractor sizes


def read_template_list(path: str | Path, want_ids: bool = False) -> tuple[list[str], list[str] | None]:
    """A MegaFace devkit template list: JSON `{"path": [relative image paths], "id": [...]}`.

    `megaface_features_list.json_{size}_{set}` holds "path" only; `facescrub_features_list.json`
    also "id" (the person of each image). With `want_ids` and no "id" key the person is the
    first folder of each path (FaceScrub's `<person>/<image>` layout). Returns (paths, ids)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"template list {str(p)!r} {not_a_file_reason(p, 'JSON template list file')}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not a JSON template list ({exc})") from None
    if not isinstance(data, dict) or "path" not in data:
        raise DataError(f"{p}: expected a JSON object with a 'path' list (the devkit's template list format)")
    paths = data["path"]
    if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
        raise DataError(f"{p}: key 'path' must be a list of strings")
    if not want_ids:
        return paths, None
    ids = data.get("id")
    if ids is None:
        ids = [x.replace("\\", "/").split("/")[0] for x in paths]
    elif not isinstance(ids, list) or len(ids) != len(paths):
        raise DataError(f"{p}: key 'id' must be a list as long as 'path' ({len(paths)})")
    return paths, [str(x) for x in ids]


def detect_feature_suffix(root: str | Path, rel: str) -> str:
    """The devkit's feature file ending (`<image path><suffix>`, e.g. `_mobilefacenet_112x112.bin`)
    found next to the first listed image: there must be exactly one `<rel>*.bin`."""
    target = Path(root) / rel
    found = sorted(target.parent.glob(re.sub(r"([*?\[])", r"[\1]", target.name) + "*.bin"))
    if len(found) != 1:
        raise DataError(f"cannot tell the feature suffix: {len(found)} files match {str(target)!r}*.bin "
                        "(pass the ending, e.g. --suffix _mobilefacenet_112x112.bin)")
    return found[0].name[len(target.name):]


def load_devkit_features(root: str | Path, paths: list[str], suffix: str) -> np.ndarray:
    """Features of the listed images, read from `root/<path><suffix>` (devkit layout): [n, D]."""
    root = Path(root)
    missing = [rel for rel in paths if not (root / (rel + suffix)).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} feature files missing under {root}, e.g. "
                        f"{str(root / (missing[0] + suffix))!r}")
    out: np.ndarray | None = None
    for i, rel in enumerate(paths):
        f = read_devkit_feature(root / (rel + suffix)).reshape(-1)
        if out is None:
            out = np.empty((len(paths), f.size), dtype=np.float32)
        if f.size != out.shape[1]:
            raise DataError(f"{root / (rel + suffix)}: {f.size} values, the first feature file has {out.shape[1]}")
        if not np.isfinite(f).all():
            raise DataError(f"{root / (rel + suffix)}: the feature holds NaN or infinite values")
        out[i] = f
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def megaface_list_files(megaface_list: str | Path, sizes: list[int] | None, set_index: int = 1) -> dict[int, Path]:
    """The devkit's distractor lists per size: `<base>_{size}_{set}` where `megaface_list` is the
    base (`templatelists/megaface_features_list.json`) or one of the sized files. Without
    `sizes` an existing sized file is used alone, a base gives the devkit's six sizes."""
    p = Path(megaface_list)
    m = re.fullmatch(r"(.*)_(\d+)_(\d+)", p.name)
    if sizes is None and p.is_file():
        return {int(m.group(2)) if m else -1: p}
    base = p.with_name(m.group(1)) if m and not p.name.endswith(".json") else p
    return {s: base.with_name(f"{base.name}_{s}_{set_index}") for s in (sizes or DEVKIT_SIZES)}


def devkit_evaluate(megaface_features: str | Path, facescrub_features: str | Path, megaface_list: str | Path,
                    facescrub_list: str | Path, suffix: str | None = None, sizes: list[int] | None = None,
                    set_index: int = 1, **kwargs) -> dict[int, IdentificationResult]:
    """MegaFace challenge 1 from devkit-format features: probes from `facescrub_list` (labelled by
    its "id"), distractors from each sized MegaFace list, feature files `<dir>/<path><suffix>`
    (suffix detected when None). `kwargs` go to `megaface_evaluate` (max_rank, fars, @R noise
    sets, screen, ...); image names are the list paths. Returns {size: result}."""
    files = megaface_list_files(megaface_list, sizes, set_index)
    lists = {size: read_template_list(f)[0] for size, f in files.items()}
    probe_paths, ids = read_template_list(facescrub_list, want_ids=True)
    if not probe_paths:
        raise DataError(f"{facescrub_list}: the probe list is empty")
    if suffix is None:
        suffix = detect_feature_suffix(facescrub_features, probe_paths[0])
    probes = load_devkit_features(facescrub_features, probe_paths, suffix)
    largest = max(lists.values(), key=len)  # first, in its own order: its features are a view, not a copy
    union = list(dict.fromkeys(largest + [x for paths in lists.values() for x in paths]))
    row = {x: i for i, x in enumerate(union)}
    distractors = load_devkit_features(megaface_features, union, suffix)
    _, labels = np.unique(np.asarray(ids), return_inverse=True)
    results = {}
    for size, paths in lists.items():
        sel = np.array([row[x] for x in paths], dtype=np.int64)
        contiguous = len(sel) == 0 or bool((sel == np.arange(len(sel))).all())
        feats = distractors[: len(sel)] if contiguous else distractors[sel]
        results[len(paths) if size < 0 else size] = megaface_evaluate(
            probes, labels, feats, probe_names=probe_paths, distractor_names=paths, **kwargs)
    return results
