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

Once the running top-k's have filled, most rows of a block hold no candidate; a row maximum
(one read-only pass) finds the rows that do, and only those are compared item by item. The
distractor chunk, the query group, the scores and the mask live in fixed-size buffers reused by
every block, so the search's memory beyond the base does not grow with N.
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
_SEARCH_PAIRS = 512  # candidate pairs of a search block rescored at once (a few MiB of temporaries:
# 8192 pairs made 60 MiB of transient peaks, more than the search's buffers)
_NONZERO_MAX = 1 << 20  # candidate index pairs listed at once (16 MiB)
# Block shape: 2048 queries x 2048 distractors. Fixed, not a fraction of N, so memory does not grow
# with the base; the 16 MiB of scores stay in L3 for the threshold pass, and this shape ran the
# matmul at ~0.97 of a large GEMM (65536-row chunks x 256 queries, the former 1M setting: ~0.6)
_CHUNK_ROWS = 2048  # distractor rows normalised at once (4 MiB at D = 512)
_BLOCK_ELEMENTS = 1 << 21  # scores per block: with _CHUNK_ROWS, groups of 1024 queries
_QUERY_COPY_RATIO = 32  # topk_scores keeps a normalised copy of the queries when N >= 32 Q (the copy is
# then at most 1/32 of the base) instead of normalising every group again for every chunk (~1.5% of the time)
_accumulation_ok: dict[tuple[str, str], tuple[bool, bool]] = {}


def unit_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows of `x` as fp32 unit vectors (a zero row stays zero). The rows are made contiguous
    first: the norm's summation order follows the layout, and the bits must not."""
    t = _fp32(x)
    return _unit_rows_into(t, torch.empty_like(t))


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
    for s in range(0, q.shape[0], _RESCORE_PAIRS):
        out[s : s + _RESCORE_PAIRS] = _exact_batch(q[s : s + _RESCORE_PAIRS], b[s : s + _RESCORE_PAIRS], norm_bound)
    return out


def _exact_batch(qs: torch.Tensor, bs: torch.Tensor, norm_bound: float | None,
                 prod: torch.Tensor | None = None) -> torch.Tensor:
    """`exact_scores` of one batch; `prod`, if given, is a flat fp64 buffer (at least qs.numel())
    the products are written into, so a search rescoring many small batches does not allocate
    (and page-fault) fresh megabytes for each."""
    dim = qs.shape[1]
    gamma = dim * 2.0**-53 / (1 - dim * 2.0**-53) * (1 + 2.0**-40)
    if prod is None:
        prod = qs.double().mul_(bs)
    else:
        prod = prod[: qs.numel()].view(qs.shape).copy_(qs).mul_(bs)
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
    return c


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
        return self.window_threshold(rows, screened.shape[1], delta,
                                     lambda j: torch.topk(screened, j, dim=1)[0][:, -1])

    def window_threshold(self, rows, c: int, delta: float, kth_screened) -> torch.Tensor:
        """Per-row candidate threshold for `rows` (a slice or an index) against a block of `c`
        screened items, where `kth_screened(j)` gives each row's j-th highest screened score of
        the block (asked only while the top-k is not yet full)."""
        k, s = self.k, self.seen
        best = self.best[rows]
        if s >= k:
            return best[:, k - 1] - delta
        if s + c <= k:
            return torch.full((best.shape[0],), -math.inf, device=best.device)
        t = kth_screened(k - s)
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


