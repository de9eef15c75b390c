"""Model bundle: files, what it records (checked against independent computations), model card, refusals.

The run is the conftest's ``inference_run``: the simulator's data (VBM grid / 4), the training
cache, a short L^exp run and a 1-epoch L1 run, and the exp run's bundle.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import VBM_AFFINE, VBM_MASK_NAME, VBM_SHAPE, cache_split, reference_ages
from sklearn.model_selection import KFold

from brainage.inference import BundleError, ExportError, ModelBundle, export_bundle
from brainage.inference.bundle import BUNDLE_FILES
from brainage.training import load_model

# float32 features that differ only in summation order (batch composition) move the Ridge's
# predictions by ~eps32 x its condition (< 1e2 at alpha >= 0.01 on unit-norm features): 1e-5 relative.
RIDGE_RTOL = 1e-5


@pytest.fixture(scope="module")
def bundle(inference_run):
    return ModelBundle.load(inference_run / "bundle")


def test_bundle_folder_weights_only_and_network_from_the_recorded_config(inference_run, bundle):
    folder = inference_run / "bundle"
    assert sorted(p.name for p in folder.iterdir()) == sorted(BUNDLE_FILES)
    payload = torch.load(folder / "weights.pt", weights_only=True)
    assert set(payload) == {"format", "version", "model", "readout_coef"}
    spec = json.loads((folder / "bundle.json").read_text())
    assert spec["format"] == "brainage-model-bundle" and spec["format_version"] == 1
    assert spec["network"]["kwargs"] == {
        "widen_factor": 0.125,
        "head": "projection",
        "projection_dim": 128,
        "projection_hidden": None,
    }
    model, _ = load_model(inference_run / "run" / "model.pt")
    x = torch.randn(2, 1, *bundle.preprocessing.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(bundle.build_network()(x), model(x))


def test_preprocessing_is_the_caches_and_reproduces_it(inference_run, bundle):
    prep, spec = bundle.preprocessing, bundle.spec["preprocessing"]
    # the simulator's grid: the OpenBHB VBM grid subsampled by 4, written out here
    shape = tuple(int(np.ceil(n / 4)) for n in VBM_SHAPE)
    assert spec["modality"] == "vbm" and tuple(spec["source_grid"]["shape"]) == shape
    np.testing.assert_allclose(spec["source_grid"]["affine"], VBM_AFFINE @ np.diag([4, 4, 4, 1.0]))
    tpm = np.asarray(nib.load(inference_run / "data" / "resource" / VBM_MASK_NAME).dataobj)
    np.testing.assert_array_equal(prep.source_mask, tpm > 0.05)
    np.testing.assert_array_equal(prep.mask, np.asarray(nib.load(inference_run / "cache" / "mask.nii.gz").dataobj) > 0)
    assert spec["downsample"]["factor"] == 1 and spec["normalize"]["method"] == "zscore"
    n_train = len(cache_split(inference_run / "cache", "train")[1])
    assert bundle.spec["qc"]["preprocessing_check"]["n"] == n_train
    assert bundle.spec["qc"]["preprocessing_check"]["max_abs_difference"] == 0.0


def test_readout_calibration_and_errors_equal_an_independent_computation(inference_run, bundle):
    ref = reference_ages(inference_run)
    age, predicted = ref["internal_test"]
    slope, intercept = np.polyfit(age, predicted, 1)
    cal = bundle.spec["calibration"]
    assert cal["n"] == len(age) and "internal_test" in cal["fitted_on"]
    np.testing.assert_allclose([cal["slope"], cal["intercept"]], [slope, intercept], rtol=RIDGE_RTOL)
    for split in ("internal_test", "external_test"):
        age, predicted = ref[split]
        errors = bundle.spec["evaluation"]["bundle"][split]
        np.testing.assert_allclose(errors["mae"], np.mean(np.abs(predicted - age)), rtol=RIDGE_RTOL)
    age, predicted = ref["external_test"]
    corrected = (predicted - intercept) / slope - age
    np.testing.assert_allclose(
        bundle.spec["evaluation"]["bundle"]["external_test"]["corrected_gap_mean"], corrected.mean(), rtol=1e-4
    )
    # internal subjects: each corrected by a line fitted on the 4 other folds of KFold(5, shuffle, seed 0)
    age, predicted = ref["internal_test"]
    cross = np.empty_like(age)
    for fit, apply in KFold(5, shuffle=True, random_state=0).split(age):
        s, i = np.polyfit(age[fit], predicted[fit], 1)
        cross[apply] = (predicted[apply] - i) / s - age[apply]
    np.testing.assert_allclose(
        bundle.spec["evaluation"]["bundle"]["internal_test"]["corrected_gap_std"], cross.std(ddof=1), rtol=1e-4
    )


def test_training_cohort_summary(inference_run, bundle):
    table = pd.read_csv(inference_run / "data" / "participants.tsv", sep="\t", dtype={"siteXacq": str})
    train = table[table["split"] == "train"]
    cohort = bundle.spec["training_cohort"]
    assert cohort["n"] == len(train)
    assert cohort["age"]["min"] == pytest.approx(train["age"].min()) and cohort["age"]["max"] == pytest.approx(
        train["age"].max()
    )
    assert cohort["age"]["std"] == pytest.approx(train["age"].std(ddof=1))
    assert cohort["sex"] == train["sex"].value_counts().to_dict()
    assert cohort["sites"]["counts"] == train["siteXacq"].value_counts().to_dict()
    assert sum(cohort["age_histogram"]["counts"]) == len(train)
    assert bundle.age_range == (train["age"].min(), train["age"].max())


def test_qc_ranges_from_the_training_images(inference_run, bundle):
    volumes, table = cache_split(inference_run / "cache", "train")
    mask = bundle.preprocessing.mask
    rows = volumes.astype(np.float64)[:, mask]
    total = rows.sum(axis=0)
    loo = [np.corrcoef(row, (total - row) / (len(rows) - 1))[0, 1] for row in rows]
    ref = bundle.spec["qc"]["reference"]
    np.testing.assert_allclose([ref["template_r"]["min"], ref["template_r"]["max"]], [min(loo), max(loo)], rtol=1e-9)
    np.testing.assert_allclose(
        nib.load(inference_run / "bundle" / "reference_mean.nii.gz").get_fdata()[mask], total / len(rows), rtol=1e-6
    )
    source = [
        np.load(next((inference_run / "data").glob(f"train/derivatives/sub-{pid}/ses-1/*.npy")))[0]
        for pid in table["participant_id"]
    ]
    src_mask = bundle.preprocessing.source_mask
    signal = [np.abs(v[src_mask]).sum() / np.abs(v).sum() for v in source]
    means = [v[src_mask].mean(dtype=np.float64) for v in source]
    np.testing.assert_allclose(
        [ref["signal_in_mask"]["min"], ref["signal_in_mask"]["max"]], [min(signal), max(signal)], rtol=1e-6
    )
    np.testing.assert_allclose(
        [ref["intensity_mean"]["min"], ref["intensity_mean"]["max"]], [min(means), max(means)], rtol=1e-6
    )


def test_model_card_is_written_from_the_facts(inference_run, bundle):
    card = (inference_run / "bundle" / "MODEL_CARD.md").read_text()
    low, high = bundle.age_range
    assert f"Outside the training age range, {low:.1f}-{high:.1f} y" in card
    assert "Trained on simulated data" in card
    cal = bundle.spec["calibration"]
    assert f"predicted = {cal['slope']:.4f} × age + {cal['intercept']:.3f}" in card
    assert f"{bundle.spec['training_cohort']['n']} subjects" in card
    assert "a voxel is in the mask when the OpenBHB mask image value is > 0.05" in card
    assert "## Where it must not be used" in card and "## Site leakage" in card


def test_an_altered_or_newer_bundle_is_refused(inference_run, tmp_path):
    copy = shutil.copytree(inference_run / "bundle", tmp_path / "bundle")
    image = nib.load(copy / "mask.nii.gz")
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 1 - data[0, 0, 0]
    nib.save(nib.Nifti1Image(data, image.affine), copy / "mask.nii.gz")
    with pytest.raises(BundleError, match="mask.nii.gz: its SHA-256 differs"):
        ModelBundle.load(copy)
    shutil.copy(inference_run / "bundle" / "mask.nii.gz", copy / "mask.nii.gz")
    spec = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**spec, "format_version": 2}))
    with pytest.raises(BundleError, match="format version 2; this brainage reads 1"):
        ModelBundle.load(copy)
    with pytest.raises(FileExistsError, match="is not a model bundle"):
        ModelBundle.load(inference_run / "bundle").save(inference_run / "cache")


def test_scores_and_stored_features_of_the_run(inference_run, tmp_path):
    from brainage.evaluation.pipeline import run_evaluation
    from brainage.training import extract_features

    extract_features(inference_run / "run", inference_run / "cache", tmp_path / "features")
    scores = run_evaluation(tmp_path / "features", tmp_path / "evaluation", method="exp", seed=0)
    bundle = export_bundle(
        inference_run / "run",
        tmp_path / "bundle",
        scores=tmp_path / "evaluation" / "scores.json",
        features=tmp_path / "features",
        progress=False,
    )
    # the readout is the evaluation's age probe: same alpha, same internal-test error
    assert bundle.readout.alpha == scores["alpha"]
    np.testing.assert_allclose(
        bundle.spec["evaluation"]["bundle"]["internal_test"]["mae"], scores["int_mae"], rtol=RIDGE_RTOL
    )
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert f"balanced accuracy of {100 * scores['bacc']:.1f} % (chance: {100 * scores['bacc_chance']:.1f} %" in card
    other = json.loads((tmp_path / "evaluation" / "scores.json").read_text())
    (tmp_path / "seed1.json").write_text(json.dumps({**other, "seed": 1}))
    with pytest.raises(ExportError, match="seed1.json: scores of seed 1, but the run has seed 0"):
        export_bundle(inference_run / "run", scores=tmp_path / "seed1.json", progress=False)
    extract_features(inference_run / "run_l1", inference_run / "cache", tmp_path / "features_l1")
    with pytest.raises(ExportError, match="features_l1: the stored projection features differ"):
        export_bundle(inference_run / "run", features=tmp_path / "features_l1", progress=False)


@pytest.mark.filterwarnings("ignore:no age-bias calibration")  # a 1-epoch L1 model predicts about the mean age
def test_l1_bundle_reads_the_regression_head(inference_run):
    bundle = export_bundle(inference_run / "run_l1", progress=False)
    model, info = load_model(inference_run / "run_l1" / "model.pt")
    volumes, _ = cache_split(inference_run / "cache", "internal_test")
    with torch.no_grad():
        head = model(torch.from_numpy(volumes.astype(np.float32))[:, None]).numpy().astype(float)
    expected = head * info["age_std"] + info["age_mean"]
    assert bundle.readout.kind == "head" and bundle.readout.features == "embedding"
    age = pd.read_csv(inference_run / "cache" / "internal_test.tsv", sep="\t")["age"].to_numpy(float)
    np.testing.assert_allclose(
        bundle.spec["evaluation"]["bundle"]["internal_test"]["mae"], np.mean(np.abs(expected - age)), rtol=1e-5
    )


def test_a_cache_that_is_not_the_runs_is_refused(inference_run, tmp_path):
    cache = shutil.copytree(inference_run / "cache", tmp_path / "cache")
    volumes = np.load(cache / "train.npy")
    volumes[0] = volumes[0] * np.float16(0.5)
    np.save(cache / "train.npy", volumes)
    with pytest.raises(ValueError, match="not the cache the run was trained on"):
        export_bundle(inference_run / "run", cache=cache, progress=False)
    with pytest.raises(FileNotFoundError, match="the training cache .*nowhere is not available; pass --cache"):
        export_bundle(inference_run / "run", cache=tmp_path / "nowhere", progress=False)
