"""Preprocessing into the training cache: block means, normalisation, both layouts, resume."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.cli import main
from brainage.data import preprocess as prep
from brainage.data.cache import TrainingCache
from brainage.data.openbhb import open_dataset


def test_block_mean_by_hand():
    vol = np.arange(3 * 2 * 2, dtype=np.float32).reshape(1, 3, 2, 2)
    out = prep.block_mean(vol, 2)
    assert out.shape == (1, 2, 1, 1)
    # first block: x in {0,1}: values 0..7 -> mean 3.5; edge block x=2: values 8..11 -> 9.5
    np.testing.assert_allclose(out[0, :, 0, 0], [3.5, 9.5])


def test_downsampled_affine_maps_block_centres():
    affine = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 1.5, -72], [0, 0, 0, 1]])
    new = prep.downsampled_affine(affine, 3)
    # block (1, 0, 2) covers source voxels x 3..5, y 0..2, z 6..8: centre (4, 1, 7)
    centre = affine @ np.array([4, 1, 7, 1.0])
    np.testing.assert_allclose(new @ np.array([1, 0, 2, 1.0]), centre)


def test_normalize_within_mask():
    rng = np.random.default_rng(0)
    vol = rng.normal(5, 2, (4, 5, 6)).astype(np.float32)
    mask = rng.uniform(size=vol.shape) > 0.5
    out = prep.normalize_volume(vol, mask)
    assert np.all(out[~mask] == 0)
    values = vol[mask].astype(np.float64)
    np.testing.assert_allclose(out[mask], (values - values.mean()) / values.std(), rtol=1e-5)
    assert np.all(prep.normalize_volume(np.ones_like(vol), mask) == 0)


def test_cache_from_both_layouts_agree(openbhb_dir, tmp_path):
    root, truth = openbhb_dir
    a = prep.preprocess(root, tmp_path / "a", downsample=2, progress=False)
    b = prep.preprocess(root / "ramp", tmp_path / "b", downsample=2, progress=False)
    assert a["shape"] == [8, 10, 8] and a["splits"] == b["splits"]
    ca, cb = TrainingCache(tmp_path / "a"), TrainingCache(tmp_path / "b")
    for split in ("train", "internal_test", "external_test"):
        sa, sb = ca.split(split), cb.split(split)
        assert sa.volumes.dtype == np.float16
        order = sb.table.set_index("participant_id").loc[sa.table["participant_id"], "row"].to_numpy()
        np.testing.assert_array_equal(np.asarray(sa.volumes), np.asarray(sb.volumes)[order])
        np.testing.assert_allclose(sa.ages, sb.ages[order])
    # one volume checked end to end against an independent computation
    table = truth["table"]
    j = int(np.flatnonzero(table["participant_id"] == ca.split("train").table["participant_id"][0])[0])
    src = np.where(truth["vbm_mask"], truth["vbm"][j], 0).astype(np.float64)
    padded = np.zeros((16, 20, 16))
    padded[:, :19] = src
    counts = np.zeros((16, 20, 16))
    counts[:, :19] = 1
    sums = padded.reshape(8, 2, 10, 2, 8, 2).sum(axis=(1, 3, 5))
    means = sums / counts.reshape(8, 2, 10, 2, 8, 2).sum(axis=(1, 3, 5))
    mask_frac = np.zeros((16, 20, 16))
    mask_frac[:, :19] = truth["vbm_mask"]
    mask = mask_frac.reshape(8, 2, 10, 2, 8, 2).sum(axis=(1, 3, 5)) / counts.reshape(8, 2, 10, 2, 8, 2).sum(axis=(1, 3, 5)) >= 0.5
    expected = np.zeros_like(means)
    expected[mask] = (means[mask] - means[mask].mean()) / means[mask].std()
    np.testing.assert_array_equal(ca.mask, mask)
    np.testing.assert_allclose(ca.split("train").volumes[0].astype(np.float64), expected, atol=4e-3)
    img = nib.load(tmp_path / "a" / "mask.nii.gz")
    np.testing.assert_allclose(img.affine, prep.downsampled_affine(truth["vbm_affine"], 2))


def test_resume_after_a_crash_equals_an_uninterrupted_run(openbhb_dir, tmp_path, monkeypatch):
    root, _ = openbhb_dir
    reference = prep.preprocess(root, tmp_path / "ref", chunk=2, progress=False)
    dataset = open_dataset(root)
    calls = {"n": 0}
    original = dataset.volume

    def crashing(i, modality="vbm"):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original(i, modality)

    monkeypatch.setattr(dataset, "volume", crashing)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prep.preprocess(dataset, out, chunk=2, progress=False)
    assert not (out / "train.npy").exists() and not (out / "cache.json").exists()
    state = json.loads((out / ".train.progress.json").read_text())
    assert state["done"] == 4
    monkeypatch.setattr(dataset, "volume", original)
    counted = {"n": 0}

    def counting(i, modality="vbm"):
        counted["n"] += 1
        return original(i, modality)

    monkeypatch.setattr(dataset, "volume", counting)
    meta = prep.preprocess(dataset, out, chunk=2, progress=False)
    assert counted["n"] == sum(meta["splits"].values()) - 4  # the 4 finished volumes were not redone
    for split in ("train", "internal_test", "external_test"):
        np.testing.assert_array_equal(np.load(out / f"{split}.npy"), np.load(tmp_path / "ref" / f"{split}.npy"))
    assert not list(out.glob(".*"))
    assert meta["signature"] == reference["signature"]


def test_cli_preprocess_and_errors(openbhb_dir, tmp_path, capsys):
    root, _ = openbhb_dir
    assert main(["preprocess", "--data", str(root), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "c" / "train.tsv", sep="\t")
    assert list(table["row"]) == list(range(len(table)))
    assert main(["preprocess", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "d")]) == 2
    assert "OpenBHB folder not found" in capsys.readouterr().err


def test_missing_cache_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished training cache"):
        TrainingCache(tmp_path)


def test_cache_reader_splits_are_the_openbhb_splits():
    from brainage.data import cache, openbhb

    assert cache.SPLITS == openbhb.SPLITS
