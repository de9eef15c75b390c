"""Preprocessing into the training cache: block means, normalisation, both layouts, resume."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import EPS32, U16

from brainage.cli import main
from brainage.data import preprocess as prep
from brainage.data.cache import TrainingCache, open_split
from brainage.data.openbhb import OpenBHBError, open_dataset


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
    mask = (
        mask_frac.reshape(8, 2, 10, 2, 8, 2).sum(axis=(1, 3, 5)) / counts.reshape(8, 2, 10, 2, 8, 2).sum(axis=(1, 3, 5))
        >= 0.5
    )
    expected = np.zeros_like(means)
    expected[mask] = (means[mask] - means[mask].mean()) / means[mask].std()
    np.testing.assert_array_equal(ca.mask, mask)
    # float16 cache (rounding <= U16 |z|) of a z-score whose float32 block means carry a few EPS32 of
    # the block values, |means| / std in z units
    atol = 16 * EPS32 * (np.abs(means[mask]).max() / means[mask].std() + np.abs(expected).max())
    np.testing.assert_allclose(ca.split("train").volumes[0].astype(np.float64), expected, rtol=U16, atol=atol)
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
    assert f"OpenBHB folder not found: {tmp_path / 'nothing'}" in capsys.readouterr().err


def test_missing_cache_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished training cache"):
        TrainingCache(tmp_path)


class _Reader:
    """Wraps ``dataset.volume``: counts the calls per split and can fail on one participant."""

    def __init__(self, dataset, fail_on=None):
        # the class's method, not dataset.volume: that may be another _Reader already
        self.dataset, self.original, self.fail_on = dataset, type(dataset).volume.__get__(dataset), fail_on
        self.calls = {}

    def __call__(self, i, modality="vbm"):
        rec = self.dataset.participants.iloc[i]
        self.calls[rec["split"]] = self.calls.get(rec["split"], 0) + 1
        if rec["participant_id"] == self.fail_on:
            raise KeyboardInterrupt(f"killed at {self.fail_on}")
        return self.original(i, modality)


def _second_internal_id(dataset):
    return dataset.participants.query("split == 'internal_test'")["participant_id"].iloc[1]


def test_rerun_after_a_crash_in_a_later_split_keeps_the_finished_split(openbhb_dir, tmp_path, monkeypatch):
    root, _ = openbhb_dir
    prep.preprocess(root, tmp_path / "ref", chunk=1, progress=False)
    dataset = open_dataset(root)
    sizes = dataset.participants["split"].value_counts()
    out = tmp_path / "c"
    reader = _Reader(dataset, fail_on=_second_internal_id(dataset))
    monkeypatch.setattr(dataset, "volume", reader)
    with pytest.raises(KeyboardInterrupt):
        prep.preprocess(dataset, out, chunk=1, progress=False)
    assert reader.calls == {"train": sizes["train"], "internal_test": 2}
    assert (out / "train.signature.json").is_file() and not (out / "cache.json").exists()
    train_mtime = (out / "train.npy").stat().st_mtime_ns

    reader = _Reader(dataset)
    monkeypatch.setattr(dataset, "volume", reader)
    meta = prep.preprocess(dataset, out, chunk=1, progress=False)
    # train is not read again; internal_test resumes after its one finished volume
    assert reader.calls == {"internal_test": sizes["internal_test"] - 1, "external_test": sizes["external_test"]}
    assert (out / "train.npy").stat().st_mtime_ns == train_mtime
    for split in ("train", "internal_test", "external_test"):
        np.testing.assert_array_equal(np.load(out / f"{split}.npy"), np.load(tmp_path / "ref" / f"{split}.npy"))
        pd.testing.assert_frame_equal(
            pd.read_csv(out / f"{split}.tsv", sep="\t"), pd.read_csv(tmp_path / "ref" / f"{split}.tsv", sep="\t")
        )
    assert meta["split_signatures"] == json.loads((tmp_path / "ref" / "cache.json").read_text())["split_signatures"]

    # a finished cache is not recomputed; changed inputs (a touched source array) are
    reader.calls.clear()
    prep.preprocess(dataset, out, chunk=1, progress=False)
    assert reader.calls == {}
    first_external = dataset.participants.query("split == 'external_test'").index[0]
    path = dataset.path(int(first_external))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    prep.preprocess(dataset, out, chunk=1, progress=False)
    assert reader.calls == {"external_test": sizes["external_test"]}


def test_interrupted_rerun_with_other_parameters_leaves_no_finished_cache(openbhb_dir, tmp_path, monkeypatch):
    root, _ = openbhb_dir
    out = tmp_path / "c"
    zscore = prep.preprocess(root, out, chunk=1, progress=False)
    old_json = (out / "cache.json").read_text()
    dataset = open_dataset(root)
    monkeypatch.setattr(dataset, "volume", _Reader(dataset, fail_on=_second_internal_id(dataset)))
    with pytest.raises(KeyboardInterrupt):
        prep.preprocess(dataset, out, normalize="none", chunk=1, progress=False)
    # train was rewritten without normalisation, internal/external_test are still z-scored:
    # no cache.json, so nothing opens it as a cache
    assert not (out / "cache.json").exists()
    with pytest.raises(FileNotFoundError, match="not a finished training cache"):
        TrainingCache(out)
    # even with the old cache.json put back (as the code before this fix left it), the split
    # written by the other run is refused, by name
    (out / "cache.json").write_text(old_json)
    with pytest.raises(
        ValueError,
        match=r"the 'train' split \(signature \w+, train\.signature\.json\) was written "
        r"by another preprocessing run .*signature " + zscore["split_signatures"]["train"],
    ):
        open_split(out, "train")
    assert len(open_split(out, "external_test")) == zscore["splits"]["external_test"]


def test_rerun_of_one_split_with_other_parameters_refuses_the_stale_splits(openbhb_dir, tmp_path):
    root, _ = openbhb_dir
    out = tmp_path / "c"
    prep.preprocess(root, out, progress=False)
    meta = prep.preprocess(root, out, normalize="none", splits=["train"], progress=False)
    assert meta["splits"] == {"train": int((open_dataset(root).participants["split"] == "train").sum())}
    cache = TrainingCache(out)
    values = np.asarray(cache.split("train").volumes[0], np.float64)[cache.mask]
    assert values.mean() > 0.3  # raw intensities around 0.5, not z-scores
    with pytest.raises(ValueError, match=r"'internal_test' split .* cache\.json describes \(no 'internal_test' split"):
        cache.split("internal_test")
    # back to z-scores for train: the other splits' files match those parameters, so the cache
    # lists them again and they open
    meta = prep.preprocess(root, out, normalize="zscore", splits=["train"], progress=False)
    assert set(meta["splits"]) == {"train", "internal_test", "external_test"}
    assert len(TrainingCache(out).split("internal_test")) == meta["splits"]["internal_test"]


def test_float16_overflow_names_the_participant(openbhb_dir, tmp_path):
    root, truth = openbhb_dir
    data = tmp_path / "data"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns("ramp"))
    ds = open_dataset(data)
    j = int(np.flatnonzero(ds.participants["split"] == "internal_test")[0])
    pid = ds.participants["participant_id"][j]
    inside = tuple(np.argwhere(truth["vbm_mask"])[0])
    vol = truth["vbm"][j].copy()
    vol[inside] = 60000.0  # fits float16 (largest finite 65504)
    np.save(ds.path(j), vol[None])
    prep.preprocess(data, tmp_path / "ok", normalize="none", progress=False)
    split = open_split(tmp_path / "ok", "internal_test")
    row = int(np.flatnonzero(split.participant_id == pid)[0])
    assert float(split.volumes[row][inside]) == 60000.0
    vol[inside] = 70000.0
    np.save(ds.path(j), vol[None])
    with pytest.raises(
        OpenBHBError, match=rf"participant '{pid}' \(internal_test\): .*70000.*normalize='none'.*float16"
    ):
        prep.preprocess(data, tmp_path / "bad", normalize="none", progress=False)
