"""Backbone cost on this machine: parameters, FLOPs at the native input size, and CPU inference
throughput at batch 64 in fp32, fp32 + channels_last and bf16 autocast + channels_last.

Each (backbone, mode) throughput runs in its own subprocess with a time limit, so a mode that is
emulated (bf16 on CPUs without AVX512-BF16/AMX) is reported as such instead of stalling the run.

    python benchmarks/backbones.py [--models r50 mbf] [--batch 64] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def static_costs(name: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from facerec.models import create_model

    model = create_model(name).eval()
    h, w = model.preprocess.input_size
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, h, w))
    flops = counter.get_total_flops()
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "input_size": [h, w],
            "embedding_size": model.preprocess.embedding_size, "gflops": flops / 1e9, "gmacs": flops / 2e9}


def throughput(name: str, mode: str, batch: int, min_seconds: float, max_iters: int) -> dict:
    import torch

    from facerec.models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()
    h, w = model.preprocess.input_size
    x = torch.randn(batch, 3, h, w)
    if mode.endswith("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode.startswith("bf16") else torch.autocast("cpu", enabled=False)
    times = []
    with torch.no_grad(), ctx:
        model(x)  # warm-up
        start = time.perf_counter()
        while len(times) < max_iters and (time.perf_counter() - start < min_seconds or len(times) < 2):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"model": name, "mode": mode, "batch": batch, "iters": len(times), "seconds_per_batch_min": best,
            "images_per_second": batch / best, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None, help="default: every registered backbone")
    ap.add_argument("--modes", nargs="+", default=["fp32", "fp32_channels_last", "bf16_channels_last"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--max-iters", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600.0, help="per (model, mode), seconds")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backbones.json")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        name, mode = args.child
        row = static_costs(name) if mode == "static" else throughput(name, mode, args.batch, args.min_seconds,
                                                                      args.max_iters)
        print(json.dumps(row))
        return
    from facerec.models import list_models

    models = args.models or list_models()
    flags = cpu_flags()
    rows = []
    for name in models:
        row = {}
        for mode in ["static", *args.modes]:
            cmd = [sys.executable, __file__, "--child", name, mode, "--batch", str(args.batch),
                   "--min-seconds", str(args.min_seconds), "--max-iters", str(args.max_iters)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                result = {"timeout_seconds": args.timeout}
            except subprocess.CalledProcessError as exc:
                result = {"error": exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else str(exc)}
            if mode == "static":
                row.update(result)
            else:
                row[mode] = result
        rows.append(row)
        speeds = {m: row.get(m, {}).get("images_per_second") for m in args.modes}
        print(f"{name:<14} {row.get('params', 0) / 1e6:7.2f} M  {row.get('gflops', float('nan')):7.2f} GFLOPs  "
              + "  ".join(f"{m} {'-' if v is None else round(v, 1)} img/s" for m, v in speeds.items()), flush=True)
    if args.models and args.out.is_file():  # a partial re-run updates those rows of the existing results
        previous = json.loads(args.out.read_text()).get("rows", [])
        fresh = {r["model"]: r for r in rows if "model" in r}
        rows = [fresh.pop(r.get("model"), r) for r in previous] + list(fresh.values())
    result = {"benchmark": "backbones", "cpu": cpu_name(), "avx512_bf16": "avx512_bf16" in flags,
              "amx_bf16": "amx_bf16" in flags, "batch": args.batch, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