def topk_search(queries: torch.Tensor, base, k: int, k_global: int = 0, chunk: int | None = None,
                block_elements: int | None = None, screen: str = "auto", use_faiss: bool = False,
                device: torch.device | str | None = None, candidate_cap: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k canonical scores of unit `queries` [Q, D] against the rows of `base`.

    Returns (per-query top-k [Q, k] descending, the top `k_global` scores over all Q x N pairs
    descending); -inf pads when fewer items exist. `base` rows are normalised here, `chunk` rows
    at a time (default `_CHUNK_ROWS`; 65536 with faiss), and scored against groups of queries so
    no block exceeds `block_elements` scores (default `_BLOCK_ELEMENTS`). Memory: the base plus
    O(chunk * D + block_elements + Q * k + k_global), independent of N. `candidate_cap` (default
    max(4 * block rows * k + 4 * k_global, 2^16)) is the number of candidates of one block above
    which a bf16 / fp16 block is screened again in fp32. With `use_faiss` faiss's fp32 index
    screens instead (`screen` is then unused)."""
    dev = _device_of(base, device)
    q = queries.float().to(dev)
    if q.numel() and float(q.norm(dim=1).max()) > unit_norm_bound(int(q.shape[1])):
        raise ValueError("topk_search needs unit-norm queries (see unit_rows); the error bounds assume them")
    return _search(q, base, k, k_global, chunk, block_elements, screen, use_faiss, dev, candidate_cap, False)


def _device_of(base, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return base.device if isinstance(base, torch.Tensor) else torch.device("cpu")


def _search(queries, base, k: int, k_global: int, chunk: int | None, block_elements: int | None, screen: str,
            use_faiss: bool, dev: torch.device, candidate_cap: int | None, normalise: bool,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk_search` on `queries` that are unit rows already (`normalise` False) or are
    normalised here: one group at a time, so no normalised copy of all queries is held, unless
    that copy is small next to the base (`_QUERY_COPY_RATIO`)."""
    if k < 1 or k_global < 0:
        raise ValueError(f"topk_search needs k >= 1 and k_global >= 0, got k={k}, k_global={k_global}")
    num_q, dim = int(queries.shape[0]), int(queries.shape[1])
    rows, glob = _TopK(num_q, k, dev), _TopK(1, k_global, dev)
    if use_faiss:
        q = unit_rows(queries).to(dev) if normalise else queries
        return _faiss_search(q, base, max(k, k_global), chunk or 65536, rows, glob, k)
    scan = _Scan(resolve_screen(screen, dev), dev, dim, candidate_cap)
    n = int(base.shape[0])
    if normalise and num_q * _QUERY_COPY_RATIO <= n:
        queries, normalise = unit_rows(queries).to(dev), False
    chunk = max(1, min(chunk or _CHUNK_ROWS, n))
    group = max(1, min(num_q, (block_elements or _BLOCK_ELEMENTS) // chunk))
    b_buf = torch.empty(chunk, dim, device=dev)
    q_buf = torch.empty(group, dim, device=dev) if normalise else None
    scan.bufs = _Buffers(group, chunk, dim, dev)
    with _ieee_matmul():
        for start in range(0, n, chunk):
            b = _unit_rows_into(_fp32_rows(base, start, start + chunk, dev), b_buf)
            scan.set_chunk(b)
            for qs in range(0, num_q, group):
                qb = _fp32_rows(queries, qs, qs + group, dev)
                scan.block(_unit_rows_into(qb, q_buf) if normalise else qb, qs, rows, glob)
            rows.seen += b.shape[0]
    return rows.best, glob.best[0]


def _fp32_rows(x, start: int, stop: int, dev: torch.device) -> torch.Tensor:
    """Rows start:stop of an array or tensor as a contiguous fp32 tensor on `dev` (a view when
    they are one already; contiguous as in `unit_rows`, so the normalised bits agree)."""
    return _fp32(x[start:stop], dev)


def _fp32(x, dev: torch.device | None = None) -> torch.Tensor:
    """An array or tensor as a contiguous fp32 tensor (on `dev` if given): the one layout every
    normalisation sees, since the norm's summation order follows the layout."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    return (t if dev is None else t.to(dev)).float().contiguous()


def _unit_rows_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`unit_rows(x)` written into the first rows of `out`: the same norm and division (so the
    same bits), in a buffer the search reuses instead of allocating one per chunk."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)
    return torch.div(x, norm, out=out[: x.shape[0]])


class _Buffers:
    """Working memory of the block search, allocated once and written into (out=) by every block:
    the scores, the rescored pairs, and `work` bytes holding either a block's candidate mask or
    the gathered rows that hold candidates (at most a quarter of the block, see `_candidates`)
    and their mask. Fresh multi-MiB temporaries per block were handed back to the kernel and
    page-faulted anew each time (rescoring ran ~2.5x slower that way)."""

    def __init__(self, group: int, chunk: int, dim: int, dev: torch.device):
        self.scores = torch.empty(group * chunk, device=dev)
        self.work = torch.empty(max(group * chunk, group // 4 * chunk * 5), dtype=torch.uint8, device=dev)
        self.pair_q = torch.empty(_SEARCH_PAIRS * dim, device=dev)
        self.pair_b = torch.empty(_SEARCH_PAIRS * dim, device=dev)
        self.prod = torch.empty(_SEARCH_PAIRS * dim, dtype=torch.float64, device=dev)


def _view(buf: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, offset: int = 0,
          ) -> torch.Tensor | None:
    """Flat buffer `buf` from element `offset` on as a tensor of `shape` and `dtype` (a uint8
    buffer is reinterpreted, `offset` then counts bytes), or None if `buf` is None, too small or
    of another dtype (the caller then allocates)."""
    if buf is None:
        return None
    size = math.prod(shape) * (dtype.itemsize if buf.dtype == torch.uint8 else 1)
    if (buf.dtype != dtype and buf.dtype != torch.uint8) or buf.numel() < offset + size:
        return None
    return buf[offset : offset + size].view(dtype).view(shape)


class _Scan:
    """Screens blocks of (query group x distractor chunk) scores and rescores the candidates
    exactly into the running top-k's, in the reused `_Buffers`."""

    def __init__(self, mode: str, dev: torch.device, dim: int, candidate_cap: int | None):
        self.fp32_out = True
        if mode != "none":
            ok, self.fp32_out = _screen_backend(mode, dev)
            if not ok:
                mode = "none"  # this backend does not accumulate in fp32: the bound would not hold
        self.mode, self.cap = mode, candidate_cap
        self.delta = screen_error_bound(dim, mode, rounded_output=not self.fp32_out)
        self.delta32 = screen_error_bound(dim, "none")
        self.bufs: _Buffers | None = None

    def set_chunk(self, b: torch.Tensor) -> None:
        """The unit distractor rows [C, D] the next blocks are scored against."""
        self.b, self.bt = b, b.t()  # a transposed view: BLAS reads it as is, no copy
        self.bt_low = self.bt.to(_DTYPE[self.mode]) if self.mode != "none" else self.bt

    def block(self, qb: torch.Tensor, qs: int, rows: "_TopK", glob: "_TopK") -> None:
        """Screen the unit queries `qb` (rows qs.. of the search) against the chunk, rescore."""
        sl = slice(qs, qs + qb.shape[0])
        if self.mode == "none":
            scr = self._fp32_scores(qb)
            hot, mask = _candidates(rows, glob, sl, scr, self.delta, self.bufs)
        else:
            scr = _matmul(qb.to(_DTYPE[self.mode]), self.bt_low, self.fp32_out)
            hot, mask = _candidates(rows, glob, sl, scr, self.delta, self.bufs)
            cap = self.cap or max(4 * scr.shape[0] * rows.k + 4 * glob.k, 1 << 16)
            if int(torch.count_nonzero(mask)) > cap:  # too many near-ties for the low-precision window
                del scr, hot, mask
                scr = self._fp32_scores(qb)
                hot, mask = _candidates(rows, glob, sl, scr, self.delta32, self.bufs)
        del scr
        _rescore(mask, hot, qb, self.b, qs, rows, glob, self.bufs)
        glob.seen += qb.shape[0] * self.b.shape[0]

    def _fp32_scores(self, qb: torch.Tensor) -> torch.Tensor:
        out = _view(self.bufs.scores if self.bufs else None, (qb.shape[0], self.b.shape[0]), torch.float32)
        return torch.mm(qb, self.bt) if out is None else torch.mm(qb, self.bt, out=out)


def _candidates(rows: _TopK, glob: _TopK, sl: slice, scr: torch.Tensor, delta: float,
                bufs: _Buffers | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(rows of the block holding candidates, or None for all; their candidate mask).

    An item is a candidate if its screened score reaches its row's threshold or the global one,
    i.e. the smaller of the two. A row whose maximum is below its threshold holds none: one
    read-only pass (a row maximum) spares the mask of most rows once the top-k's have filled.
    A NaN maximum counts as a hit (the mask's >= then skips the NaN, as for every row)."""
    thr = rows.threshold(sl, scr, delta)
    if glob.k:
        thr = torch.minimum(thr, glob.threshold(slice(0, 1), scr.reshape(1, -1), delta))
    hot = torch.nonzero(~(scr.amax(dim=1) < thr)).flatten()
    work = bufs.work if bufs else None
    if 4 * hot.numel() > scr.shape[0]:  # most rows: one mask of the block, not a gathered copy
        return None, _ge(scr, thr[:, None], _view(work, tuple(scr.shape), torch.bool))
    shape = (hot.numel(), scr.shape[1])
    sub = _view(work, shape, scr.dtype)
    sub = scr.index_select(0, hot) if sub is None else torch.index_select(scr, 0, hot, out=sub)
    return hot, _ge(sub, thr[hot, None], _view(work, shape, torch.bool, sub.numel() * sub.element_size()))


def _ge(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """a >= b, into `out` when given."""
    return a >= b if out is None else torch.ge(a, b, out=out)


def _rescore(mask: torch.Tensor, hot: torch.Tensor | None, qb: torch.Tensor, b: torch.Tensor, qs: int,
             rows: _TopK, glob: _TopK, bufs: _Buffers | None = None) -> None:
    """Exact scores of the masked pairs of a block (mask row i is block row hot[i], or i when
    `hot` is None), merged into both running top-k's, in batches of _SEARCH_PAIRS; a mask with
    more than _NONZERO_MAX pairs is taken in slices of rows so the index lists stay bounded too."""
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
    norm2 = unit_norm_bound(qb.shape[1]) ** 2
    for r0, r1 in slices:
        idx = mask[r0:r1].nonzero()
        for s in range(0, idx.shape[0], _SEARCH_PAIRS):
            part = idx[s : s + _SEARCH_PAIRS]
            local = part[:, 0] + r0
            if hot is not None:
                local = hot[local]
            scores = _exact_batch(_gather(qb, local, bufs and bufs.pair_q), _gather(b, part[:, 1], bufs and bufs.pair_b),
                                  norm2, bufs and bufs.prod)
            rows.merge(local + qs, scores)
            if glob.k:
                glob.merge(torch.zeros_like(local), scores)


def _gather(x: torch.Tensor, index: torch.Tensor, buf: torch.Tensor | None) -> torch.Tensor:
    """x[index] (rows), into the flat buffer `buf` when it is given and large enough."""
    out = _view(buf, (index.numel(), x.shape[1]), x.dtype)
    return x.index_select(0, index) if out is None else torch.index_select(x, 0, index, out=out)


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
            thr = acc.window_threshold(todo, c, delta, lambda j: d[:, j - 1])  # faiss sorts each row's top m
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


def topk_scores(queries, base, k: int, chunk: int | None = None, block_elements: int | None = None,
                use_faiss: bool = False, screen: str = "auto", device: torch.device | str | None = None,
                ) -> torch.Tensor:
    """The k highest cosine scores of each query against `base`, descending: [Q, k].

    Exact: each score is the exact cosine of the fp32-normalised vectors rounded once to fp32,
    and the result equals the top-k of the full score matrix whichever `screen` finds the
    candidates ("auto", "bf16", "fp16" on CUDA, "none" = fp32; see `resolve_screen`) and with
    `use_faiss` (faiss's exact index screens; faiss must be installed). `base` is visited in
    chunks of rows and the queries in groups so no score block exceeds `block_elements`; both
    are normalised a chunk / group at a time. Memory: the base itself plus
    O(chunk * D + block_elements + Q * k)."""
    dev = _device_of(base, device)
    q = torch.as_tensor(np.ascontiguousarray(queries) if isinstance(queries, np.ndarray) else queries)
    top, _ = _search(q, base, k, 0, chunk, block_elements, screen, use_faiss, dev, None, True)
    return top[:, : min(k, int(base.shape[0]))]
