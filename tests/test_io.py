"""Atomic outputs: whole or absent, previous version kept on failure, usual permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from brainage.io import (
    atomic_dir,
    atomic_open,
    atomic_path,
    remove_stale_temporaries,
    save_json,
    save_npy,
    save_table,
    temporary_affixes,
)


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


def test_stale_temporaries_of_the_named_files_are_removed(tmp_path):
    with atomic_path(tmp_path / "model.pt") as tmp:  # the affixes are those atomic_path uses
        prefix, suffix = temporary_affixes(tmp_path / "model.pt")
        assert tmp.name.startswith(prefix) and tmp.name.endswith(suffix)
        tmp.write_bytes(b"x")
    stale = []
    for name in ("model.pt", "metrics.csv"):  # what a process killed while writing them leaves
        prefix, suffix = temporary_affixes(tmp_path / name)
        stale.append(tmp_path / f"{prefix}k1ll3d{suffix}")
    for p in stale:
        p.write_bytes(b"partial")
    other = tmp_path / ".other.csv.k1ll3d.tmp.csv"
    other.write_bytes(b"not ours")
    removed = remove_stale_temporaries(tmp_path, ["model.pt", "metrics.csv", "config.json"])
    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", other.name])


def test_folder_is_replaced_whole_or_kept(tmp_path):
    target = tmp_path / "bundle"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and not any(tmp.iterdir())
        (tmp / "a.txt").write_text("first")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("second")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask
