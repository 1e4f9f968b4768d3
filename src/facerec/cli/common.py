"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Iterator


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    if config_required:
        parser.add_argument("config", help="YAML config file (see configs/)")
    else:
        parser.add_argument("--config", default=None, help="YAML config file (default: the built-in demo config)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=2 (repeatable)",
    )


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Collect the warnings raised inside and print each as `warning: ...` on stderr afterwards
    (after a progress bar has finished, not through it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
