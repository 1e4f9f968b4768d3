"""Exact rank-1 search at MegaFace scale on this CPU: 10k probes against 100k and 1M distractors
x 512 (random unit vectors), top-10 per probe with `facerec.eval.identification.topk_scores`.

Reports the time, the achieved GFLOP/s of the score computation against this machine's fp32
matmul throughput measured in the same process (a large GEMM), and the peak memory above the
process's RSS before the distractors were created, against the distractor matrix's size.
Each size runs in its own subprocess.

    python benchmarks/search.py [--distractors 100000 1000000] [--probes 10000]
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


def matmul_gflops(dim: int = 512, m: int = 4096, n: int = 65536, repeats: int = 3) -> float:
    import torch

    a, b = torch.randn(m, dim), torch.randn(dim, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * n * dim / best / 1e9


def run_one(num_distractors: int, num_probes: int, dim: int, k: int) -> dict:
    import torch

    from facerec.eval.identification import topk_scores

    peak_gemm = matmul_gflops(dim)
    torch.manual_seed(0)
    probes = torch.nn.functional.normalize(torch.randn(num_probes, dim), dim=1)
    baseline = _rss()
    distractors = torch.empty(num_distractors, dim)
    for s in range(0, num_distractors, 65536):  # filled in place: no temporary of the full size
        distractors[s : s + 65536] = torch.nn.functional.normalize(torch.randn(min(65536, num_distractors - s), dim), dim=1)
    t0 = time.perf_counter()
    top = topk_scores(probes, distractors, k)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    flops = 2.0 * num_probes * num_distractors * dim
    return {"distractors": num_distractors, "probes": num_probes, "dim": dim, "k": k, "seconds": seconds,
            "achieved_gflops": flops / seconds / 1e9, "matmul_gflops": peak_gemm,
            "fraction_of_matmul": flops / seconds / 1e9 / peak_gemm, "peak_bytes": peak,
            "distractor_bytes": distractors.numel() * 4, "peak_vs_distractors": peak / (distractors.numel() * 4),
            "top1_mean": float(top[:, 0].mean()), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distractors", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--probes", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search.json")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.probes, args.dim, args.k)))
        return
    rows = []
    for n in args.distractors:
        cmd = [sys.executable, __file__, "--child", str(n), "--probes", str(args.probes), "--dim", str(args.dim),
               "--k", str(args.k)]
        row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n:>9,} distractors: {row['seconds']:.1f} s, {row['achieved_gflops']:.0f} GFLOP/s = "
              f"{100 * row['fraction_of_matmul']:.0f}% of matmul ({row['matmul_gflops']:.0f}), peak "
              f"{row['peak_bytes'] / 2**20:.0f} MiB = {row['peak_vs_distractors']:.2f}x the distractors", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "search", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
