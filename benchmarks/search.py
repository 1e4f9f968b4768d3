"""Exact rank-1 search at MegaFace scale on this CPU: 10k probes against 100k and 1M distractors
x 512 (random unit vectors), top-10 per probe with `facerec.eval.search.topk_scores`.

Each screen mode is a row: "none" (an fp32 matmul screens, candidates are rescored exactly) and
"bf16" (a bf16 matmul screens within its rigorous error bound, candidates rescored exactly; the
scores are bit-identical to "none"). A bf16 row is skipped, with the reason, on a CPU without
native bf16 (no AVX512-BF16 / AMX), where bf16 matmuls are emulated and hundreds of times slower.

Reports the time, the achieved GFLOP/s of the score computation against this machine's matmul
throughput in the screen's dtype (`MatmulProbe`: a large GEMM, sampled before, between the two
halves of the probes and after the search; the median and the spread are reported), and the peak
memory above the process's memory before the distractors were created (the probes were made
before: also reported with their 20 MB counted), against the distractor matrix's size: anonymous
memory (what the search allocates) and, also reported, all resident pages (which add libtorch
code pages touched for the first time). Each (size, screen) runs in its
own subprocess.

    python benchmarks/search.py [--distractors 100000 1000000] [--probes 10000] [--screens none bf16]
        [--out benchmarks/results/search.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _memory() -> tuple[int, int]:
    """(anonymous resident bytes, all resident bytes) of this process. The difference is
    file-backed: pages of libtorch's code the search's kernels touch for the first time (~10 MiB),
    shared with every process using torch and dropped by the kernel at no cost; allocations are
    anonymous."""
    with open("/proc/self/statm") as f:
        resident, shared = (int(v) * resource.getpagesize() for v in f.read().split()[1:3])
    return resident - shared, resident


class _PeakWatch:
    """The highest memory (`_memory`, both figures) seen while the block runs, sampled by a thread
    every 10 ms (the search holds its buffers for far longer; sampling faster took throughput from
    the search)."""

    def __enter__(self) -> "_PeakWatch":
        import threading

        self.peak_anon, self.peak = _memory()
        self._stop = False
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop:
            self._sample()
            time.sleep(0.01)

    def _sample(self) -> None:
        anon, total = _memory()
        self.peak_anon, self.peak = max(self.peak_anon, anon), max(self.peak, total)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()
        self._sample()


class MatmulProbe:
    """This machine's matmul throughput in GFLOP/s: a [m, dim] x [dim, n] GEMM into a preallocated
    output (pure GEMM work, no page faults of a fresh 256 MiB result), best of `repeats`. Called
    several times during a run (`sample`): the VM's matmul speed drifts by +-15 % within minutes."""

    def __init__(self, dim: int = 512, m: int = 4096, n: int = 16384, dtype: str = "fp32", repeats: int = 3):
        import torch

        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        self.a, self.b = torch.randn(m, dim).to(dt), torch.randn(dim, n).to(dt)
        self.out = torch.empty(m, n, dtype=dt)
        self.repeats, self.flops, self.samples = repeats, 2.0 * m * n * dim, []
        self._run()  # warm-up: the output's pages are touched here, once

    def _run(self) -> float:
        import torch

        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)
        return time.perf_counter() - t0

    def sample(self) -> float:
        best = min(self._run() for _ in range(self.repeats))
        self.samples.append(self.flops / best / 1e9)
        return self.samples[-1]


def _fill_unit_rows(x, step: int = 4096) -> None:
    """Random unit rows written into `x` in place, a slice at a time: no temporary of the set-up
    is left in the allocator's free lists to inflate the RSS that the search is charged with."""
    import torch

    for s in range(0, x.shape[0], step):
        part = x[s : s + step]
        torch.randn(part.shape, out=part)
        part.div_(torch.linalg.vector_norm(part, dim=1, keepdim=True))


