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


@command
def _register_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="OpenBHB folder (either layout) -> training cache",
        description="Mask, optionally block-average, normalise per image within the mask and "
        "store float16 volumes per split (memory-mapped) with an index table. Resumable.",
    )
    p.add_argument("--data", required=True, type=Path, help="OpenBHB folder (per-subject or RAMP layout)")
    p.add_argument("--out", required=True, type=Path, help="cache folder to write")
    p.add_argument("--layout", default="auto", choices=["auto", "per_subject", "ramp"])
    p.add_argument("--modality", default="vbm", choices=["vbm", "quasiraw"])
    p.add_argument("--downsample", type=int, default=1, help="integer block-average factor (default 1)")
    p.add_argument("--normalize", default="zscore", choices=["zscore", "none"])
    p.add_argument("--chunk", type=int, default=32, help="volumes per checkpointed chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from brainage.data.preprocess import preprocess

    meta = preprocess(
        args.data, args.out, modality=args.modality, downsample=args.downsample,
        normalize=args.normalize, chunk=args.chunk, layout=args.layout, progress=not args.quiet,
    )
    logging.getLogger("brainage").info(
        "cache %s: grid %s, %d mask voxels, splits %s", args.out, meta["shape"], meta["n_mask_voxels"], meta["splits"]
    )
    return 0


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
