"""What the subcommand modules share: list-valued option types and the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["command_line", "float_list", "int_list", "nonnegative_int", "positive_int"]


def _comma_list(cast: Callable[[str], float], what: str) -> Callable[[str], list]:
    """An argparse ``type`` for ``"1,2,3"`` -> ``[cast(v), ...]`` (empty text -> ``[]``)."""

    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from err

    return parse


float_list = _comma_list(float, "numbers")
int_list = _comma_list(int, "integers")


def _bounded_int(low: int, what: str) -> Callable[[str], int]:
    """An argparse ``type`` for an integer >= ``low`` (argparse names the option in its message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _bounded_int(1, "a positive integer")
nonnegative_int = _bounded_int(0, "an integer >= 0")


_NARGS = ("scores", "images", "bids_select")  # options taking several space-separated values


def command_line(args: argparse.Namespace) -> str:
    """The effective command, every option spelled out (defaults included)."""
    import shlex

    words = ["brainage", args.command]
    for key, value in vars(args).items():
        if key in ("func", "command", "verbose") or value is None or value is False or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, *(str(v) for v in value)] if key in _NARGS else [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)
