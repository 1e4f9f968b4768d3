"""Exact rank-1 search at MegaFace scale on this CPU: 10k probes against 100k and 1M distractors
x 512 (random unit vectors), top-10 per probe with `facerec.eval.search.topk_scores`.

Each screen mode is a row: "none" (an fp32 matmul screens, candidates are rescored exactly) and
"bf16" (a bf16 matmul screens within its rigorous error bound, candidates rescored exactly; the
scores are bit-identical to "none"). A bf16 row is skipped, with the reason, on a CPU without
native bf16 (no AVX512-BF16 / AMX), where bf16 matmuls are emulated and hundreds of times slower.

Reports the time, the achieved GFLOP/s of the score computation against this machine's matmul
throughput in the screen's dtype measured in the same process (a large GEMM), and the peak memory
above the process's RSS before the distractors were created, against the distractor matrix's
size. Each (size, screen) runs in its own subprocess.

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


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class _PeakWatch:
    """The highest RSS seen while the block runs, sampled by a thread every 10 ms (the search holds
    its buffers for far longer; sampling faster took throughput from the search)."""

    def __enter__(self) -> "_PeakWatch":
        import threading

        self.peak, self._stop = _rss(), False
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, _rss())


def matmul_gflops(dim: int = 512, m: int = 4096, n: int = 65536, repeats: int = 3, dtype: str = "fp32") -> float:
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(m, dim).to(dt), torch.randn(dim, n).to(dt)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * n * dim / best / 1e9


def run_one(num_distractors: int, num_probes: int, dim: int, k: int, screen: str = "none") -> dict:
    import torch

    from facerec.eval.search import topk_scores

    torch.manual_seed(0)
    probes = torch.nn.functional.normalize(torch.randn(num_probes, dim), dim=1)
    baseline = _rss()
    distractors = torch.empty(num_distractors, dim)
    step = 4096  # filled in place, in small slices: the temporaries must not set the peak measured
    for s in range(0, num_distractors, step):
        distractors[s : s + step] = torch.nn.functional.normalize(torch.randn(min(step, num_distractors - s), dim), dim=1)
    before = _rss()  # the search's own memory is sampled while it runs (a high-water mark would
    # also hold whatever the set-up above touched)
    watch = _PeakWatch()
    t0 = time.perf_counter()
    with watch:
        top = topk_scores(probes, distractors, k, screen=screen)
    seconds = time.perf_counter() - t0
    peak = watch.peak - baseline
    search_extra = watch.peak - before
    # the throughput probe runs after the search: its 1 GiB output must not count in the search's peak
    peak_gemm = matmul_gflops(dim, dtype="bf16" if screen == "bf16" else "fp32")
    flops = 2.0 * num_probes * num_distractors * dim
    return {"distractors": num_distractors, "probes": num_probes, "dim": dim, "k": k, "screen": screen,
            "seconds": seconds,
            "achieved_gflops": flops / seconds / 1e9, "matmul_gflops": peak_gemm,
            "fraction_of_matmul": flops / seconds / 1e9 / peak_gemm, "peak_bytes": peak,
            "distractor_bytes": distractors.numel() * 4, "peak_vs_distractors": peak / (distractors.numel() * 4),
            "search_extra_bytes": search_extra, "peak_how": "RSS sampled every 10 ms during the search, minus the RSS before the distractors were made",
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
                  f"matmul ({row['matmul_gflops']:.0f}), peak {row['peak_bytes'] / 2**20:.0f} MiB = "
                  f"{row['peak_vs_distractors']:.2f}x the distractors", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "search", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
