"""Images/s of a full training step on this CPU: backbone forward + ArcFace head (10k classes) +
backward + SGD update, for `mbf` at batch 128 and `r50` at batch 32, in fp32 eager,
bf16 autocast + channels_last, and bf16 + channels_last + torch.compile.

Each configuration runs in its own subprocess (with a time limit) and is timed over the steps
after the warm-up ones (compilation happens in the warm-up).

    python benchmarks/train_step.py [--configs mbf:128 r50:32] [--modes fp32 bf16_cl bf16_cl_compile]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODES = ("fp32", "fp32_cl", "bf16_cl", "bf16_cl_compile")


def run_one(arch: str, batch: int, mode: str, classes: int, steps: int, warmup: int) -> dict:
    import torch

    from facerec.heads import FullFC, create_margin
    from facerec.train.optim import SGD

    torch.manual_seed(0)
    from facerec.models import create_model

    model = create_model(arch)
    head = FullFC(create_margin("arcface", s=64.0, m=0.5), model.preprocess.embedding_size, classes)
    channels_last = "_cl" in mode
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = SGD(list(model.parameters()) + list(head.parameters()), lr=0.1, momentum=0.9, weight_decay=5e-4)
    h, w = model.preprocess.input_size
    x = torch.randn(batch, 3, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    forward = torch.compile(model) if mode.endswith("compile") else model
    bf16 = mode.startswith("bf16")
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = forward(x)
        loss = head(emb.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"arch": arch, "batch": batch, "mode": mode, "classes": classes, "steps_timed": steps,
            "seconds_per_step_min": best, "seconds_per_step_mean": sum(times) / len(times),
            "images_per_second": batch / best, "loss_finite": bool(torch.isfinite(loss).item()),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["mbf:128", "r50:32"], help="ARCH:BATCH")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--classes", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json")
    ap.add_argument("--child", nargs=3, metavar=("ARCH", "BATCH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        arch, batch, mode = args.child
        print(json.dumps(run_one(arch, int(batch), mode, args.classes, args.steps, args.warmup)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from backbones import cpu_flags, cpu_name

    rows = []
    for spec in args.configs:
        arch, batch = spec.split(":")
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", arch, batch, mode, "--classes", str(args.classes),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"arch": arch, "batch": int(batch), "mode": mode, "timeout_seconds": args.timeout}
            except subprocess.CalledProcessError as exc:
                row = {"arch": arch, "batch": int(batch), "mode": mode,
                       "error": (exc.stderr.strip().splitlines() or [str(exc)])[-1]}
            rows.append(row)
            print(f"{arch:<6} batch {batch:>4} {mode:<16} "
                  f"{row.get('images_per_second', float('nan')):8.1f} img/s", flush=True)
    for spec in args.configs:
        arch = spec.split(":")[0]
        base = next((r for r in rows if r["arch"] == arch and r["mode"] == "fp32" and "images_per_second" in r), None)
        for r in rows:
            if base and r["arch"] == arch and "images_per_second" in r:
                r["speedup_vs_fp32"] = r["images_per_second"] / base["images_per_second"]
    flags = cpu_flags()
    result = {"benchmark": "train_step", "cpu": cpu_name(), "avx512_bf16": "avx512_bf16" in flags,
              "amx_bf16": "amx_bf16" in flags, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
