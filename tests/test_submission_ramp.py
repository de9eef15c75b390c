"""The submission under ramp-workflow's `ramp-test --quick-test`, and the workflow's check, end to end.

Synthetic subjects on the real OpenBHB grids (the simulator at factor 1, vbm only), RAMP rows of
the real length built from them, the project's CLI from preprocessing (downsample 4) to a
one-epoch tiny run, its features and its submission; then a RAMP kit with the kit's `problem.py`,
run by the venv's `ramp-test` console script. The test scores it prints must be the project's
own evaluation of the same features.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ROUNDING_MARGIN, network_rounding

from brainage.cli import main
from brainage.data.cache import TrainingCache
from brainage.evaluation.features import load_feature_dir
from brainage.evaluation.protocol import evaluate_features
from brainage.submission import SubmissionCheckError, check_submission, write_ramp_kit, write_ramp_rows
from brainage.training.checkpoint import load_model

pytestmark = pytest.mark.slow

RAMP_TEST = Path(sys.executable).with_name("ramp-test")
SCORES = ("challenge_score", "int_mae", "bacc", "ext_mae", "int_rmse")
N_SUBJECTS = 32


def cli(*args: str) -> None:
    assert main([str(a) for a in args]) == 0, args


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramp_e2e")
    data = root / "data"
    cli(
        "simulate",
        "--out",
        data,
        "--n-subjects",
        N_SUBJECTS,
        "--downsample",
        1,
        "--seed",
        0,
        "--n-sites",
        4,
        "--modalities",
        "vbm",
        "--n-jobs",
        1,
        "--quiet",
    )
    write_ramp_rows(data, root / "ramp", modalities=["vbm"])
    cli("preprocess", "--data", data, "--out", root / "cache", "--downsample", 4, "--quiet")
    cli(
        "train",
        "--cache",
        root / "cache",
        "--out",
        root / "run",
        "--method",
        "exp",
        "--epochs",
        1,
        "--batch-size",
        8,
        "--width",
        0.125,
        "--device",
        "cpu",
        "--num-threads",
        1,
        "--no-progress",
    )
    cli("features", "--run", root / "run", "--cache", root / "cache", "--out", root / "features", "--num-threads", 1)
    cli("submission", "--run", root / "run", "--out", root / "sub")
    return root


def parse_fold_tables(stdout: str) -> dict[int, dict[str, dict[str, float]]]:
    """Per fold, per step (train/valid/test), the scores ramp-test printed."""
    folds: dict[int, dict[str, dict[str, float]]] = {}
    current, header = None, None
    for line in stdout.splitlines():
        title = re.match(r"CV fold (\d+)$", line.strip())
        if title:
            current, header = int(title.group(1)), None
            continue
        if current is None:
            continue
        tokens = line.split()
        if tokens and tokens[0] == "score":
            header = tokens[1:]
        elif header and tokens and tokens[0] in ("train", "valid", "test"):
            folds.setdefault(current, {})[tokens[0]] = dict(zip(header, map(float, tokens[1:]), strict=False))
        elif header and line.strip().startswith("---"):
            current = None
    return folds


def test_ramp_test_quick_test_reports_the_project_scores(run):
    ramp = run / "ramp"
    project = load_feature_dir(run / "features")
    train_table = pd.read_csv(ramp / "train.tsv", sep="\t", dtype={"participant_id": str})
    row_of = {pid: i for i, pid in enumerate(train_table["participant_id"].astype(str))}
    # fold 0: every training subject, in the order of the project's feature file (so the probes'
    # unshuffled inner folds are the same); fold 1: a shuffled subset
    order = np.array([row_of[pid] for pid in project["train"].participant_id])
    subset = np.random.default_rng(1).permutation(len(order))[: len(order) - 5]
    folds = {
        "all": {"train": order.tolist(), "valid": order.tolist()},
        "subset": {"train": order[subset].tolist(), "valid": np.delete(order, subset).tolist()},
    }
    kit = write_ramp_kit(run / "kit", ramp, run / "sub", name="brainage_exp", folds=folds)

    env = {k: v for k, v in os.environ.items() if k not in ("VBM_MASK", "QUASIRAW_MASK")}
    env.update(TERM="dumb", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(RAMP_TEST), "--submission", "brainage_exp", "--quick-test"],
        cwd=kit,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = parse_fold_tables(proc.stdout)
    assert sorted(printed) == [0, 1]

    train, internal, external = (project[s].triple() for s in ("train", "internal_test", "external_test"))
    expected = {
        0: evaluate_features(train, internal, external),
        1: evaluate_features(tuple(a[subset] for a in train), internal, external),
    }
    for fold, scores in expected.items():
        test = printed[fold]["test"]
        for key in ("challenge_score", "int_mae", "bacc", "ext_mae"):
            assert test[key] == pytest.approx(scores[key], rel=1e-5, abs=2e-6), (fold, key)
        assert test["int_rmse"] == pytest.approx(scores["int_rmse"], rel=1e-5, abs=2e-6)
    # the train/valid steps hold only internal (training-site) subjects
    assert np.isnan(printed[0]["train"]["ext_mae"]) and np.isnan(printed[0]["valid"]["challenge_score"])
    assert proc.stdout.count(f"- features: ({len(order)}, 128)") >= 2


def test_submission_check_matches_the_project_features_and_scores(run):
    cli("evaluate", "--features", run / "features", "--out", run / "evaluation", "--method", "exp", "--seed", 0)
    cli(
        "submission-check",
        "--submission",
        run / "sub",
        "--data",
        run / "data",
        "--features",
        run / "features",
        "--scores",
        run / "evaluation" / "scores.json",
        "--out",
        run / "check",
    )
    report = json.loads((run / "check" / "check.json").read_text())
    project = json.loads((run / "evaluation" / "scores.json").read_text())
    assert report["status"] == "passed"
    # the challenge's row: the voxels of the vbm mask (TPM > 0.05) and of the quasi-raw brain mask
    # (> 0), then the fsl xhemi block (8 x 163,842) and the vbm, Desikan and Destrieux ROI tables
    # (284 + 476 + 1,036); 3,659,572 in all, the published OpenBHB row length
    import nibabel as nib

    resource = run / "ramp" / "resource"
    n_vbm = int((np.asarray(nib.load(resource / "cat12vbm_space-MNI152_desc-gm_TPM.nii.gz").dataobj) > 0.05).sum())
    n_qr = int((np.asarray(nib.load(resource / "quasiraw_space-MNI152_desc-brain_T1w.nii.gz").dataobj) > 0).sum())
    assert report["row_length"] == n_vbm + n_qr + 8 * 163_842 + 284 + 476 + 1_036 == 3_659_572
    assert report["server_run"]["refused_imports"] == {"brainage": True, "monai": True}
    assert set(report["feature_comparison"]) == {"train", "internal_test", "external_test"}
    # the estimator on the server's path and `brainage features` run the same float32 network:
    # rounding apart, measured against float64 on every cached subject
    model, _ = load_model(run / "run" / "model.pt")
    cache = TrainingCache(run / "cache")
    floor = max(network_rounding(model, cache.split(s).volumes, "projection") for s in report["feature_comparison"])
    for split, comparison in report["feature_comparison"].items():
        assert comparison["max_abs_diff"] <= ROUNDING_MARGIN * floor, split
    for key in ("int_mae", "bacc", "ext_mae", "challenge_score"):
        assert report["scores"][key] == pytest.approx(project[key], rel=1e-5, abs=2e-6), key
    assert "| this check |" in (run / "check" / "check.md").read_text()
    # the check leaves the folder a user uploads as it was (no __pycache__ from importing estimator.py)
    assert sorted(p.name for p in (run / "sub").iterdir()) == ["estimator.py", "metadata.pkl", "weights.pth"]


def test_submission_check_fails_loudly_on_other_features(run, tmp_path):
    other = tmp_path / "features"
    other.mkdir()
    for split in ("train", "internal_test", "external_test"):
        with np.load(run / "features" / f"{split}.npz") as data:
            arrays = {k: data[k] for k in data.files}
        arrays["features"] = arrays["features"][::-1].copy() if split == "train" else arrays["features"]
        np.savez(other / f"{split}.npz", **arrays)
    # only the train split was changed, and the message says so
    with pytest.raises(
        SubmissionCheckError,
        match=r"differ from the project's beyond tolerance \(rtol [^)]*\): train: \d+ subject\(s\), max \|diff\| [^;]*$",
    ):
        check_submission(run / "sub", run / "data", other, tmp_path / "check")
    assert not (tmp_path / "check" / "check.json").exists()


def test_ramp_rows_follow_the_challenge_layout(run):
    from nilearn.masking import apply_mask

    from brainage.data.openbhb import open_dataset

    rows = np.load(run / "ramp" / "train.npy", mmap_mode="r")
    assert rows.shape[1] == 3_659_572 and rows.dtype == np.float32
    test = pd.read_csv(run / "ramp" / "test.tsv", sep="\t", dtype={"participant_id": str})
    split = test["split"].tolist()
    assert split == sorted(split, key=["internal_test", "external_test"].index) and "external_test" in split
    train = pd.read_csv(run / "ramp" / "train.tsv", sep="\t", dtype={"participant_id": str})
    dataset = open_dataset(run / "data")
    mask_img = run / "ramp" / "resource" / "cat12vbm_space-MNI152_desc-gm_TPM.nii.gz"
    import nibabel as nib

    mask = nib.Nifti1Image((np.asarray(nib.load(mask_img).dataobj) > 0.05).astype(np.uint8), nib.load(mask_img).affine)
    ids = dataset.participants["participant_id"].astype(str).tolist()
    for i in (0, len(train) - 1):
        volume = dataset.volume(ids.index(train["participant_id"][i]), "vbm")
        expected = apply_mask(nib.Nifti1Image(volume, mask.affine), mask)
        np.testing.assert_array_equal(rows[i, :519_945], expected)
        assert not rows[i, 519_945:].any()
    path = run / "ramp" / "train.npy"
    assert path.stat().st_blocks * 512 < path.stat().st_size / 3  # zero blocks are holes
