"""Step time and peak memory of the classification head alone: forward + backward + SGD update.

Full `NormLinear` head (every centre every step) against `PartialFC(sample_rate=0.1)` with a
dense and with a row-sparse centre gradient, at 10k / 100k / 1M classes, D = 512, batch 128,
ArcFace margin, SGD momentum 0.9 and weight decay 5e-4 (the insightface recipe). Each
configuration runs in a fresh subprocess so peak memory is its own: peak RSS of the process minus
its RSS just before the head is built (after a warm-up step of a 1000-class head, so the
one-off loading of the math libraries is not counted). The reference is the parameter plus momentum bytes.

    python benchmarks/heads.py [--classes 10000 100000 1000000] [--out benchmarks/results/heads.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

KINDS = {
    "full": dict(kind="fc", sample_rate=1.0, sparse_grad=False),
    "pfc0.1_dense": dict(kind="partial_fc", sample_rate=0.1, sparse_grad=False),
    "pfc0.1_sparse": dict(kind="partial_fc", sample_rate=0.1, sparse_grad=True),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_one(kind: str, classes: int, dim: int, batch: int, steps: int) -> dict:
    """Runs in the child process: build the head, time `steps` updates after one warm-up."""
    import torch

    from facerec.heads import build_head, create_margin
    from facerec.train.optim import SGD

    torch.manual_seed(0)
    spec = KINDS[kind]
    labels = torch.randint(0, classes, (batch,))
    emb = torch.randn(batch, dim, requires_grad=True)
    # One step of a tiny head first, so the one-off cost of loading the math libraries and
    # starting their thread pools is not counted as the head's memory.
    tiny = build_head("partial_fc", create_margin("arcface"), dim, 1000, sample_rate=0.1, sparse_grad=True)
    tiny_opt = SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        tiny(emb, labels % 1000).backward()
        tiny_opt.step()
    del tiny, tiny_opt
    emb.grad = None
    baseline = _rss_bytes()
    head = build_head(spec["kind"], create_margin("arcface", s=64.0, m=0.5), dim, classes,
                      sample_rate=spec["sample_rate"], sparse_grad=spec["sparse_grad"])
    opt = SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        loss = head(emb, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        emb.grad = None
        if step > 0:  # the first step allocates the momentum buffer
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() * p.element_size() for p in head.parameters())
    state = params  # one momentum buffer per parameter
    return {
        "head": kind, "classes": classes, "dim": dim, "batch": batch, "steps_timed": steps,
        "step_seconds_median": statistics.median(times), "step_seconds_min": min(times),
        "peak_bytes": peak - baseline, "param_plus_momentum_bytes": params + state,
        "loss_finite": bool(torch.isfinite(loss).item()), "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "heads.json")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "CLASSES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child[0], int(args.child[1]), args.dim, args.batch, args.steps)))
        return
    rows = []
    for classes in args.classes:
        for kind in args.kinds:
            cmd = [sys.executable, __file__, "--child", kind, str(classes), "--dim", str(args.dim),
                   "--batch", str(args.batch), "--steps", str(args.steps)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{classes:>9,} {kind:<14} {row['step_seconds_median'] * 1e3:9.1f} ms/step  "
                  f"peak {row['peak_bytes'] / 2**20:8.0f} MiB  (params+momentum "
                  f"{row['param_plus_momentum_bytes'] / 2**20:.0f} MiB)", flush=True)
    for classes in args.classes:
        by = {r["head"]: r for r in rows if r["classes"] == classes}
        if "full" in by:
            for r in by.values():
                r["time_vs_full"] = r["step_seconds_median"] / by["full"]["step_seconds_median"]
        for r in by.values():
            r["peak_vs_param_plus_momentum"] = r["peak_bytes"] / r["param_plus_momentum_bytes"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "heads", "machine": platform.processor() or platform.machine(),
              "python": platform.python_version(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
