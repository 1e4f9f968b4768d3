"""Exact top-k cosine search in blocks, with a fast low-precision screening pass.

Every score returned is the *canonical* score of two fp32 unit vectors q, b: the exact real
number q . b rounded once to fp32 (`exact_scores`). It does not depend on the order of a
summation, on a matmul kernel or on the hardware, so every mode below returns bit-identical
results; the modes differ only in how candidates are found.

A block of scores is first *screened* by a matmul: fp32 (`screen="none"`), bf16 or fp16. A
rigorous bound `delta = screen_error_bound(dim, screen)` holds for |screened - exact| over
every pair. Within a running top-k whose k-th exact value is t, an item can still enter only
if its exact score is >= t, so only items screened >= t - delta are candidates; before k items
exist, the k-th screened score t~ of the block gives exact k-th >= t~ - delta and the candidate
threshold t~ - 2 delta. Candidates are rescored exactly and merged, so the result equals the
top-k of the full exact score matrix. A block that yields too many candidates in bf16 / fp16
is screened again in fp32 (for D = 512, delta is 3.1e-5 instead of 1.2e-2); candidates are
always rescored in batches of bounded size, so memory stays bounded even when every score ties.
"""

from __future__ import annotations

import contextlib
import math
from fractions import Fraction
from typing import Iterator

import numpy as np
import torch

from facerec.errors import DataError

SCREENS = ("auto", "bf16", "fp16", "none")
_U32 = 2.0**-24  # unit roundoff of fp32
_UNIT = {"none": 0.0, "bf16": 2.0**-8, "fp16": 2.0**-11}  # unit roundoff of the screen's inputs
_DTYPE = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_RESCORE_PAIRS = 8192  # pairs rescored at once: 8192 x D x 8 bytes of fp64 temporaries
_NONZERO_MAX = 1 << 20  # candidate index pairs listed at once (16 MiB)
_accumulation_ok: dict[tuple[str, str], tuple[bool, bool]] = {}


def unit_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows of `x` as fp32 unit vectors (a zero row stays zero)."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).float()
    return torch.nn.functional.normalize(t, dim=1)


def resolve_screen(screen: str, device: torch.device | str = "cpu") -> str:
    """Turn `screen` into "bf16", "fp16" or "none" (exact fp32 screening) for `device`.

    "auto" picks bf16 only where it is native: CUDA (fp16 if the GPU lacks bf16) or a CPU with
    AVX512-BF16 / AMX (`facerec.train.runtime.cpu_supports_bf16`). Elsewhere bf16 is emulated,
    hundreds of times slower than fp32, and "auto" stays in fp32."""
    device = torch.device(device)
    if screen not in SCREENS:
        raise DataError(f"screen must be one of {', '.join(SCREENS)}, got {screen!r}")
    if screen == "fp16" and device.type != "cuda":
        raise DataError("screen='fp16' needs a CUDA device; use 'bf16' or 'none' on CPU")
    if screen != "auto":
        return screen
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from facerec.train.runtime import cpu_supports_bf16

    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "none"


def unit_norm_bound(dim: int) -> float:
    """An upper bound on the norm of a row of `unit_rows` output (fp32 rounding of the norm,
    the division and the elements)."""
    return 1.0 + (dim + 4) * _U32


def screen_error_bound(dim: int, screen: str, rounded_output: bool | None = None) -> float:
    """A bound on |screened score - exact score| for fp32 unit vectors of dimension `dim`.

    Inputs are rounded to the screen's format (unit roundoff u: relative error <= u per element,
    plus half the smallest subnormal for fp16's underflow), products are accumulated in fp32
    (any order: error <= gamma_dim * sum |q_i b_i|, gamma_n = n u32 / (1 - n u32)), and the
    output is rounded to the screen format when the matmul returns it (`rounded_output`,
    default: True for bf16 / fp16). The fp32 normalisation leaves norms <= 1 + (dim + 4) u32.
    The sum is inflated by 2^-10 and 1e-12 for safety."""
    u = _UNIT[screen]
    if rounded_output is None:
        rounded_output = screen != "none"
    nu = unit_norm_bound(dim)
    n2 = nu * nu  # bound on ||q|| ||b|| and on sum |q_i b_i|
    under = 2.0**-25 * math.sqrt(dim) * nu * 2 if screen == "fp16" else 0.0  # fp16 subnormal inputs
    input_err = (2 * u + u * u) * n2 + under * (1 + u) + dim * 2.0**-126
    mag = (1 + u) ** 2 * n2 + under  # bound on sum |q~_i b~_i| and on |screened|
    gamma = dim * _U32 / (1 - dim * _U32)
    acc_err = gamma * mag + dim * 2.0**-126  # fp32 accumulation (and flushed subnormals)
    out_err = (u * mag * (1 + gamma) if rounded_output else 0.0) + 2.0**-126
    exact_err = _U32 * n2  # the exact score rounded once to fp32
    return (input_err + acc_err + out_err + exact_err) * (1 + 2.0**-10) + 1e-12


