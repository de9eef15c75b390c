"""The ``brainage`` command line. Every workflow rule calls one of these subcommands.

One module per stage of the pipeline, as the workflow's rule files: :mod:`~brainage.cli.data`
(simulate, preprocess), :mod:`~brainage.cli.harmonize`, :mod:`~brainage.cli.train` (train,
features), :mod:`~brainage.cli.evaluate` (evaluate, table), :mod:`~brainage.cli.submission`
(submission, submission-check, ramp-kit), :mod:`~brainage.cli.predict` (export, predict) and
:mod:`~brainage.cli.debias`. In each, a ``_register_<name>`` function adds a subcommand's parser
and points ``func`` at its ``_run_<name>`` handler, which imports its module lazily so
``brainage --help`` stays fast and returns a process exit status; ``register`` adds them all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from brainage.cli import data, debias, evaluate, harmonize, predict, submission, train
from brainage.errors import BrainAgeError

__all__ = ["build_parser", "main"]

#: The subcommand modules, in pipeline order (the order of ``brainage --help``).
GROUPS = (data, harmonize, train, evaluate, submission, predict, debias)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainage",
        description="Site-blind brain-age prediction from 3D MRI (OpenBHB).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def _output_lock(args: argparse.Namespace, argv: Sequence[str] | None) -> contextlib.AbstractContextManager:
    """Lock the output a command writes (``--out`` / ``--out-dir``): see :func:`brainage.io.output_lock`.

    Under torchrun every process runs the same command and only rank 0 writes, so only rank 0
    locks; when it finds the output locked it exits and torchrun stops the other processes.
    """
    out = getattr(args, "out", None) or getattr(args, "out_dir", None)
    if out is None or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    from brainage.io import output_lock

    return output_lock(out, command=" ".join(["brainage", *(sys.argv[1:] if argv is None else argv)]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        with _output_lock(args, argv):
            return int(args.func(args) or 0)
    except BrainAgeError as err:  # anything else is a bug and keeps its traceback
        if args.verbose:
            raise
        print(f"brainage {args.command}: error: {err}", file=sys.stderr)
        return 2
