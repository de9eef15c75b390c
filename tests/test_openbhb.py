"""The OpenBHB reader: participants validation, masks, (un)masking, both layouts, bad input."""

from __future__ import annotations

import shutil
import tracemalloc
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import QR_AFFINE, QR_MASK_NAME, QR_SHAPE, VBM_AFFINE, VBM_MASK_NAME, VBM_SHAPE, subsampled, write_openbhb
from nilearn.masking import apply_mask, unmask

from brainage.data import openbhb
from brainage.data.openbhb import (
    OpenBHBError,
    PerSubjectLayout,
    RampLayout,
    load_participants,
    mask_volumes,
    open_dataset,
    ramp_row_slices,
    unmask_rows,
)

# --------------------------------------------------------------------------- participants


def _write_tsv(path, table):
    table.to_csv(path, sep="\t", index=False)
    return path


def test_participants_dtypes_and_values(openbhb_dir):
    root, truth = openbhb_dir
    table = load_participants(root / "participants.tsv")
    assert list(table["participant_id"]) == list(truth["table"]["participant_id"])
    assert table["participant_id"].map(type).eq(str).all()
    assert table["age"].dtype == np.float64
    np.testing.assert_allclose(table["age"], truth["table"]["age"])
    assert set(table["split"]) == {"train", "internal_test", "external_test"}
    assert set(table["sex"]) <= {"male", "female"}


def test_participant_ids_keep_leading_zeros(tmp_path):
    t = pd.DataFrame(
        {
            "participant_id": ["007", "010"],
            "sex": ["M", "F"],
            "age": [10, 20],
            "site": ["a", "b"],
            "split": ["train", "train"],
        }
    )
    table = load_participants(_write_tsv(tmp_path / "p.tsv", t))
    assert list(table["participant_id"]) == ["007", "010"]
    assert list(table["sex"]) == ["male", "female"]


@pytest.fixture
def good_table(openbhb_dir):
    return pd.read_csv(openbhb_dir[0] / "participants.tsv", sep="\t", dtype=str)


def test_missing_column_is_named(tmp_path, good_table):
    path = _write_tsv(tmp_path / "p.tsv", good_table.drop(columns="site"))
    with pytest.raises(OpenBHBError, match=r"p\.tsv.*missing required column.*'site'"):
        load_participants(path)


def test_misnamed_column_gets_a_hint(tmp_path, good_table):
    path = _write_tsv(tmp_path / "p.tsv", good_table.rename(columns={"age": "Age"}))
    with pytest.raises(OpenBHBError, match=r"'age' \(found 'Age': misnamed\?\)"):
        load_participants(path)


def test_unknown_split_names_value_and_line(tmp_path, good_table):
    good_table.loc[3, "split"] = "validation"
    path = _write_tsv(tmp_path / "p.tsv", good_table)
    with pytest.raises(OpenBHBError, match=r"line 5 .*unknown split value 'validation'"):
        load_participants(path)


def test_duplicate_ids(tmp_path, good_table):
    good_table.loc[4, "participant_id"] = good_table.loc[1, "participant_id"]
    path = _write_tsv(tmp_path / "p.tsv", good_table)
    with pytest.raises(OpenBHBError, match=r"duplicate participant_id '1001' on lines \[3, 6\]"):
        load_participants(path)


@pytest.mark.parametrize("age", ["-1", "121", "abc", ""])
def test_bad_ages(tmp_path, good_table, age):
    good_table.loc[2, "age"] = age
    path = _write_tsv(tmp_path / "p.tsv", good_table)
    with pytest.raises(OpenBHBError, match=r"line 4 \(participant '1002'\)"):
        load_participants(path)


def test_bad_sex_code(tmp_path, good_table):
    good_table.loc[0, "sex"] = "2"
    with pytest.raises(OpenBHBError, match=r"line 2 .*sex '2'"):
        load_participants(_write_tsv(tmp_path / "p.tsv", good_table))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="participants table not found"):
        load_participants("/nonexistent/participants.tsv")


# --------------------------------------------------------------------------- masking