@contextlib.contextmanager
def _ieee_matmul() -> Iterator[None]:
    """fp32 matmuls in full fp32 (no TF32 / bf16 passes) and reduced-precision reductions off
    inside the screen, so the error bound holds; previous settings restored afterwards."""
    saved = torch.get_float32_matmul_precision()
    cuda = torch.backends.cuda.matmul
    flags = ("allow_tf32", "allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction")
    saved_flags = {f: getattr(cuda, f) for f in flags if hasattr(cuda, f)}
    torch.set_float32_matmul_precision("highest")
    try:
        for f in saved_flags:
            setattr(cuda, f, False)
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
        for f, v in saved_flags.items():
            setattr(cuda, f, v)


def _matmul(a: torch.Tensor, b: torch.Tensor, fp32_out: bool) -> torch.Tensor:
    if fp32_out and a.dtype != torch.float32:
        return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).float()


def _screen_backend(screen: str, device: torch.device) -> tuple[bool, bool]:
    """(usable, fp32 output) for a low-precision screen on `device`, probed once: the matmul must
    accumulate in fp32 (4096 ones sum to 4096, not to 256 / 2048 as in bf16 / fp16)."""
    key = (screen, str(device))
    if key not in _accumulation_ok:
        dt = _DTYPE[screen]
        a = torch.ones(2, 4096, dtype=dt, device=device)
        b = torch.ones(4096, 2, dtype=dt, device=device)
        fp32_out = False
        try:
            with _ieee_matmul():
                r = torch.mm(a, b, out_dtype=torch.float32)
            fp32_out = r.dtype == torch.float32
        except (RuntimeError, NotImplementedError, TypeError):
            pass
        with _ieee_matmul():
            r = _matmul(a, b, fp32_out)
        _accumulation_ok[key] = (bool((r == 4096).all()), fp32_out)
    return _accumulation_ok[key]


def _round_fraction_to_fp32(f: Fraction) -> np.float32:
    """The fp32 nearest to the exact rational `f` (ties to even)."""
    c = np.float32(float(f))
    options = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    best = min(options, key=lambda v: (abs(Fraction(float(v)) - f), int(np.array(v).view(np.int32)) & 1))
    return np.float32(best)


def exact_scores(q: torch.Tensor, b: torch.Tensor, norm_bound: float | None = None) -> torch.Tensor:
    """Canonical scores of row pairs: fp32(exact q[i] . b[i]) for fp32 `q`, `b` of shape [n, D].

    Computed in fp64 (products of fp32 values are exact there; the sum's error is below
    gamma_D * sum |q_j b_j| in any order; `norm_bound` >= ||q[i]|| ||b[i]|| bounds that sum,
    else it is computed) and rounded to fp32; where that error could straddle an fp32 rounding
    boundary (about one pair in 10^5, mostly scores near 0) the sum is redone in exact rational
    arithmetic. The result therefore depends on the two vectors only."""
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    dim = q.shape[1]
    gamma = dim * 2.0**-53 / (1 - dim * 2.0**-53) * (1 + 2.0**-40)
    for s in range(0, q.shape[0], _RESCORE_PAIRS):
        qs, bs = q[s : s + _RESCORE_PAIRS], b[s : s + _RESCORE_PAIRS]
        prod = qs.double().mul_(bs)
        r = prod.sum(1)
        c = r.float()
        if norm_bound is not None:
            unsafe = _unsafe(r, c, torch.full_like(r, gamma * norm_bound))
            if unsafe.any():  # recheck those with the pair's own sum |q_j b_j|
                sub = unsafe.nonzero().flatten()
                unsafe[sub] = _unsafe(r[sub], c[sub], gamma * prod[sub].abs_().sum(1))
        else:
            unsafe = _unsafe(r, c, gamma * prod.abs_().sum(1))
        for i in unsafe.nonzero().flatten().tolist():
            f = sum((Fraction(x) * Fraction(y) for x, y in zip(qs[i].double().tolist(), bs[i].double().tolist())),
                    Fraction(0))
            c[i] = float(_round_fraction_to_fp32(f))
        out[s : s + _RESCORE_PAIRS] = c
    return out


