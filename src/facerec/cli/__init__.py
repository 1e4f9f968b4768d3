"""`facerec` command line: a thin dispatcher over the Python API.

Each subcommand lives in its own module under `facerec.cli` exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their
subcommand runs, so `facerec --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

from facerec.errors import FacerecError

# subcommand -> (module under facerec.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "train and evaluate on built-in synthetic identities"),
    "train": ("train", "train a model from a YAML config"),
    "eval": ("evaluate", "evaluate a model on verification sets"),
    "data": ("data", "inspect, pack, align and convert face data sets"),
    "export": ("export", "export a model to ONNX or safetensors"),
    "embed": ("embed", "embed face images to a .npy file"),
    "compare": ("compare", "compare two face images"),
    "search": ("search", "search a gallery for a probe face"),
    "megaface": ("megaface", "MegaFace-style identification on a folder of people"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {
        name: (mod, help_)
        for name, (mod, help_) in COMMANDS.items()
        if importlib.util.find_spec(f"facerec.cli.{mod}") is not None
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facerec", description=__doc__.splitlines()[0])
    from facerec import __version__

    parser.add_argument("--version", action="version", version=f"facerec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available = _available()
    for name, (_, help_) in available.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    available = _available()
    if not argv or argv[0] not in available:
        args = parser.parse_args(argv)  # prints help / errors for unknown commands
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"facerec.cli.{available[name][0]}")
    sub_parser = argparse.ArgumentParser(prog=f"facerec {name}", description=available[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except FacerecError as exc:
        print(f"facerec {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facerec {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