def test_mask_volumes_matches_nilearn_order_and_round_trips(openbhb_dir):
    root, truth = openbhb_dir
    mask_path = root / "resource" / VBM_MASK_NAME
    vols = truth["vbm"][:3]
    rows = mask_volumes(vols, mask_path)
    # nilearn: images are (X, Y, Z, n); the TPM is thresholded at 0.05 as the challenge does.
    tpm = nib.load(mask_path)
    mask_img = nib.Nifti1Image((tpm.get_fdata() > 0.05).astype(np.uint8), tpm.affine)
    imgs = nib.Nifti1Image(np.moveaxis(vols, 0, -1), tpm.affine)
    np.testing.assert_array_equal(rows, apply_mask(imgs, mask_img))
    back = unmask_rows(rows, mask_path)
    expected = np.moveaxis(unmask(rows, mask_img).get_fdata(), -1, 0)
    np.testing.assert_array_equal(back, expected.astype(np.float32))
    np.testing.assert_array_equal(back, np.where(truth["vbm_mask"], vols, 0))
    np.testing.assert_array_equal(mask_volumes(back, mask_path), rows)


def test_tpm_threshold_follows_the_kit_in_float64(tmp_path, monkeypatch):
    """The kit builds the VBM mask as ``nib.load(path).get_fdata() > 0.05`` (float64 values).

    A float32 TPM stores 0.05 as float32(0.05) = 0.0500000007..., which is inside the kit's mask;
    comparing in float32 (float32(0.05) > float32(0.05)) would leave it out.
    """
    at = np.float32(0.05)
    assert float(at) > 0.05  # the premise, in float64
    values = np.zeros((6, 7, 5), np.float32)
    values[1, :, :] = at
    values[2, :, :] = np.nextafter(at, np.float32(0))  # 0.04999999..., outside for both rules
    values[3, :, :] = 0.5
    path = tmp_path / VBM_MASK_NAME
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    assert nib.load(path).get_data_dtype() == np.float32
    kit = nib.load(path).get_fdata() > 0.05  # the kit's own expression
    expected = np.zeros(values.shape, bool)
    expected[1] = expected[3] = True  # by hand
    np.testing.assert_array_equal(kit, expected)
    np.testing.assert_array_equal(openbhb.load_mask(path), expected)
    np.testing.assert_array_equal(openbhb.load_mask(path, threshold=0.05), expected)
    np.testing.assert_array_equal(openbhb.load_mask(values, threshold=0.05), expected)
    from brainage.submission import ramp_estimator

    monkeypatch.setenv("VBM_MASK", str(path))
    np.testing.assert_array_equal(ramp_estimator.read_mask("vbm"), expected)


def test_quasiraw_mask_threshold_is_zero(openbhb_dir):
    root, truth = openbhb_dir
    m = openbhb.load_mask(root / "resource" / QR_MASK_NAME)
    np.testing.assert_array_equal(m, truth["quasiraw_mask"])


