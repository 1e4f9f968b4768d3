"""`facerec eval --model M --bench lfw,cfp_fp --data DIR [--protocol ...] [--flip ...] [--json OUT]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint (facerec, safetensors, arcface_torch, the seed's) or an exported .onnx")
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="an ONNX model from another framework; state its input with the options below")
    parser.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input height and width of --onnx (required with it)")
    parser.add_argument("--mean", type=float, nargs=3, default=[127.5] * 3)
    parser.add_argument("--std", type=float, nargs=3, default=[127.5] * 3)
    parser.add_argument("--bgr", action="store_true", help="the ONNX model takes BGR input")
    parser.add_argument("--template", default=None, choices=["arcface", "sphereface"],
                        help="alignment template of --onnx (default: from the input size)")
    parser.add_argument("--report", default=None, metavar="DIR", help="write report.md and ROC PNGs to DIR")
    parser.add_argument("--arch", default=None, help="architecture of a plain state_dict checkpoint")
    parser.add_argument("--bench", required=True, help="comma-separated names (lfw, cfp_fp, ...) or .bin paths")
    parser.add_argument("--data", default=None, help="directory holding <name>.bin")
    parser.add_argument("--protocol", default="insightface", choices=["insightface", "sphereface", "both"])
    parser.add_argument("--flip", default="sum", choices=["sum", "concat", "none", "all"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--store-threshold", default=None, metavar="OUT",
                        help="write the model with a cosine decision threshold fitted on the first set "
                             "(.safetensors or .pt); `facerec compare` uses it")
    parser.add_argument("--threshold-criterion", default="best_accuracy",
                        help="best_accuracy (default) or far=1e-3 style")


def run(args: argparse.Namespace) -> int:
    from facerec.eval.benchmark import evaluate_bins, format_rows
    from facerec.io import atomic_write_text
    from facerec.inference import load_model

    if (args.model is None) == (args.onnx is None):
        from facerec.errors import ConfigError

        raise ConfigError("give exactly one of --model and --onnx")
    if args.onnx:
        from facerec.contract import Preprocess
        from facerec.export.onnx import OnnxEmbedder

        if args.input_size is None:
            from facerec.errors import ConfigError

            raise ConfigError("--onnx needs the model's input stated: --input-size H W (and --mean, --std, --bgr "
                              "if not the defaults 127.5 / 127.5 / RGB)")
        h, w = args.input_size
        template = args.template or ("sphereface" if w * 112 == h * 96 else "arcface")
        pre = Preprocess(input_size=(h, w), color="BGR" if args.bgr else "RGB", mean=tuple(args.mean),
                         std=tuple(args.std), template=template, embedding_size=0)
        model = OnnxEmbedder(args.onnx, preprocess=pre)
        args.model = args.onnx
    else:
        model = load_model(args.model, arch=args.arch)
    protocols = ["insightface", "sphereface"] if args.protocol == "both" else [args.protocol]
    flips = ["none", "sum", "concat"] if args.flip == "all" else [args.flip]
    benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    criterion = args.threshold_criterion if args.store_threshold else None
    curves: dict = {}
    rows = evaluate_bins(model, benches, args.data, protocols, flips, batch_size=args.batch_size,
                         threshold_criterion=criterion, curves=curves if args.report else None)
    print(f"model: {args.model} ({model.arch}, input {model.preprocess.input_size[0]}x"
          f"{model.preprocess.input_size[1]} {model.preprocess.color}, template {model.preprocess.template})")
    print(format_rows(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": str(args.model), "preprocess": model.preprocess.to_dict(),
                                                 "results": rows}, indent=2))
    if args.report:
        from facerec.eval.report import write_report

        print(f"report: {write_report(args.report, str(args.model), model.preprocess.to_dict(), rows, curves)}")
    if args.store_threshold:
        _store_threshold(model, rows, args.store_threshold)
    return 0


def _store_threshold(model, rows, out: str) -> None:
    from facerec.contract import Threshold
    from facerec.errors import ConfigError
    from facerec.models import save_model

    if not hasattr(model, "state_dict") or str(getattr(model, "arch", "")).startswith("onnx:"):
        raise ConfigError("--store-threshold needs the PyTorch model (store it there, then export)")
    fitted = [r for r in rows if "threshold" in r]
    if not fitted:
        raise ConfigError("--store-threshold needs a flip of none or sum (concat embeddings are not what "
                          "`compare` computes)")
    model.threshold = Threshold.from_dict(fitted[0]["threshold"])
    if out.endswith(".safetensors"):
        from facerec.export.weights import save_safetensors

        save_safetensors(model, out)
    else:
        save_model(model, out)
    print(f"wrote {out} with threshold {model.threshold.describe()}")
