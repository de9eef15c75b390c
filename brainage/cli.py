"""The ``brainage`` command line. Every workflow rule calls one of these subcommands.

Each subcommand is declared by a ``_register_<name>`` function that adds its parser and
points ``func`` at a handler; handlers import their module lazily so ``brainage --help``
stays fast. Handlers return a process exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

_REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []


def command(register: Callable[[argparse._SubParsersAction], None]):
    """Decorator collecting subcommand registration functions in declaration order."""
    _REGISTRY.append(register)
    return register


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


# --------------------------------------------------------------------------- data
# (subcommands: simulate, preprocess; registered below)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainage",
        description="Site-blind brain-age prediction from 3D MRI (OpenBHB).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as err:
        if args.verbose:
            raise
        print(f"brainage {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
