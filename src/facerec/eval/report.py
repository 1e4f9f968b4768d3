"""Evaluation reports a person can read: a Markdown page with every number, ROC curves as PNG."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from facerec.io import atomic_write_text


def roc_points(scores, same) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at every distinct threshold, from the strictest to the loosest ("same" iff
    score >= threshold), starting at (0, 0) and ending at (1, 1)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(same, dtype=bool).ravel()
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tar = np.r_[0.0, tp / max(y.sum(), 1)]
    far = np.r_[0.0, fp / max((~y).sum(), 1)]
    return far, tar


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: str | Path) -> bool:
    """ROC curves (log FAR axis) to a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    floor = 1.0
    for label, (scores, same) in curves.items():
        far, tar = roc_points(scores, same)
        n_neg = max(int((~np.asarray(same, bool)).sum()), 1)
        floor = min(floor, 1.0 / n_neg)
        keep = far > 0
        ax.step(far[keep], tar[keep], where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    from facerec.io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return True


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"


def write_report(out_dir: str | Path, model: str, preprocess: dict[str, Any], rows: list[dict[str, Any]],
                 curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> Path:
    """`report.md` and `roc_<set>.png` (one curve per flip fusion) in `out_dir`; returns the .md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Verification report: {Path(model).name}", "",
             f"- model: `{model}`",
             f"- preprocessing: input {preprocess.get('input_size')}, {preprocess.get('color')}, mean "
             f"{preprocess.get('mean')}, std {preprocess.get('std')}, template {preprocess.get('template')}",
             f"- written: {_dt.datetime.now().isoformat(timespec='seconds')}", "",
             "Accuracy: 10-fold (or the pairs file's folds), mean ± std over folds. TAR@FAR, AUC and EER "
             "over all pairs, cosine similarity of the fused embeddings. Flip fusion: `none` (the image "
             "only), `sum` (image + mirror, insightface), `concat` (side by side, the seed).", "",
             "| set | protocol | flip | pairs | accuracy (%) | TAR@1e-1 | TAR@1e-2 | TAR@1e-3 | TAR@1e-4 | AUC | EER (%) |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = r["tar_at_far"]
        lines.append(f"| {r['bench']} | {r['protocol']} | {r['flip']} | {r['num_pairs']} | "
                     f"{100 * r['accuracy_mean']:.3f} ± {100 * r['accuracy_std']:.2f} | {_pct(t.get('1e-1'))} | "
                     f"{_pct(t.get('1e-2'))} | {_pct(t.get('1e-3'))} | {_pct(t.get('1e-4'))} | {r['auc']:.4f} | "
                     f"{_pct(r['eer'])} |")
    lines += ["", "TAR at a FAR below 1 / (number of different-person pairs) is undefined (n/a).", ""]
    for bench in dict.fromkeys(b for b, _ in curves):
        png = f"roc_{bench}.png"
        mine = {f"flip {flip}": c for (b, flip), c in curves.items() if b == bench}
        if plot_roc(mine, f"ROC: {bench}", out / png):
            lines += [f"## {bench}", "", f"![ROC {bench}]({png})", ""]
        else:
            lines += [f"## {bench}", "", "(ROC plot skipped: matplotlib is not installed; "
                      "pip install 'facerec[eval]')", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
