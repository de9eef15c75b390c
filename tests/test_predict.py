"""brainage predict: the simulator's arrays, real NIfTI templates from nilearn, wrong images, BIDS, tables, CLI.

Expected values are computed here without :mod:`brainage.inference`: the run's network on the
cache volumes with a Ridge fitted by scikit-learn (``helpers.reference_ages``), nilearn's own
resampling, numpy statistics.
"""

from __future__ import annotations

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import cache_split, reference_ages
from nilearn.datasets import load_mni152_gm_template, load_mni152_template
from nilearn.image import resample_to_img

from brainage.cli import main
from brainage.inference import ImageRefused, ModelBundle, predict_brain_age

# Ridge predictions from float32 features that differ only in summation order (see test_export).
RIDGE_RTOL = 1e-5


@pytest.fixture(scope="module")
def bundle(inference_run):
    return ModelBundle.load(inference_run / "bundle")


def subject_array(root, pid: str):
    return next((root / "data").glob(f"*/derivatives/sub-{pid}/ses-1/*_desc-gm_T1w.npy"))


def test_simulator_arrays_with_ages(inference_run, bundle, tmp_path):
    """The simulator's held-out .npy files listed in a CSV: ages, gaps, corrected gaps and age flags."""
    ref = reference_ages(inference_run)
    rows = []
    for split in ("internal_test", "external_test"):
        _, table = cache_split(inference_run / "cache", split)
        rows += [
            {"participant_id": pid, "path": subject_array(inference_run, pid), "age": age, "sex": sex}
            for pid, age, sex in zip(table["participant_id"], table["age"], table["sex"], strict=True)
        ]
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    out = predict_brain_age(bundle, [tmp_path / "list.csv"], tmp_path / "pred.csv", progress=False, batch_size=5)
    age = np.r_[ref["internal_test"][0], ref["external_test"][0]]
    predicted = np.r_[ref["internal_test"][1], ref["external_test"][1]]
    np.testing.assert_allclose(out["predicted_age"], predicted, rtol=RIDGE_RTOL)
    np.testing.assert_allclose(out["brain_age_gap"], out["predicted_age"] - age, rtol=1e-12, atol=1e-12)
    slope, intercept = np.polyfit(*ref["internal_test"], 1)
    np.testing.assert_allclose(out["corrected_brain_age_gap"], (predicted - intercept) / slope - age, rtol=1e-4)
    low, high = bundle.age_range
    assert out["age_outside_training_range"].tolist() == ((age < low) | (age > high)).tolist()
    assert not out["resampled"].any() and (out["error"] == "").all()
    assert out["flagged"].tolist() == (out["flag_reasons"] != "").tolist()
    written = pd.read_csv(tmp_path / "pred.csv", dtype={"participant_id": str}, keep_default_na=False)
    assert written["participant_id"].tolist() == [r["participant_id"] for r in rows]
    summary = json.loads((tmp_path / "pred.json").read_text())
    assert summary["n_predicted"] == len(rows) and summary["mae"] == pytest.approx(np.mean(np.abs(predicted - age)))
    assert (tmp_path / "pred.png").stat().st_size > 0


