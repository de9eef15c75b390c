"""Issue 14 item 5: one base class for user-facing errors, and the CLI catches only that.

A user's mistake prints one line and exits 2; any other exception is a bug and must reach the
user with its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import brainage
from brainage import cli
from brainage.errors import BrainAgeError, InputNotFoundError, OutputExistsError

#: Shipped to the challenge server on its own, so it cannot import the package's error classes.
STANDALONE = {"brainage.submission.ramp_estimator", "brainage.submission.ramp_problem"}


def _command(monkeypatch, handler):
    """Make ``brainage table`` run ``handler`` instead of its own handler."""
    monkeypatch.setattr("brainage.cli.evaluate._run_table", handler)


def _raise(err: Exception):
    def handler(args):
        raise err

    return handler


def test_a_user_error_prints_one_line_and_exits_2(monkeypatch, capsys, tmp_path):
    _command(monkeypatch, _raise(InputNotFoundError("results/x.npz: feature file not found")))
    assert cli.main(["table", "--scores", "x.json", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "brainage table: error: results/x.npz: feature file not found\n"


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def handler(args):
        return np.reshape(np.arange(3), (2, 2))  # numpy's own ValueError: a bug, not the user's input

    _command(monkeypatch, handler)
    with pytest.raises(ValueError, match="cannot reshape") as info:
        cli.main(["table", "--scores", "x.json", "--out", str(tmp_path)])
    assert not isinstance(info.value, BrainAgeError)
    _command(monkeypatch, _raise(FileNotFoundError("an internal path")))
    with pytest.raises(FileNotFoundError):
        cli.main(["table", "--scores", "x.json", "--out", str(tmp_path)])


def test_file_errors_are_also_the_builtin_types():
    assert issubclass(InputNotFoundError, FileNotFoundError) and issubclass(InputNotFoundError, BrainAgeError)
    assert issubclass(OutputExistsError, FileExistsError) and issubclass(OutputExistsError, BrainAgeError)
    assert issubclass(BrainAgeError, ValueError)


def _project_error_classes():
    for info in pkgutil.walk_packages(brainage.__path__, prefix="brainage."):
        if info.name in STANDALONE or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                yield info.name, name, obj


def test_every_project_error_derives_from_the_one_base_class():
    found = list(_project_error_classes())
    assert len(found) >= 10  # CheckpointError, BundleError, OpenBHBError, ... (a walk that finds none is broken)
    strays = [f"{module}.{name}" for module, name, cls in found if not issubclass(cls, BrainAgeError)]
    assert strays == []
