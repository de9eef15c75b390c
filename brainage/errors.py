"""User-facing errors: input the user can fix, reported without a traceback by the CLI.

``brainage`` (the CLI) catches :class:`BrainAgeError` alone and prints its message on one line;
any other exception is a bug and keeps its traceback. The classes subclass :class:`ValueError`
(and the two file errors :class:`FileNotFoundError` / :class:`FileExistsError`), so callers that
catch the built-in types keep working. Each message names the file, row or field at fault and
what was expected. Modules raise these or a subclass of their own (``CheckpointError``,
``BundleError``, ...); ``submission/ramp_estimator.py`` alone keeps built-in errors, because it
runs on the challenge server without this package.
"""

from __future__ import annotations

__all__ = ["BrainAgeError", "ConfigError", "InputNotFoundError", "OutputExistsError", "OutputLockedError"]


class BrainAgeError(ValueError):
    """Base of the errors caused by the user's input or environment."""


class ConfigError(BrainAgeError):
    """An invalid option, or a config file that cannot be read (its path is in the message)."""


class OutputLockedError(BrainAgeError):
    """Another live process is writing the same output folder."""


class InputNotFoundError(BrainAgeError, FileNotFoundError):
    """A file or folder the user named (or the workflow made earlier) is not there."""


class OutputExistsError(BrainAgeError, FileExistsError):
    """An output already exists and the command was not asked to replace it."""