def run_one(num_distractors: int, num_probes: int, dim: int, k: int, screen: str = "none") -> dict:
    """One (size, screen) measurement: the search runs on the two halves of the probes (the
    result is the same as one call: probes are independent), with the matmul probe before,
    between and after, so the throughput fraction is taken against the matmul speed of the
    same minutes. The RSS is sampled only while the search runs."""
    import torch

    from facerec.eval.search import topk_scores

    torch.manual_seed(0)
    probes = torch.empty(num_probes, dim)
    _fill_unit_rows(probes)
    gemm = MatmulProbe(dim, dtype="bf16" if screen == "bf16" else "fp32")
    baseline_anon, baseline = _memory()
    distractors = torch.empty(num_distractors, dim)
    _fill_unit_rows(distractors)
    before_anon, before = _memory()
    halves = [probes[: num_probes // 2], probes[num_probes // 2 :]]
    tops, seconds, peak_anon, peak_rss = [], 0.0, before_anon, before
    for part in halves:
        gemm.sample()
        with _PeakWatch() as watch:
            t0 = time.perf_counter()
            tops.append(topk_scores(part, distractors, k, screen=screen))
            seconds += time.perf_counter() - t0
        peak_anon, peak_rss = max(peak_anon, watch.peak_anon), max(peak_rss, watch.peak)
    gemm.sample()
    top = torch.cat(tops)
    flops = 2.0 * num_probes * num_distractors * dim
    ref = sorted(gemm.samples)[len(gemm.samples) // 2]
    achieved = flops / seconds / 1e9
    peak, dist_bytes = peak_anon - baseline_anon, distractors.numel() * 4
    return {"distractors": num_distractors, "probes": num_probes, "dim": dim, "k": k, "screen": screen,
            "seconds": seconds, "achieved_gflops": achieved, "matmul_gflops": ref,
            "matmul_gflops_samples": gemm.samples,
            "matmul_spread": (max(gemm.samples) - min(gemm.samples)) / ref,
            "fraction_of_matmul": achieved / ref,
            "fraction_range": [achieved / max(gemm.samples), achieved / min(gemm.samples)],
            "matmul_how": "median of 3 samples (before, between the probe halves, after) of the best of 3 "
                          "4096x512 @ 512x16384 GEMMs into a preallocated output",
            "peak_bytes": peak, "distractor_bytes": dist_bytes, "peak_vs_distractors": peak / dist_bytes,
            "search_extra_bytes": peak_anon - before_anon,
            "peak_how": "anonymous RSS sampled every 10 ms during the search, minus that before the distractors "
                        "were made (filled in place: no set-up temporaries)",
            "probe_bytes": probes.numel() * 4,
            "peak_with_probes_vs_distractors": (peak + probes.numel() * 4) / dist_bytes,
            "peak_rss_bytes": peak_rss - baseline, "peak_rss_vs_distractors": (peak_rss - baseline) / dist_bytes,
            "peak_rss_how": "the same with all resident pages, incl. the file-backed libtorch code pages "
                            "the search touches first",
            "top1_mean": float(top[:, 0].mean()), "top_sum": float(top.double().sum()),
            "threads": torch.get_num_threads()}


def skip_reason(screen: str) -> str | None:
    """Why `screen` is not measured on this machine (None: it is)."""
    if screen != "bf16":
        return None
    import torch

    from facerec.train.runtime import cpu_supports_bf16

    if torch.cuda.is_available() or cpu_supports_bf16():
        return None
    return "bf16 not native on this CPU (no AVX512-BF16 / AMX): emulated bf16 matmul is ~400x slower than fp32"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distractors", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--probes", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--screens", nargs="+", default=["none", "bf16"], choices=["none", "bf16"])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search.json")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-screen", default="none", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.probes, args.dim, args.k, args.child_screen)))
        return
    rows = []
    for n in args.distractors:
        for screen in args.screens:
            reason = skip_reason(screen)
            if reason:
                rows.append({"distractors": n, "screen": screen, "skipped": reason})
                print(f"{n:>9,} distractors, screen {screen}: skipped ({reason})", flush=True)
                continue
            cmd = [sys.executable, __file__, "--child", str(n), "--probes", str(args.probes), "--dim", str(args.dim),
                   "--k", str(args.k), "--child-screen", screen]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{n:>9,} distractors, screen {screen}: {row['seconds']:.1f} s, {row['achieved_gflops']:.0f} "
                  f"GFLOP/s = {100 * row['fraction_of_matmul']:.0f}% of the {screen if screen == 'bf16' else 'fp32'} "
                  f"matmul ({row['matmul_gflops']:.0f}, spread {100 * row['matmul_spread']:.0f}%), "
                  f"peak {row['peak_bytes'] / 2**20:.0f} MiB = "
                  f"{row['peak_vs_distractors']:.2f}x the distractors (with the probes: "
                  f"{row['peak_with_probes_vs_distractors']:.2f}x; all resident pages: "
                  f"{row['peak_rss_vs_distractors']:.2f}x)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "search", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