def test_tpm_in_memory_or_renamed_warns_and_threshold_is_explicit(openbhb_dir, tmp_path):
    root, truth = openbhb_dir
    tpm = nib.load(root / "resource" / VBM_MASK_NAME)
    values = np.asarray(tpm.dataobj)
    in_memory = nib.Nifti1Image(values, tpm.affine)
    renamed = tmp_path / "my_grey_matter.nii.gz"
    shutil.copy(root / "resource" / VBM_MASK_NAME, renamed)
    for source, named in ((in_memory, "<in memory"), (renamed, "my_grey_matter")):
        with pytest.warns(UserWarning, match=rf"mask image \S*{named}.*not binary.*thresholding it at > 0"):
            inferred = openbhb.load_mask(source)
        np.testing.assert_array_equal(inferred, values > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(openbhb.load_mask(in_memory, threshold=0.05), truth["vbm_mask"])
        np.testing.assert_array_equal(openbhb.load_mask(renamed, 0.05), truth["vbm_mask"])
        # the file name of the release still selects 0.05, and a binary mask needs no warning
        np.testing.assert_array_equal(openbhb.load_mask(root / "resource" / VBM_MASK_NAME), truth["vbm_mask"])
        openbhb.load_mask(root / "resource" / QR_MASK_NAME)
        vols = truth["vbm"][:2]
        rows = mask_volumes(vols, in_memory, threshold=0.05)
        np.testing.assert_array_equal(rows, vols[:, truth["vbm_mask"]])
        back = unmask_rows(rows, renamed, threshold=0.05)
        np.testing.assert_array_equal(back, np.where(truth["vbm_mask"], vols, 0))


def test_threshold_of_a_numeric_array_must_be_given():
    tpm = np.array([0.0, 0.03, 0.07, 0.5]).reshape(1, 2, 2)
    with pytest.raises(OpenBHBError, match="pass a boolean array or give threshold="):
        openbhb.load_mask(tpm)
    assert openbhb.load_mask(tpm, 0.05).tolist() == [[[False, False], [True, True]]]
    assert unmask_rows(np.array([7.0, 9.0]), tpm, threshold=0.05).tolist() == [[[0.0, 0.0], [7.0, 9.0]]]


def test_unmask_preserves_orientation():
    mask = np.zeros((3, 4, 5), bool)
    mask[0, 1, 2] = mask[2, 3, 4] = mask[1, 0, 0] = True
    # C order over the mask: (0,1,2), (1,0,0), (2,3,4)
    vol = unmask_rows(np.array([10.0, 20.0, 30.0]), mask)
    assert vol[0, 1, 2] == 10 and vol[1, 0, 0] == 20 and vol[2, 3, 4] == 30 and vol.sum() == 60


def test_masking_shape_errors():
    mask = np.ones((2, 3, 4), bool)
    with pytest.raises(OpenBHBError, match=r"\(1, 3, 3, 4\) do not match the mask grid \(2, 3, 4\)"):
        mask_volumes(np.zeros((1, 3, 3, 4)), mask)
    with pytest.raises(OpenBHBError, match="selects 24 voxels"):
        unmask_rows(np.zeros((2, 23)), mask)


def test_ramp_row_slices_follow_the_kit():
    s = ramp_row_slices()
    sizes = {k: v.stop - v.start for k, v in s.items()}
    assert sizes == {
        "vbm": 519945,
        "quasiraw": 1827095,
        "xhemi": 1310736,
        "vbm_roi": 284,
        "desikan_roi": 476,
        "destrieux_roi": 1036,
    }
    assert list(s) == ["vbm", "quasiraw", "xhemi", "vbm_roi", "desikan_roi", "destrieux_roi"]
    assert s["vbm"].start == 0 and s["destrieux_roi"].stop == 3_659_572
    assert all(a.stop == b.start for a, b in zip(s.values(), list(s.values())[1:], strict=False))


# --------------------------------------------------------------------------- layouts


def test_both_layouts_give_the_same_volumes(openbhb_dir):
    root, truth = openbhb_dir
    per = open_dataset(root)
    kit = open_dataset(root / "ramp")
    assert isinstance(per, PerSubjectLayout) and isinstance(kit, RampLayout)
    per.validate("vbm")
    kit.validate("vbm")
    by_id = {pid: i for i, pid in enumerate(truth["table"]["participant_id"])}
    for i in range(len(kit)):
        rec = kit.participants.iloc[i]
        j = by_id[rec["participant_id"]]
        for mod in ("vbm", "quasiraw"):
            expected = np.where(truth[f"{mod}_mask"], truth[mod][j], 0)
            np.testing.assert_array_equal(kit.volume(i, mod), expected)
            np.testing.assert_array_equal(per.volume(j, mod)[truth[f"{mod}_mask"]], truth[mod][j][truth[f"{mod}_mask"]])
        assert rec["split"] == truth["table"]["split"][j]
    # internal rows come first in test.npy; external split inferred from unseen sites
    test_splits = list(kit.participants.query("ramp_part == 'test'")["split"])
    assert test_splits == sorted(test_splits, key=["internal_test", "external_test"].index)


def test_ramp_reads_through_memory_map(openbhb_dir):
    root, _ = openbhb_dir
    kit = RampLayout(root / "ramp", part="train")
    assert isinstance(kit.arrays["train"], np.memmap)
    assert isinstance(kit.row(0), np.memmap)


# Memory at the real VBM grid. The masks are ellipsoidal shells covering ~25 % of the grid, as
# the official masks do (519,945 of 121x145x121 voxels; 1,827,095 of 182x218x182).


def _shell_tpm(shape, inner=0.72):
    """A TPM-like map: 0.3 inside an ellipsoidal shell (inner..0.95 of the half-axes), 0.01 elsewhere."""
    axes = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    return np.where((r > inner) & (r < 0.95), 0.3, 0.01).astype(np.float32)


@pytest.fixture(scope="module")
def full_grid_dir(tmp_path_factory):
    """One subject at the real 121x145x121 VBM grid, per-subject and RAMP (quasi-raw at 1/4)."""
    root = tmp_path_factory.mktemp("fullgrid")
    vbm_shape, vbm_affine = VBM_SHAPE, VBM_AFFINE
    qr_shape, qr_affine = subsampled(QR_SHAPE, QR_AFFINE, 4)
    tpm = _shell_tpm(vbm_shape)
    brain = (_shell_tpm(qr_shape, inner=0.0) > 0.05).astype(np.uint8)
    vbm_mask, qr_mask = tpm > 0.05, brain > 0
    assert 0.2 < vbm_mask.mean() < 0.3  # a realistic density: official VBM mask 519,945 / 2,122,945 = 0.245
    rng = np.random.default_rng(3)
    vols = rng.normal(0.5, 0.2, (2,) + vbm_shape).astype(np.float32)
    table = pd.DataFrame(
        {
            "participant_id": ["1", "2"],
            "sex": ["M", "F"],
            "age": [30.0, 40.0],
            "site": ["a", "a"],
            "split": ["train", "train"],
        }
    )
    for folder in (root, root / "ramp"):
        (folder / "resource").mkdir(parents=True)
        nib.save(nib.Nifti1Image(tpm, vbm_affine), folder / "resource" / VBM_MASK_NAME)
        nib.save(nib.Nifti1Image(brain, qr_affine), folder / "resource" / QR_MASK_NAME)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    for i, pid in enumerate(table["participant_id"]):
        d = root / "train" / "derivatives" / f"sub-{pid}" / "ses-1"
        d.mkdir(parents=True)
        np.save(d / f"sub-{pid}_preproc-cat12vbm_desc-gm_T1w.npy", vols[i][None])
    rows = np.zeros((2, int(vbm_mask.sum()) + int(qr_mask.sum()) + 8 * 163_842 + 284 + 476 + 1036), np.float32)
    for i in range(2):
        rows[i, : vbm_mask.sum()] = vols[i][vbm_mask]
    np.save(root / "ramp" / "train.npy", rows)
    table.drop(columns="split").to_csv(root / "ramp" / "train.tsv", sep="\t", index=False)
    return root, vols, vbm_mask


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


@pytest.mark.parametrize("layout", ["per_subject", "ramp"])
def test_reading_a_volume_costs_one_volume(full_grid_dir, layout):
    root, vols, mask = full_grid_dir
    ds = PerSubjectLayout(root) if layout == "per_subject" else RampLayout(root / "ramp", part="train")
    ds.mask("vbm"), ds.mask("quasiraw")
    if layout == "ramp":
        ds.row_slices()
    one_volume = vols[1].nbytes  # 8.5 MB
    peak, vol = _peak_bytes(lambda: ds.volume(1, "vbm"))
    np.testing.assert_array_equal(vol[mask], vols[1][mask])
    # the volume itself plus at most 10 % of it (256 KB finiteness chunks, bookkeeping);
    # the code before measured 1.31x (per-subject) and 2.73x (RAMP) here
    assert peak < 1.1 * one_volume, peak / one_volume


def test_unmask_and_mask_use_no_memory_beyond_the_output(full_grid_dir):
    _, vols, mask = full_grid_dir
    rows = np.stack([v[mask] for v in vols])
    peak, back = _peak_bytes(lambda: unmask_rows(rows, mask))
    np.testing.assert_array_equal(back, np.where(mask, vols, 0))
    # the output (two volumes) and nothing else of a volume's size: indexing the 4-D output
    # with the 3-D mask (int64 index arrays) measured 1.74x the output here
    assert peak < 1.02 * back.nbytes, peak / back.nbytes
    peak, again = _peak_bytes(lambda: mask_volumes(vols, mask))
    np.testing.assert_array_equal(again, rows)
    # the output plus one row (a volume's masked voxels) of working memory
    assert peak < again.nbytes + 1.05 * rows[0].nbytes, peak / again.nbytes


def test_mask_paths_from_environment(openbhb_dir, tmp_path, monkeypatch):
    root, _ = openbhb_dir
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("train.npy", "train.tsv"):
        (kit / name).symlink_to(root / "ramp" / name)
    monkeypatch.setenv("VBM_MASK", str(root / "resource" / VBM_MASK_NAME))
    monkeypatch.setenv("QUASIRAW_MASK", str(root / "resource" / QR_MASK_NAME))
    ds = RampLayout(kit, part="train")
    assert ds.volume(0, "vbm").shape == (16, 19, 16)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def copy_dir(openbhb_dir, tmp_path):
    root, truth = openbhb_dir
    dst = tmp_path / "copy"
    shutil.copytree(root, dst, symlinks=False, ignore=shutil.ignore_patterns("ramp"))
    return dst, truth


def _subject_file(root, pid, split_folder="train", mod="cat12vbm_desc-gm_T1w"):
    return root / split_folder / "derivatives" / f"sub-{pid}" / "ses-1" / f"sub-{pid}_preproc-{mod}.npy"


def test_array_shape_mismatch(copy_dir):
    root, _ = copy_dir
    np.save(_subject_file(root, "1000"), np.zeros((1, 16, 19, 15), np.float32))
    with pytest.raises(
        OpenBHBError, match=r"sub-1000_preproc.*shape \(1, 16, 19, 15\) does not match the vbm mask grid"
    ):
        PerSubjectLayout(root).volume(0, "vbm")


def test_array_dtype_mismatch(copy_dir):
    root, _ = copy_dir
    np.save(_subject_file(root, "1000"), np.zeros((1, 16, 19, 16), np.int16))
    with pytest.raises(OpenBHBError, match=r"sub-1000_preproc.*dtype int16, expected a floating-point"):
        PerSubjectLayout(root).volume(0, "vbm")


def test_nan_voxels(copy_dir):
    root, truth = copy_dir
    vol = truth["vbm"][0].copy()
    vol[truth["vbm_mask"]] = np.where(np.arange(truth["vbm_mask"].sum()) == 5, np.nan, vol[truth["vbm_mask"]])
    np.save(_subject_file(root, "1000"), vol[None])
    x, y, z = np.argwhere(truth["vbm_mask"])[5]  # the 6th masked voxel in C order
    with pytest.raises(
        OpenBHBError, match=rf"sub-1000.*1 non-finite voxel.*first at voxel \(x, y, z\) = \({x}, {y}, {z}\)"
    ):
        PerSubjectLayout(root).volume(0, "vbm")


def test_inf_voxels_are_counted_inside_the_mask_only(copy_dir):
    root, truth = copy_dir
    mask = truth["vbm_mask"]
    inside = [tuple(int(v) for v in c) for c in np.argwhere(mask)]
    outside = tuple(int(v) for v in np.argwhere(~mask)[0])
    a, b = inside[len(inside) // 2], inside[len(inside) // 3]  # b comes first in C order
    vol = truth["vbm"][1].copy()
    vol[a], vol[b], vol[outside] = np.inf, -np.inf, np.nan  # a NaN outside the mask is not read
    np.save(_subject_file(root, "1001"), vol[None])
    with pytest.raises(
        OpenBHBError, match=rf"sub-1001.*: 2 non-finite .*first at voxel \(x, y, z\) = \({b[0]}, {b[1]}, {b[2]}\)"
    ):
        PerSubjectLayout(root).volume(1, "vbm")
    vol[a] = vol[b] = 0.5
    np.save(_subject_file(root, "1001"), vol[None])
    assert np.isnan(PerSubjectLayout(root).volume(1, "vbm")[outside])


def test_nan_in_a_ramp_row_names_row_and_voxel(tmp_path):
    truth = write_openbhb(tmp_path, n=6, ramp=True, per_subject=False)
    kit = tmp_path / "ramp"
    rows = np.load(kit / "train.npy")
    n_vbm = int(truth["vbm_mask"].sum())
    rows[1, 7] = np.nan  # vbm block, 8th masked voxel
    rows[1, n_vbm + 11] = np.inf  # quasiraw block, 12th masked voxel
    np.save(kit / "train.npy", rows)
    ds = RampLayout(kit, part="train")
    x, y, z = np.argwhere(truth["vbm_mask"])[7]
    with pytest.raises(OpenBHBError, match=rf"train\.npy, row 1 \(vbm\): 1 non-finite .*\({x}, {y}, {z}\)"):
        ds.volume(1, "vbm")
    x, y, z = np.argwhere(truth["quasiraw_mask"])[11]
    with pytest.raises(OpenBHBError, match=rf"train\.npy, row 1 \(quasiraw\): 1 non-finite .*\({x}, {y}, {z}\)"):
        ds.volume(1, "quasiraw")
    np.testing.assert_array_equal(ds.volume(0, "vbm")[truth["vbm_mask"]], rows[0, :n_vbm])


def test_truncated_npy(copy_dir):
    root, _ = copy_dir
    path = _subject_file(root, "1001")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(OpenBHBError, match=r"sub-1001.*truncated \.npy file"):
        PerSubjectLayout(root).volume(1, "vbm")


def test_mask_of_the_wrong_grid(copy_dir):
    root, _ = copy_dir
    path = root / "resource" / VBM_MASK_NAME
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.ones((16, 19, 17), np.float32), img.affine), path)
    with pytest.raises(OpenBHBError, match=r"grid \(16, 19, 17\) is not the OpenBHB vbm grid"):
        PerSubjectLayout(root).mask("vbm")


