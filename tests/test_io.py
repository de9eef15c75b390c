"""Atomic outputs: whole or absent, previous version kept on failure, usual permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from brainage.io import atomic_open, save_json, save_npy, save_table


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="crash mid-write"):  # the caller's error, passed through
        with atomic_open(target) as fh:
            fh.write("half of a new ")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_round_trips_and_permissions(tmp_path):
    save_npy(tmp_path / "a.npy", np.arange(5))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5))
    save_table(tmp_path / "t.tsv", pd.DataFrame({"x": [1, 2]}))
    assert (tmp_path / "t.tsv").read_text() == "x\n1\n2\n"
    save_json(tmp_path / "j.json", {"b": np.float32(1.5), "a": np.arange(2)})
    assert (tmp_path / "j.json").read_text() == '{\n  "a": [\n    0,\n    1\n  ],\n  "b": 1.5\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "j.json").st_mode) == 0o666 & ~umask