def _unsafe(r: torch.Tensor, c: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """True where fp64 value `r` +- `err` may round to another fp32 than `c` = fp32(r)."""
    c64 = c.double()
    up = torch.nextafter(c, torch.full_like(c, math.inf)).double() - c64
    down = c64 - torch.nextafter(c, torch.full_like(c, -math.inf)).double()
    d = r - c64  # exact (Sterbenz) wherever the check can pass
    half = 0.5 - 2.0**-30  # slack for the rounding of the comparison itself
    return (d + err >= up * half) | (d - err <= -down * half) | ~torch.isfinite(r)


class _TopK:
    """Running exact top-k per row (`rows` x k, descending, -inf padded) after `seen` items."""

    def __init__(self, rows: int, k: int, device: torch.device):
        self.k = k
        self.best = torch.full((rows, k), -math.inf, device=device)
        self.seen = 0

    def threshold(self, rows: slice, screened: torch.Tensor, delta: float) -> torch.Tensor:
        """Per-row candidate threshold for a block of screened scores [len(rows), C]."""
        k, s, c = self.k, self.seen, screened.shape[1]
        best = self.best[rows]
        if s >= k:
            return best[:, k - 1] - delta
        if s + c <= k:
            return torch.full((best.shape[0],), -math.inf, device=best.device)
        t = torch.topk(screened, k - s, dim=1)[0][:, -1]  # (k - s)-th screened of the block
        floor = best[:, s - 1] if s > 0 else torch.full_like(t, math.inf)
        return torch.minimum(t - delta, floor) - delta

    def merge(self, rows: torch.Tensor, scores: torch.Tensor) -> None:
        """Merge exact `scores` of items belonging to row indices `rows` (any order)."""
        if rows.numel() == 0:
            return
        touched, inverse = torch.unique(rows, return_inverse=True)
        k = self.k
        counts = torch.bincount(inverse, minlength=len(touched))
        width = int(counts.max())
        if len(touched) * width <= 1 << 22:  # dense: one [rows, k + width] top-k
            order = torch.argsort(inverse, stable=True)
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.arange(len(order), device=rows.device) - starts[inverse[order]]
            dense = torch.full((len(touched), width), -math.inf, device=rows.device)
            dense.view(-1).index_copy_(0, inverse[order] * width + pos, scores[order])  # 2-d index_put is slow
            self.best[touched] = torch.topk(torch.cat([self.best[touched], dense], 1), k, dim=1)[0]
            return
        vals = torch.cat([self.best[touched].flatten(), scores])
        owner = torch.cat([torch.arange(len(touched), device=rows.device).repeat_interleave(k), inverse])
        order = torch.argsort(vals, descending=True, stable=True)
        order = order[torch.argsort(owner[order], stable=True)]
        counts = torch.bincount(owner, minlength=len(touched))
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(order), device=rows.device) - starts[owner[order]]
        keep = pos < k
        sel = order[keep]
        self.best.view(-1).index_copy_(0, touched[owner[sel]] * k + pos[keep], vals[sel])


