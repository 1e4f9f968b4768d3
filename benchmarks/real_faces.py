"""Real faces end to end: build LFW and cfp_train from ../shared/data with facerec's own commands,
train MobileFaceNet + ArcFace on cfp_train from scratch and fine-tune the pretrained CASIA model,
evaluate everything on LFW (10-fold, both protocols, flip none/sum). JSON to
benchmarks/results/real_faces.json; the README quotes it.

    python benchmarks/real_faces.py [--shared ../shared/data] [--skip-scratch] [--skip-finetune]

Run from the repository root (the configs read data/cfp_train.rec and data/lfw.bin).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def run(cmd: list[str]) -> None:
    from facerec.cli import main

    print("$ facerec " + " ".join(cmd), flush=True)
    rc = main(cmd)
    if rc != 0:
        raise SystemExit(f"facerec {cmd[0]} failed with exit code {rc}")


def lfw_rows(model_path: str, data: Path) -> list[dict]:
    from facerec.eval.benchmark import evaluate_bins
    from facerec.models import load_checkpoint

    model = load_checkpoint(model_path)
    return evaluate_bins(model, [str(data / "lfw.bin")], None, ["insightface", "sphereface"], ["none", "sum"],
                         progress=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--skip-scratch", action="store_true")
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real_faces.json")
    args = ap.parse_args(argv)
    s, d = args.shared, args.data
    d.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "real_faces", "machine": platform.processor() or platform.machine(), "runs": {}}
    if not (d / "lfw.bin").is_file():
        run(["data", "pairs2bin", "--pairs", str(s / "lfw/pairs.txt"), "--images", str(s / "lfw/images"),
             "--landmarks", str(s / "lfw/landmarks.tsv"), "--out", str(d / "lfw.bin")])
    if not (d / "cfp_train.rec").is_file():
        run(["data", "pack", "--root", str(s / "cfp_train/images"), "--landmarks", str(s / "cfp_train/landmarks.tsv"),
             "--template", "sphereface", "--out", str(d / "cfp_train.rec")])
    pretrained = str(s / "weights/mobilefacenet_casia_xiaoccer/068.ckpt")
    result["runs"]["pretrained_casia"] = {"lfw": lfw_rows(pretrained, d)}
    plans = [("scratch", "configs/cfp_mobilefacenet_scratch.yaml", args.skip_scratch),
             ("finetune", "configs/cfp_mobilefacenet_finetune.yaml", args.skip_finetune)]
    for name, config, skip in plans:
        if skip:
            continue
        from facerec.config import load_config
        from facerec.train.engine import train

        overrides = [f"model.pretrained={pretrained}"] if name == "finetune" else []
        cfg = load_config(config, overrides)
        print(f"$ facerec train {config}" + "".join(f" --set {o}" for o in overrides), flush=True)
        t0 = time.perf_counter()
        res = train(cfg, f"runs/cfp_{name}")
        result["runs"][name] = {
            "config": config, "steps": res.steps, "epochs": res.epochs, "final_loss": res.final_loss,
            "images_per_second": res.images_per_second, "wall_seconds": time.perf_counter() - t0,
            "best_during_training": res.best, "checkpoint": str(res.checkpoint),
            "lfw": lfw_rows(str(res.checkpoint), d),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    for name, r in result["runs"].items():
        for row in r["lfw"]:
            print(f"{name:<18} {row['protocol']:<12} flip {row['flip']:<5} LFW {100 * row['accuracy_mean']:.2f} "
                  f"± {100 * row['accuracy_std']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
