"""Fitting the same/different threshold that ships with a model (`facerec.contract.Threshold`)."""

from __future__ import annotations

import numpy as np

from facerec.contract import Threshold
from facerec.errors import DataError


def pair_cosines(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of pairs stored as rows (2k, 2k + 1) of `[2N, D]`."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return np.sum(e[0::2] * e[1::2], axis=1)


def fit_threshold(scores, same, criterion: str = "best_accuracy", benchmark: str = "", flip: str = "none") -> Threshold:
    """Cosine threshold over all pairs ("same" iff score >= threshold).

    criterion:
        "best_accuracy": maximises accuracy; the threshold is placed halfway between the lowest
            score accepted and the next lower score (ties: the lowest such threshold).
        "far=<x>" (e.g. "far=1e-3"): the lowest threshold whose false accept rate is <= x.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(same, dtype=bool).ravel()
    if s.size != y.size or s.size == 0:
        raise DataError(f"need as many scores as labels (got {s.size} and {y.size})")
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        raise DataError("fitting a threshold needs both same and different pairs")
    if criterion == "best_accuracy":
        cand = np.unique(s)  # accept score >= cand
        tp = pos.size - np.searchsorted(pos, cand, side="left")
        tn = np.searchsorted(neg, cand, side="left")
        acc = (tp + tn) / s.size
        i = int(np.argmax(acc))
        t = float(cand[i] if i == 0 else (cand[i] + cand[i - 1]) / 2)
        return Threshold(t, criterion, benchmark, flip, int(s.size), float(acc[i]),
                         float(np.mean(neg >= t)), float(np.mean(pos >= t)))
    if criterion.startswith("far="):
        try:
            far = float(criterion[4:])
        except ValueError:
            raise DataError(f"criterion {criterion!r}: expected far=<number>, e.g. far=1e-3") from None
        k = int(np.floor(far * neg.size))  # negatives that may be accepted; 0: above the highest
        t = float(np.nextafter(neg[neg.size - 1 - k], np.inf)) if k < neg.size else float(neg[0])
        acc = (np.sum(pos >= t) + np.sum(neg < t)) / s.size
        return Threshold(t, criterion, benchmark, flip, int(s.size), float(acc), float(np.mean(neg >= t)),
                         float(np.mean(pos >= t)))
    raise DataError(f"unknown threshold criterion {criterion!r} (best_accuracy, far=1e-3, ...)")