def test_mask_with_wrong_affine(copy_dir):
    root, _ = copy_dir
    path = root / "resource" / VBM_MASK_NAME
    img = nib.load(path)
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32), np.diag([2.0, 2, 2, 1])), path)
    with pytest.raises(OpenBHBError, match="matching affine"):
        PerSubjectLayout(root).mask("vbm")


def test_participant_without_array(copy_dir):
    root, _ = copy_dir
    _subject_file(root, "1002").unlink()
    with pytest.raises(OpenBHBError, match=r"1 participant\(s\) .* have no vbm array; first expected at .*sub-1002"):
        PerSubjectLayout(root).validate("vbm")


def test_array_without_participant(copy_dir):
    root, _ = copy_dir
    extra = _subject_file(root, "5555")
    extra.parent.mkdir(parents=True)
    np.save(extra, np.zeros((1, 16, 19, 16), np.float32))
    with pytest.raises(OpenBHBError, match=r"sub-5555.*has no participant"):
        PerSubjectLayout(root).validate("vbm")


def test_ramp_row_length_and_count(tmp_path):
    write_openbhb(tmp_path, n=6, ramp=True, per_subject=False)
    kit = tmp_path / "ramp"
    rows = np.load(kit / "train.npy")
    np.save(kit / "train.npy", rows[:, :-1])
    with pytest.raises(OpenBHBError, match=r"train\.npy: rows hold \d+ values but the masks select"):
        RampLayout(kit, part="train").volume(0)
    np.save(kit / "train.npy", rows[:-1])
    with pytest.raises(
        OpenBHBError, match=r"train\.npy: shape .* does not match .*train\.tsv.*participant without an array"
    ):
        RampLayout(kit, part="train")
    np.save(kit / "train.npy", np.concatenate([rows, rows[:1]]))
    n = len(rows)
    with pytest.raises(
        OpenBHBError,
        match=rf"train\.npy: shape \({n + 1}, \d+\) does not match .*train\.tsv \({n} rows\).*array row without a participant",
    ):
        RampLayout(kit, part="train")


def test_layout_detection_errors(tmp_path):
    with pytest.raises(OpenBHBError, match="neither layout found"):
        open_dataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "missing")
