"""`facerec demo`: train and evaluate on built-in synthetic identities."""

from __future__ import annotations

import argparse

from facerec.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, config_required=False)
    parser.add_argument("--run-dir", default=None, help="output directory (default: train.output_dir)")


def run(args: argparse.Namespace) -> int:
    from facerec.demo import main

    main(args.config, tuple(args.overrides), args.run_dir)
    return 0
