"""`facerec megaface`: MegaFace-style identification, in one of two modes.

- `--model M --images DIR [--landmarks TSV]`: an identity-per-folder tree (the LFW mini-protocol:
  people with 2+ images are probes, everyone else a distractor), embedded by the model.
- `--devkit-features DIR --megaface-list FILE --facescrub-list FILE [--suffix S] [--sizes ...]`:
  features already extracted in the MegaFace devkit layout (`<dir>/<list path><suffix>`, OpenCV
  mat files), evaluated per distractor size like the devkit's run_experiment.py.

Both take the @R noise lists (`--probe-noise`, `--distractor-noise`) and `--screen`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facerec.errors import DataError, not_a_directory_reason


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint, .safetensors or .onnx (folder mode)")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--images", default=None, help="one folder per person (e.g. ../shared/data/lfw/images)")
    parser.add_argument("--landmarks", default=None, help="5-point landmarks TSV to align the faces")
    parser.add_argument("--flip", default=None, choices=["none", "sum"])
    dk = parser.add_argument_group("devkit mode (features extracted elsewhere)")
    dk.add_argument("--devkit-features", default=None, metavar="DIR",
                    help="feature root holding megaface/ and facescrub/ (insightface's feature_out_clean layout)")
    dk.add_argument("--megaface-features", default=None, metavar="DIR", help="MegaFace features (default DIR/megaface)")
    dk.add_argument("--facescrub-features", default=None, metavar="DIR",
                    help="FaceScrub features (default DIR/facescrub)")
    dk.add_argument("--megaface-list", default=None, metavar="FILE",
                    help="templatelists/megaface_features_list.json (base name: _{size}_{set} is appended) "
                         "or one sized list such as ..._1000000_1")
    dk.add_argument("--facescrub-list", default=None, metavar="FILE",
                    help="templatelists/facescrub_features_list.json")
    dk.add_argument("--suffix", default=None,
                    help="feature file ending after the image path, e.g. _mobilefacenet_112x112.bin "
                         "(default: detected)")
    dk.add_argument("--sizes", default=None, help="distractor sizes, e.g. 10,100,1000,10000,100000,1000000")
    dk.add_argument("--set", dest="set_index", type=int, default=1, help="devkit list set number (default 1)")
    parser.add_argument("--probe-noise", default=None, help="noise list of probe images (@R)")
    parser.add_argument("--distractor-noise", default=None, help="noise list of distractor images (@R)")
    parser.add_argument("--max-rank", type=int, default=10)
    parser.add_argument("--fars", default=None,
                        help="comma-separated FARs (default 1e-3,1e-4,1e-5,1e-6 for folders, 1e-6 for the devkit)")
    parser.add_argument("--screen", default="auto", choices=["auto", "bf16", "fp16", "none"],
                        help="matmul that screens candidates before the exact rescoring (auto: bf16 where native)")
    parser.add_argument("--faiss", action="store_true", help="screen with faiss's exact index (faiss-cpu)")
    parser.add_argument("--json", default=None, metavar="OUT")


def _numbers(text: str, what: str, kind=float) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"--{what}: expected comma-separated numbers, got {text!r}") from None


def _noise(args: argparse.Namespace) -> dict:
    from facerec.eval.identification import read_noise_list

    return {"probe_noise": read_noise_list(args.probe_noise) if args.probe_noise else None,
            "distractor_noise": read_noise_list(args.distractor_noise) if args.distractor_noise else None}


def _print_result(result, header: str, noisy: bool) -> None:
    print(header + (f"; @R removed {result.removed_probes} probes, {result.removed_distractors} distractors"
                    if noisy else ""))
    print("rank-1: {:.2f}%   CMC: {}".format(100 * result.rank1,
                                               " ".join(f"r{r + 1}={100 * v:.2f}" for r, v in enumerate(result.cmc))))
    print("verification: " + "  ".join(f"TAR@FAR={k}: {'n/a' if v is None else f'{100 * v:.2f}%'}"
                                       for k, v in result.tar_at_far.items()))


def _as_json(result) -> dict:
    return {"rank1": result.rank1, "cmc": result.cmc.tolist(), "num_pairs": result.num_pairs,
            "num_distractors": result.num_distractors, "tar_at_far": result.tar_at_far,
            "removed_probes": result.removed_probes, "removed_distractors": result.removed_distractors}


def run(args: argparse.Namespace) -> int:
    from facerec.eval.search import resolve_screen
    from facerec.io import atomic_write_text

    devkit = any(getattr(args, a) for a in ("devkit_features", "megaface_features", "facescrub_features",
                                            "megaface_list", "facescrub_list"))
    if devkit and (args.model or args.images):
        raise DataError("choose one mode: --model/--images (folder) or --devkit-features/--megaface-list (devkit)")
    fars = tuple(_numbers(args.fars, "fars")) if args.fars else ((1e-6,) if devkit else (1e-3, 1e-4, 1e-5, 1e-6))
    screen = args.screen if args.faiss else resolve_screen(args.screen)
    common = dict(max_rank=args.max_rank, fars=fars, use_faiss=args.faiss, screen=screen, **_noise(args))
    noisy = bool(args.probe_noise or args.distractor_noise)
    if devkit:
        payload = _run_devkit(args, common, noisy)
    else:
        payload = _run_folder(args, common, noisy)
    print(f"search: exact ({'faiss' if args.faiss else screen + ' screen' if screen != 'none' else 'fp32'})",
          file=sys.stderr)
    if args.json:
        atomic_write_text(args.json, json.dumps(payload, indent=2))
    return 0


def _run_devkit(args: argparse.Namespace, common: dict, noisy: bool) -> dict:
    from facerec.eval.identification import devkit_evaluate

    missing = [f"--{n}" for n in ("megaface-list", "facescrub-list") if not getattr(args, n.replace("-", "_"))]
    root = Path(args.devkit_features) if args.devkit_features else None
    mf = args.megaface_features or (root / "megaface" if root else None)
    fs = args.facescrub_features or (root / "facescrub" if root else None)
    if mf is None or fs is None:
        missing.append("--devkit-features (or --megaface-features and --facescrub-features)")
    if missing:
        raise DataError("devkit mode needs " + ", ".join(missing))
    for d in (mf, fs):
        if not Path(d).is_dir():
            raise DataError(f"feature directory {str(d)!r} {not_a_directory_reason(d)}")
    sizes = _numbers(args.sizes, "sizes", int) if args.sizes else None
    results = devkit_evaluate(mf, fs, args.megaface_list, args.facescrub_list, suffix=args.suffix, sizes=sizes,
                              set_index=args.set_index, **common)
    for size, result in results.items():
        _print_result(result, f"distractors: {size:,} ({result.num_distractors:,} used); "
                              f"probe pairs: {result.num_pairs}", noisy)
    return {"megaface_features": str(mf), "facescrub_features": str(fs), "megaface_list": args.megaface_list,
            "facescrub_list": args.facescrub_list, "screen": common["screen"],
            "results": {str(size): _as_json(r) for size, r in results.items()}}


def _run_folder(args: argparse.Namespace, common: dict, noisy: bool) -> dict:
    from facerec.cli.common import warnings_to_stderr
    from facerec.eval.identification import folder_protocol, megaface_evaluate
    from facerec.inference import Embedder

    if not args.model or not args.images:
        raise DataError("folder mode needs --model and --images (or use the devkit mode: --devkit-features ...)")
    probes, labels, distractors = folder_protocol(args.images)
    embedder = Embedder(args.model, flip=args.flip, arch=args.arch)
    with warnings_to_stderr():
        p = embedder.embed(probes, args.landmarks, progress=True)
        d = embedder.embed(distractors, args.landmarks, progress=True)
    for path, reason in p.failed + d.failed:
        print(f"skipped: {reason}", file=sys.stderr)
    ok = {s: i for i, s in enumerate(map(str, probes))}
    keep_labels = labels[[ok[s] for s in p.paths]]
    result = megaface_evaluate(p.embeddings, keep_labels, d.embeddings, probe_names=p.paths,
                               distractor_names=d.paths, **common)
    people = len(set(keep_labels.tolist()))
    _print_result(result, f"probes: {len(p.paths)} images of {people} people ({result.num_pairs} probe pairs); "
                          f"distractors: {result.num_distractors} images", noisy)
    return {"model": args.model, "images": args.images, **_as_json(result)}
