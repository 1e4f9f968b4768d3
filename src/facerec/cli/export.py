"""`facerec export onnx|weights --model M --out FILE`: ship a model (ONNX with a parity check,
safetensors with its description)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx", "weights"], help="onnx: .onnx graph; weights: .safetensors")
    parser.add_argument("--model", required=True, help="a facerec checkpoint, safetensors, backbone.pth, seed .ckpt")
    parser.add_argument("--arch", default=None, help="architecture of a plain state_dict checkpoint")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--fold-preprocessing", action="store_true",
                        help="ONNX input is RGB 0..255; colour order and normalisation happen in the graph")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    parser.add_argument("--parity-images", nargs="*", default=None, metavar="IMAGE_OR_DIR",
                        help="faces for the parity check (default: built-in synthetic faces)")
    parser.add_argument("--landmarks", default=None, help="landmarks TSV to align the parity images")
    parser.add_argument("--max-parity-images", type=int, default=32)
    parser.add_argument("--json", default=None, metavar="OUT", help="write the parity report as JSON")


def run(args: argparse.Namespace) -> int:
    from facerec.io import atomic_write_text
    from facerec.models import load_checkpoint

    model = load_checkpoint(args.model, arch=args.arch)
    if args.format == "weights":
        from facerec.export.weights import save_safetensors

        save_safetensors(model, args.out)
        thr = f"; threshold {model.threshold.describe()}" if getattr(model, "threshold", None) else ""
        print(f"wrote {args.out} ({model.arch}, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"input {model.preprocess.input_size[0]}x{model.preprocess.input_size[1]} {model.preprocess.color}, "
              f"template {model.preprocess.template}{thr})")
        return 0
    from facerec.errors import DataError
    from facerec.export.onnx import export_onnx

    images, source = None, "built-in synthetic faces"
    if args.parity_images:
        import numpy as np

        from facerec.inference import Embedder, Landmarks, expand_inputs

        files = expand_inputs(args.parity_images)[: args.max_parity_images]
        result_crops, used = [], []
        embedder = Embedder(model)
        landmarks = Landmarks.of(args.landmarks)  # read once, not per image
        for f in files:
            try:
                crop, _ = embedder.prepare(f, landmarks)
            except DataError as exc:
                print(f"skipped {exc}")
                continue
            result_crops.append(crop)
            used.append(f)
        if len(result_crops) < 2:
            raise DataError("the parity check needs at least 2 readable images")
        images, source = np.stack(result_crops), f"{len(used)} images from {', '.join(args.parity_images)}"
    report = export_onnx(model, args.out, opset=args.opset, fold_preprocessing=args.fold_preprocessing,
                         parity_images=images, image_source=source, exporter=args.exporter)
    print(f"wrote {args.out} (opset {args.opset}, {model.arch}, dynamic batch, input "
          f"{'RGB 0..255, preprocessing in the graph' if args.fold_preprocessing else 'normalised NCHW'})")
    print(report.summary())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2))
    return 0

