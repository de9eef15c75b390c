"""User-facing errors: input the user can fix, reported without a traceback by the CLI.

They subclass :class:`ValueError`, so callers that catch ``ValueError`` keep working. Each
message names the file, row or field at fault and what was expected.
"""

from __future__ import annotations

__all__ = ["BrainAgeError", "ConfigError", "OutputLockedError"]


class BrainAgeError(ValueError):
    """Base of the errors caused by the user's input or environment."""


class ConfigError(BrainAgeError):
    """An invalid option, or a config file that cannot be read (its path is in the message)."""


class OutputLockedError(BrainAgeError):
    """Another live process is writing the same output folder."""
