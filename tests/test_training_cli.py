"""`brainage train` / `brainage features` as real processes: end to end, and SIGKILL + resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, write_openbhb

from brainage.data.preprocess import preprocess
from brainage.io import temporary_affixes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = [
    "--width",
    "0.125",
    "--batch-size",
    "4",
    "--lr",
    "0.001",
    "--device",
    "cpu",
    "--num-threads",
    "1",
    "--no-progress",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A real cache: a tiny OpenBHB folder (helpers.write_openbhb) through `preprocess` (grid 16x19x16)."""
    root = tmp_path_factory.mktemp("cli")
    write_openbhb(root / "openbhb", n=24, factor=8, seed=4)
    preprocess(root / "openbhb", root / "cache", progress=False)
    return root / "cache"


def brainage(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainage", *args], cwd=REPO, env=ENV, capture_output=True, text=True, **kw
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_cli_train_and_features(cache, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 2\nkernel: cauchy\nsigma: 1.5\n")
    run = brainage(
        "train",
        "--cache",
        str(cache),
        "--method",
        "exp",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(config),
        "--sigma",
        "2.5",
        *TINY,
    )
    assert run.returncode == 0, run.stderr
    stored = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["config"]
    assert (stored["kernel"], stored["sigma"], stored["seed"], stored["epochs"]) == ("cauchy", 2.5, 3, 2)
    assert len((tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()) == 3

    feats = brainage("features", "--run", str(tmp_path / "run"), "--cache", str(cache), "--out", str(tmp_path / "f"))
    assert feats.returncode == 0, feats.stderr
    n = {"train": 24 - 8 - 4, "internal_test": 8, "external_test": 4}
    for split, rows in n.items():
        with np.load(tmp_path / "f" / f"{split}.npz", allow_pickle=False) as f:
            assert f["features"].shape == (rows, 128)
            assert f["site"].dtype.kind == f["participant_id"].dtype.kind == "U"

    bad = brainage(
        "train",
        "--cache",
        str(cache),
        "--method",
        "exp",
        "--out",
        str(tmp_path / "bad"),
        "--kernel",
        "rbf",
        "--formulation",
        "papr",
        *TINY,
    )
    assert bad.returncode == 2 and "invalid choice: 'papr'" in bad.stderr
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    bad = brainage(
        "train",
        "--cache",
        str(cache),
        "--method",
        "exp",
        "--out",
        str(tmp_path / "bad"),
        "--config",
        str(tmp_path / "typo.yaml"),
        *TINY,
    )
    assert bad.returncode == 2
    assert f"{tmp_path / 'typo.yaml'}: unknown training option(s) 'epoch' (did you mean 'epochs'?)" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_sigkill_then_resume_gives_identical_weights(cache, tmp_path):
    args = ["train", "--cache", str(cache), "--method", "thr", "--seed", "1", "--epochs", "24", *TINY]
    reference = brainage(*args, "--out", str(tmp_path / "full"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "brainage", *args, "--out", str(out)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.pt").exists(), "the run finished before it was killed: nothing was tested"
    done_before = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done_before < 24

    # A kill rarely lands mid-write: plant the temporaries such a kill leaves, for the check below.
    for name in ("checkpoint.pt", "metrics.csv"):
        prefix, suffix = temporary_affixes(out / name)
        (out / f"{prefix}k1ll3d{suffix}").write_bytes(b"partial")

    resumed = brainage(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out / 'checkpoint.pt'} from epoch" in resumed.stderr
    a, b = weights(tmp_path / "full" / "model.pt"), weights(out / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 25))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
