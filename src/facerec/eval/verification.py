"""10-fold face verification: the insightface protocol, the seed's SphereFace protocol, ROC numbers.

`embeddings` is `[2N, D]` with pair k = rows 2k and 2k+1, `issame` is `[N]`.

- `protocol="insightface"` (insightface `verification.evaluate`): L2-normalise, squared-L2
  distance, thresholds `arange(0, 4, 0.01)`, the first threshold of best accuracy on the 9
  training folds is applied to the test fold; contiguous folds (sklearn `KFold`, no shuffle).
- `protocol="sphereface"` (the seed's LFW evaluation): per fold subtract the mean feature of the
  9 training folds, L2-normalise, cosine score, thresholds `arange(-1, 1, 1e-4)`, threshold =
  mean of all thresholds of best training accuracy.

Accuracies for every threshold are counted exactly with sorted scores and `searchsorted`, so
the 20,000 SphereFace thresholds cost no more than the 400 insightface ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facerec.errors import DataError

FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class VerificationResult:
    protocol: str
    accuracy_mean: float
    accuracy_std: float
    threshold_mean: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    tar_at_far: dict[str, float | None] = field(default_factory=dict)
    auc: float = float("nan")
    eer: float = float("nan")
    num_pairs: int = 0


def kfold_indices(n: int, nfolds: int) -> list[np.ndarray]:
    """Contiguous folds as sklearn's KFold(shuffle=False): the first n % k folds get one more."""
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(nfolds)]


def _as_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _accuracy_below(pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of predicting 'same' when score < threshold, for every threshold."""
    tp = np.searchsorted(np.sort(pos), thresholds, side="left")
    tn = neg.size - np.searchsorted(np.sort(neg), thresholds, side="left")
    return (tp + tn) / (pos.size + neg.size)


def _accuracy_above(pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of predicting 'same' when score > threshold, for every threshold."""
    tp = pos.size - np.searchsorted(np.sort(pos), thresholds, side="right")
    tn = np.searchsorted(np.sort(neg), thresholds, side="left")
    return (tp + tn) / (pos.size + neg.size)


def evaluate(
    embeddings,
    issame,
    nfolds: int = 10,
    protocol: str = "insightface",
    folds: np.ndarray | None = None,
) -> VerificationResult:
    """k-fold verification accuracy plus TAR@FAR, ROC AUC and EER over all pairs.

    Args:
        folds: optional fold id per pair (e.g. from a pairs file); default contiguous folds.
    """
    emb = _as_array(embeddings, "embeddings").astype(np.float64)
    same = _as_array(issame, "issame").astype(bool).ravel()
    if emb.ndim != 2 or emb.shape[0] != 2 * same.size:
        raise DataError(f"embeddings must be [2N, D] for N={same.size} pairs, got {emb.shape}")
    if not np.isfinite(emb).all():
        bad = np.unique(np.nonzero(~np.isfinite(emb))[0] // 2)
        raise DataError(f"embeddings contain NaN/Inf (pairs {bad[:5].tolist()}...); the model output is broken")
    if folds is None:
        fold_sets = kfold_indices(same.size, nfolds)
    else:
        folds = np.asarray(folds)
        fold_sets = [np.nonzero(folds == f)[0] for f in np.unique(folds)]
    a, b = emb[0::2], emb[1::2]
    accs, ths = [], []
    if protocol == "insightface":
        thresholds = np.arange(0, 4, 0.01)
        dist = np.sum((_normalize(a) - _normalize(b)) ** 2, axis=1)
        for test in fold_sets:
            train = np.setdiff1d(np.arange(same.size), test)
            acc = _accuracy_below(dist[train][same[train]], dist[train][~same[train]], thresholds)
            t = thresholds[int(np.argmax(acc))]
            accs.append(float(np.mean((dist[test] < t) == same[test])))
            ths.append(float(t))
        scores = -dist  # higher = more similar, for the ROC numbers
    elif protocol == "sphereface":
        thresholds = np.arange(-1, 1, 1e-4)
        for test in fold_sets:
            train = np.setdiff1d(np.arange(same.size), test)
            mu = np.concatenate([a[train], b[train]]).mean(axis=0)
            s = np.sum(_normalize(a - mu) * _normalize(b - mu), axis=1)
            acc = _accuracy_above(s[train][same[train]], s[train][~same[train]], thresholds)
            t = float(np.mean(thresholds[acc == acc.max()]))
            pos, neg = s[test][same[test]], s[test][~same[test]]
            accs.append(float(((pos > t).sum() + (neg < t).sum()) / test.size))
            ths.append(t)
        scores = np.sum(_normalize(a) * _normalize(b), axis=1)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; use 'insightface' or 'sphereface'")
    tar, auc, eer = roc_numbers(scores, same)
    accs_arr, ths_arr = np.array(accs), np.array(ths)
    return VerificationResult(protocol, float(accs_arr.mean()), float(accs_arr.std()), float(ths_arr.mean()),
                              accs_arr, ths_arr, tar, auc, eer, int(same.size))


def roc_numbers(scores: np.ndarray, same: np.ndarray) -> tuple[dict[str, float | None], float, float]:
    """TAR at each FAR in `FARS` (None where there are too few negatives), ROC AUC and EER."""
    pos, neg = np.sort(scores[same]), np.sort(scores[~same])
    tar: dict[str, float | None] = {}
    for far in FARS:
        key = f"{far:.0e}".replace("e-0", "e-")
        if neg.size == 0 or pos.size == 0 or far * neg.size < 1:
            tar[key] = None
            continue
        # threshold: the score exceeded by a fraction `far` of negatives
        k = int(np.floor(far * neg.size))
        thr = neg[neg.size - k - 1] if k < neg.size else -np.inf
        tar[key] = float(np.mean(pos > thr))
    if pos.size == 0 or neg.size == 0:
        return tar, float("nan"), float("nan")
    # AUC = P(score_pos > score_neg) + 0.5 P(equal)
    lo = np.searchsorted(neg, pos, side="left")
    hi = np.searchsorted(neg, pos, side="right")
    auc = float((lo + 0.5 * (hi - lo)).sum() / (pos.size * neg.size))
    cand = np.unique(np.concatenate([pos, neg]))
    frr = np.searchsorted(pos, cand, side="left") / pos.size  # positives below threshold
    far_ = 1.0 - np.searchsorted(neg, cand, side="left") / neg.size  # negatives at or above
    i = int(np.argmin(np.abs(frr - far_)))
    return tar, auc, float((frr[i] + far_[i]) / 2)