def write_like(path, data, affine, **header):
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def test_same_space_other_grids_give_the_same_age(inference_run, bundle, tmp_path):
    """A subject written as NIfTI on the model grid, with its x axis stored flipped, and inside a larger FOV."""
    pid = cache_split(inference_run / "cache", "internal_test")[1]["participant_id"][0]
    volume = np.load(subject_array(inference_run, pid))[0]
    affine = bundle.preprocessing.source_affine
    flipped = affine @ np.array([[-1, 0, 0, volume.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    padded = np.zeros(tuple(n + 6 for n in volume.shape), np.float32)
    padded[2:-4, 3:-3, 1:-5] = volume
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ [-2, -3, -1] + affine[:3, 3]
    images = [
        subject_array(inference_run, pid),
        write_like(tmp_path / "grid.nii.gz", volume, affine),
        write_like(tmp_path / "flipped.nii.gz", volume[::-1], flipped),
        write_like(tmp_path / "padded.nii", padded, shifted),
    ]
    out = predict_brain_age(bundle, images, tmp_path / "pred.csv", progress=False, figure=False)
    assert out["resampled"].tolist() == [False, False, True, True]
    assert "(RAS) -> " in out["resampling"][2] and "(LAS), linear" in out["resampling"][2]
    # resampling at voxel centres is exact: linear weights of 0 and 1
    np.testing.assert_allclose(out["predicted_age"], out["predicted_age"][0], rtol=1e-6)
    assert out["participant_id"].tolist() == [f"sub-{pid}", "grid", "flipped", "padded"]


def test_nilearn_mni152_templates(inference_run, bundle, tmp_path):
    """Real anatomy the project did not make: the GM template on the model grid and at 1 mm, the T1w template."""
    target = nib.load(inference_run / "bundle" / "source_mask.nii.gz")
    gm = load_mni152_gm_template(resolution=1)
    on_grid = resample_to_img(gm, target, interpolation="linear", force_resample=True, copy_header=True)
    write_like(tmp_path / "gm_model_grid.nii.gz", on_grid.get_fdata(), on_grid.affine)  # float32, like predict
    gm.to_filename(tmp_path / "gm_1mm.nii.gz")
    load_mni152_template(resolution=2).to_filename(tmp_path / "t1_2mm.nii.gz")
    names = ["gm_model_grid.nii.gz", "gm_1mm.nii.gz", "t1_2mm.nii.gz"]
    out = predict_brain_age(bundle, [tmp_path / n for n in names], tmp_path / "pred.csv", progress=False)
    assert out["resampled"].tolist() == [False, True, True]
    assert out["resampling"][1].startswith("1x1x1 mm 197x233x189 (RAS) -> 6x6x6 mm 31x37x31 (LAS)")
    # the 1 mm image goes through the same nilearn linear resampling (float64, rounded to float32): the same
    # age up to the float32 forward pass (eps 1.2e-7, a few ulp through the network)
    np.testing.assert_allclose(out["predicted_age"][1], out["predicted_age"][0], rtol=1e-6)
    prep, reference = bundle.preprocessing, bundle.spec["qc"]["reference"]
    for i, name in enumerate(names):
        image = nib.load(tmp_path / name)
        volume = resample_to_img(
            image, target, interpolation="linear", force_resample=True, copy_header=True
        ).get_fdata()
        inside = volume[prep.source_mask]
        assert out["signal_in_mask"][i] == pytest.approx(np.abs(inside).sum() / np.abs(volume).sum(), rel=1e-5)
        assert out["intensity_mean"][i] == pytest.approx(inside.mean(), rel=1e-5)
        z = np.where(prep.mask, (volume - inside.mean()) / inside.std(), 0).astype(np.float16)
        r = np.corrcoef(z[prep.mask].astype(float), bundle.reference_mean[prep.mask])[0, 1]
        assert out["template_r"][i] == pytest.approx(r, rel=1e-3)
        expected = [
            f"{m}_below_training_range" for m in ("signal_in_mask", "template_r") if out[m][i] < reference[m]["min"]
        ]
        expected += [
            f"{m}_{side}_training_range"
            for m in ("intensity_mean", "intensity_std")
            for side, bad in (("below", out[m][i] < reference[m]["min"]), ("above", out[m][i] > reference[m]["max"]))
            if bad
        ]
        low, high = bundle.age_range
        expected += ["predicted_age_outside_training_range"] * bool(not low <= out["predicted_age"][i] <= high)
        assert sorted(r for r in out["flag_reasons"][i].split(";") if r) == sorted(expected)
        assert out["flagged"][i] == bool(expected)
    # a T1w image given to a grey-matter model: less of its signal lies in the grey-matter mask
    assert out["signal_in_mask"][2] < out["signal_in_mask"][0]


def wrong_images(inference_run, bundle, folder):
    """(file, expected message) of images that must be refused."""
    affine = bundle.preprocessing.source_affine
    shape = bundle.preprocessing.source_shape
    pid = cache_split(inference_run / "cache", "internal_test")[1]["participant_id"][1]
    volume = np.load(subject_array(inference_run, pid))[0]
    rng = np.random.default_rng(0)
    random_affine = np.eye(4)
    random_affine[:3] = rng.normal(0, 4, (3, 4))
    nan = volume.copy()
    x, y, z = np.argwhere(bundle.preprocessing.source_mask)[10]
    nan[x, y, z] = np.nan
    no_orientation = nib.Nifti1Image(volume, affine)
    no_orientation.set_sform(None, code=0)
    no_orientation.set_qform(None, code=0)
    nib.save(no_orientation, folder / "no_orientation.nii.gz")
    far = affine.copy()
    far[:3, 3] += 200.0
    quasiraw = folder / "sub-9_preproc-quasiraw_T1w.npy"
    np.save(quasiraw, np.zeros((1, 46, 55, 46), np.float32))
    return [
        (write_like(folder / "random_affine.nii.gz", volume, random_affine), "rotated or sheared by"),
        (
            write_like(folder / "series.nii.gz", np.stack([volume, volume], axis=-1), affine),
            rf"a 4-D series of 2 volumes \({shape[0]}, {shape[1]}, {shape[2]}, 2\)",
        ),
        (
            write_like(folder / "nan.nii.gz", nan, affine),
            rf"1 non-finite value\(s\) \(NaN or inf\) inside the model's mask, first at source-grid voxel "
            rf"\(x, y, z\) = \({x}, {y}, {z}\)",
        ),
        (
            write_like(folder / "empty.nii.gz", np.zeros(shape), affine),
            "empty image: every voxel inside the model's mask",
        ),
        (folder / "no_orientation.nii.gz", "no spatial orientation"),
        (write_like(folder / "far.nii.gz", volume, far), "field of view holds only 0.0 %"),
        (quasiraw, "an OpenBHB quasiraw array"),
    ]


def test_wrong_images_are_refused_with_the_reason(inference_run, bundle, tmp_path):
    good = subject_array(inference_run, cache_split(inference_run / "cache", "internal_test")[1]["participant_id"][0])
    cases = wrong_images(inference_run, bundle, tmp_path)
    for path, message in cases:
        with pytest.raises(ImageRefused, match=message):
            predict_brain_age(bundle, [good, path], tmp_path / "pred.csv", progress=False)
        assert not (tmp_path / "pred.csv").exists()
    out = predict_brain_age(
        bundle, [good] + [p for p, _ in cases], tmp_path / "pred.csv", progress=False, skip_invalid=True, figure=False
    )
    assert out["error"][0] == "" and math.isfinite(out["predicted_age"][0])
    for i, (path, message) in enumerate(cases, start=1):
        assert out["error"][i].startswith(str(path)) and pd.Series([out["error"][i]]).str.contains(message).all()
        assert out["flagged"][i] and out["flag_reasons"][i] == "refused" and math.isnan(out["predicted_age"][i])


def test_bids_derivatives_folder(inference_run, bundle, tmp_path):
    bids = tmp_path / "derivatives"
    _, table = cache_split(inference_run / "cache", "internal_test")
    affine = bundle.preprocessing.source_affine
    for k, pid in enumerate(table["participant_id"][:3]):
        anat = bids / f"sub-{pid}" / ("ses-1" if k else "") / "anat"
        anat.mkdir(parents=True)
        volume = np.load(subject_array(inference_run, pid))[0]
        stem = f"sub-{pid}{'_ses-1' if k else ''}_space-MNI152_label"
        write_like(anat / f"{stem}-GM_probseg.nii.gz", volume, affine)
        write_like(anat / f"{stem}-WM_probseg.nii.gz", 1 - volume, affine)
        (anat / f"{stem}-GM_probseg.json").write_text("{}")
    pd.DataFrame(
        {
            "participant_id": [f"sub-{p}" for p in table["participant_id"][:3]],
            "age": table["age"][:3],
            "sex": ["M", "F", "n/a"],
        }
    ).to_csv(bids / "participants.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"has 2 images matching \['probseg'\].*add an entity"):
        predict_brain_age(bundle, [bids], tmp_path / "pred.csv", select=["probseg"], progress=False)
    out = predict_brain_age(
        bundle, [bids], tmp_path / "pred.csv", select=["label-GM", "probseg"], progress=False, figure=False
    )
    assert out["participant_id"].tolist() == [f"sub-{p}" for p in table["participant_id"][:3]]
    assert out["session_id"].tolist() == ["", "ses-1", "ses-1"]
    assert out["sex"].tolist() == ["male", "female", ""]
    np.testing.assert_allclose(out["age"], table["age"][:3])
    arrays = predict_brain_age(
        bundle,
        [subject_array(inference_run, p) for p in table["participant_id"][:3]],
        tmp_path / "arrays.csv",
        progress=False,
        figure=False,
    )
    np.testing.assert_allclose(out["predicted_age"], arrays["predicted_age"], rtol=1e-6)


def test_tables_with_bad_rows_are_named(inference_run, bundle, tmp_path):
    path = subject_array(inference_run, cache_split(inference_run / "cache", "train")[1]["participant_id"][0])
    for content, message in [
        ("image,age\nx.nii,3\n", r"no 'path' column; columns are \['image', 'age'\]"),
        (f"path,age\n{path},ten\n", r"bad.csv, line 2: age 'ten' is not a number"),
        (f"path,age\n{path},130\n", r"bad.csv, line 2: age 130 is outside \[0, 120\] years"),
        (f"path,sex\n{path},x\n", r"bad.csv, line 2: sex 'x' is not one of"),
    ]:
        (tmp_path / "bad.csv").write_text(content)
        with pytest.raises(ValueError, match=message):
            predict_brain_age(bundle, [tmp_path / "bad.csv"], tmp_path / "pred.csv", progress=False)


def test_batches_workers_and_a_bundle_without_calibration(inference_run, bundle, tmp_path):
    _, table = cache_split(inference_run / "cache", "external_test")
    images = [subject_array(inference_run, p) for p in table["participant_id"]]
    one = predict_brain_age(bundle, images, tmp_path / "one.csv", batch_size=1, progress=False, figure=False)
    many = predict_brain_age(
        bundle, images, tmp_path / "many.csv", batch_size=4, workers=2, progress=False, figure=False
    )
    np.testing.assert_allclose(many["predicted_age"], one["predicted_age"], rtol=RIDGE_RTOL)
    uncalibrated = ModelBundle.load(inference_run / "bundle")
    uncalibrated.spec["calibration"] = {**uncalibrated.spec["calibration"], "slope": None, "intercept": None}
    out = predict_brain_age(uncalibrated, images, tmp_path / "none.csv", progress=False, figure=False)
    assert out["corrected_predicted_age"].isna().all()
    np.testing.assert_allclose(out["predicted_age"], one["predicted_age"], rtol=RIDGE_RTOL)


def test_command_line_export_and_predict(inference_run, tmp_path, capsys):
    _, table = cache_split(inference_run / "cache", "internal_test")
    images = [str(subject_array(inference_run, p)) for p in table["participant_id"][:4]]
    assert main(["export", "--run", str(inference_run / "run"), "--out", str(tmp_path / "bundle"), "--quiet"]) == 0
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "bundle"),
                "--images",
                *images,
                "--out",
                str(tmp_path / "a.csv"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(inference_run / "run"),
                "--images",
                *images,
                "--out",
                str(tmp_path / "b.csv"),
                "--no-figure",
                "--quiet",
            ]
        )
        == 0
    )
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    np.testing.assert_allclose(a["predicted_age"], b["predicted_age"], rtol=1e-9)
    assert (tmp_path / "a.png").is_file() and not (tmp_path / "b.png").exists()
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["command"].startswith(f"brainage predict --model {tmp_path / 'bundle'} --images {images[0]} ")
    shutil.copy(images[0], tmp_path / "sub-1_preproc-quasiraw_T1w.npy")
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "bundle"),
                "--images",
                str(tmp_path / "sub-1_preproc-quasiraw_T1w.npy"),
                "--out",
                str(tmp_path / "c.csv"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "an OpenBHB quasiraw array (by its name); the model expects vbm" in capsys.readouterr().err
