"""The ``rank-search`` command line. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from .._version import __version__
from ..errors import RankSearchError

# modules of this package; each defines add_parsers(subparsers), whose parsers set ``run``
MODULES = ("inspect", "train", "compress", "search", "analyze", "bench", "onnx")


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rank-search",
        description="Find per-layer ranks for low-rank CNNs trained from scratch under a MACs budget.",
    )
    parser.add_argument("--version", action="version", version=f"rank-search {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in MODULES:
        module = _module(module_name)
        if module is not None:
            module.add_parsers(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:  # fmt: skip
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rank-search`` console script."""
    from ..threads import prepare_process

    prepare_process()  # OMP_WAIT_POLICY, before any subcommand imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    warnings.showwarning = _show_warning
    try:
        return int(args.run(args) or 0)
    except RankSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