def topk_search(queries: torch.Tensor, base, k: int, k_global: int = 0, chunk: int = 65536,
                block_elements: int = 1 << 24, screen: str = "auto", use_faiss: bool = False,
                device: torch.device | str | None = None, candidate_cap: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k canonical scores of unit `queries` [Q, D] against the rows of `base`.

    Returns (per-query top-k [Q, k] descending, the top `k_global` scores over all Q x N pairs
    descending); -inf pads when fewer items exist. `base` rows are normalised here, one chunk
    at a time. Memory: the base plus O(chunk * D + block_elements + Q * k + k_global).
    `candidate_cap` (default max(4 * block rows * k + 4 * k_global, 2^16)) is the number of
    candidates of one block above which a bf16 / fp16 block is screened again in fp32. With
    `use_faiss` faiss's fp32 index screens instead (`screen` is then unused)."""
    dev = torch.device(device) if device is not None else (
        base.device if isinstance(base, torch.Tensor) else torch.device("cpu"))
    if k < 1 or k_global < 0:
        raise ValueError(f"topk_search needs k >= 1 and k_global >= 0, got k={k}, k_global={k_global}")
    q = queries.float().to(dev)
    n, dim = int(base.shape[0]), int(q.shape[1])
    if q.numel() and float(q.norm(dim=1).max()) > unit_norm_bound(dim):
        raise ValueError("topk_search needs unit-norm queries (see unit_rows); the error bounds assume them")
    rows = _TopK(q.shape[0], k, dev)
    glob = _TopK(1, k_global, dev)
    if use_faiss:
        return _faiss_search(q, base, max(k, k_global), chunk, rows, glob, k)
    mode = resolve_screen(screen, dev)
    fp32_out = True
    if mode != "none":
        ok, fp32_out = _screen_backend(mode, dev)
        if not ok:
            mode = "none"  # this backend does not accumulate in fp32: the bound would not hold
    delta = screen_error_bound(dim, mode, rounded_output=not fp32_out)
    delta32 = screen_error_bound(dim, "none")
    q_low = q.to(_DTYPE[mode]) if mode != "none" else q
    # working buffers in proportion to the base (at most 1/8 of it for the normalised chunk, 1/16
    # for a score block), so memory stays near the base at 100k as at 1M (smaller buffers, 1/32
    # and 1/64, saved ~10 MiB at 100k but cost 1M 64% -> 59% of the matmul throughput)
    chunk = max(1, min(chunk, max(8192, n // 8)))
    block_elements = min(block_elements, max(1 << 22, n * dim // 16))
    group = max(1, block_elements // max(1, min(chunk, n)))
    with _ieee_matmul():
        for start in range(0, n, chunk):
            b = unit_rows(torch.as_tensor(base[start : start + chunk]).to(dev))
            bt = b.t()  # a transposed view: BLAS reads it as is, no copy
            bt_low = bt.to(_DTYPE[mode]) if mode != "none" else bt
            for qs in range(0, q.shape[0], group):
                sl = slice(qs, qs + group)
                scr = _matmul(q_low[sl], bt_low, fp32_out)
                cap = candidate_cap or max(4 * scr.shape[0] * k + 4 * k_global, 1 << 16)
                mask = _candidates(rows, glob, sl, scr, delta)
                if mode != "none" and int(torch.count_nonzero(mask)) > cap:
                    scr = q[sl] @ bt  # too many near-ties for the low-precision window: fp32
                    mask = _candidates(rows, glob, sl, scr, delta32)
                del scr
                _rescore(mask, q, b, qs, rows, glob)
                glob.seen += mask.numel()
                del mask
            rows.seen += b.shape[0]
            del b, bt, bt_low  # before the next chunk is normalised, not after
    return rows.best, glob.best[0]


def _candidates(rows: _TopK, glob: _TopK, sl: slice, scr: torch.Tensor, delta: float) -> torch.Tensor:
    mask = scr >= rows.threshold(sl, scr, delta)[:, None]
    if glob.k:
        mask |= scr >= glob.threshold(slice(0, 1), scr.reshape(1, -1), delta)[0]
    return mask


def _rescore(mask: torch.Tensor, q: torch.Tensor, b: torch.Tensor, qs: int, rows: _TopK, glob: _TopK) -> None:
    """Exact scores of the masked pairs of a block, merged into both running top-k's, in batches
    of _RESCORE_PAIRS; a mask with more than _NONZERO_MAX pairs is taken in slices of rows so the
    index lists stay bounded too."""
    total = int(torch.count_nonzero(mask))
    if total == 0:
        return
    if total <= _NONZERO_MAX:
        slices = [(0, mask.shape[0])]
    else:  # pathological (mass ties): slices of rows holding about _NONZERO_MAX candidates each
        ends = torch.searchsorted(torch.count_nonzero(mask, dim=1).cumsum(0),
                                  torch.arange(1, total // _NONZERO_MAX + 2) * _NONZERO_MAX, right=True)
        bounds = sorted({0, mask.shape[0], *[min(int(e), mask.shape[0]) for e in ends]})
        slices = list(zip(bounds[:-1], bounds[1:]))
    norm2 = unit_norm_bound(q.shape[1]) ** 2
    for r0, r1 in slices:
        idx = mask[r0:r1].nonzero()
        for s in range(0, idx.shape[0], _RESCORE_PAIRS):
            part = idx[s : s + _RESCORE_PAIRS]
            qi = part[:, 0] + (qs + r0)
            scores = exact_scores(q[qi], b[part[:, 1]], norm2)
            rows.merge(qi, scores)
            if glob.k:
                glob.merge(torch.zeros_like(qi), scores)


def _faiss_search(q: torch.Tensor, base, k_eff: int, chunk: int, rows: _TopK, glob: _TopK, k: int):
    """faiss's exact inner-product index as the (fp32) screen: per row it returns the top m of a
    chunk; m doubles for the rows whose window is not yet covered. The global top-k comes from
    the union of the per-row top-k_eff lists."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        raise DataError("use_faiss: faiss is not installed (pip install faiss-cpu)") from None
    dim = q.shape[1]
    delta = screen_error_bound(dim, "none")
    acc = _TopK(q.shape[0], k_eff, torch.device("cpu"))
    qc = q.cpu()
    qn = np.ascontiguousarray(qc.numpy())
    n = int(base.shape[0])
    for start in range(0, n, chunk):
        b = unit_rows(torch.as_tensor(base[start : start + chunk]).cpu())
        index = faiss.IndexFlatIP(dim)
        index.add(np.ascontiguousarray(b.numpy()))
        c = b.shape[0]
        todo = torch.arange(q.shape[0])
        m = min(c, k_eff + 16)
        while todo.numel():
            d, i = index.search(qn[todo.numpy()], m)
            d, i = torch.from_numpy(d), torch.from_numpy(i)
            thr = _faiss_threshold(acc, todo, d, c, delta)
            covered = (d[:, -1] < thr) | (m >= c)
            sel = (d >= thr[:, None]) & (i >= 0) & covered[:, None]
            r, col = sel.nonzero(as_tuple=True)
            qi, bi = todo[r], i[r, col]
            acc.merge(qi, exact_scores(qc[qi], b[bi], unit_norm_bound(dim) ** 2))
            todo = todo[~covered]
            m = min(c, 2 * m)
        acc.seen += c
    top = acc.best[:, :k].to(q.device)
    if glob.k:
        glob.merge(torch.zeros(acc.best.numel(), dtype=torch.long), acc.best.flatten())
    return top, glob.best[0].to(q.device)


def _faiss_threshold(acc: _TopK, todo: torch.Tensor, d: torch.Tensor, c: int, delta: float) -> torch.Tensor:
    k, s = acc.k, acc.seen
    best = acc.best[todo]
    if s >= k:
        return best[:, k - 1] - delta
    if s + c <= k:
        return torch.full((len(todo),), -math.inf)
    t = d[:, k - s - 1]  # faiss returns each row's top m (m >= k - s) sorted
    floor = best[:, s - 1] if s > 0 else torch.full_like(t, math.inf)
    return torch.minimum(t - delta, floor) - delta


def topk_scores(queries, base, k: int, chunk: int = 65536, block_elements: int = 1 << 24,
                use_faiss: bool = False, screen: str = "auto", device: torch.device | str | None = None,
                ) -> torch.Tensor:
    """The k highest cosine scores of each query against `base`, descending: [Q, k].

    Exact: each score is the exact cosine of the fp32-normalised vectors rounded once to fp32,
    and the result equals the top-k of the full score matrix whichever `screen` finds the
    candidates ("auto", "bf16", "fp16" on CUDA, "none" = fp32; see `resolve_screen`) and with
    `use_faiss` (faiss's exact index screens; faiss must be installed). `base` is visited in
    chunks of rows and the queries in groups so no score block exceeds `block_elements`.
    Memory: the base itself plus O(chunk * D + block_elements + Q * k)."""
    top, _ = topk_search(unit_rows(queries), base, k, 0, chunk, block_elements, screen, use_faiss, device)
    return top[:, : min(k, int(base.shape[0]))]
