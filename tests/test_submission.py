"""Challenge submission: network copy, preprocessing, indices protocol, isolation, bad input.

A small OpenBHB folder (helpers.write_openbhb, grids / 4) is preprocessed at downsample 2, a tiny run is
trained for one epoch with the project's trainer, and the submission built from it is run on
RAMP rows of the same subjects.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import EPS32, QR_MASK_NAME, ROUNDING_MARGIN, U16, VBM_MASK_NAME, network_rounding, write_openbhb

from brainage.data.cache import TrainingCache
from brainage.data.preprocess import preprocess
from brainage.models import BrainAgeNet
from brainage.submission import SubmissionBuildError, build_submission, write_ramp_rows
from brainage.submission import ramp_estimator as est
from brainage.training import TrainConfig, train
from brainage.training.checkpoint import load_model

PYTHON = sys.executable
ALLOWED_IMPORTS = {"numpy", "scipy", "nibabel", "nilearn", "sklearn", "torch"}
# Values after the two voxel blocks of a RAMP row: xhemi, vbm_roi, desikan_roi, destrieux_roi.
TAIL = 8 * 163_842 + 284 + 476 + 1036


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("submission")
    truth = write_openbhb(root / "data", n=24, factor=4, seed=3)
    preprocess(root / "data", root / "cache", downsample=2, progress=False)
    config = TrainConfig(
        method="yaware", epochs=1, batch_size=8, width=0.125, lr=1e-3, device="cpu", progress=False, num_threads=1
    )
    train(config, root / "cache", root / "run")
    build_submission(root / "run", root / "sub")
    write_ramp_rows(root / "data", root / "ramp", modalities=["vbm", "quasiraw"])
    env = {
        "VBM_MASK": str(root / "ramp" / "resource" / VBM_MASK_NAME),
        "QUASIRAW_MASK": str(root / "ramp" / "resource" / QR_MASK_NAME),
    }
    return {"root": root, "truth": truth, "env": env}


@pytest.fixture
def masks_env(setup, monkeypatch):
    for k, v in setup["env"].items():
        monkeypatch.setenv(k, v)
    return setup


def fitted(folder: Path, **kw) -> est.BrainAgeFeatures:
    return est.BrainAgeFeatures(
        weights=str(folder / "weights.pth"), metadata=str(folder / "metadata.pkl"), device="cpu", **kw
    ).fit(None, None)


def rows(setup, part: str = "train") -> np.ndarray:
    return np.load(setup["root"] / "ramp" / f"{part}.npy", mmap_mode="r")


def train_order(setup) -> np.ndarray:
    """Indices into the truth arrays of the training subjects, in participants-table order."""
    return np.flatnonzero(setup["truth"]["table"]["split"].to_numpy() == "train")


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("head,kinds", [("projection", ("projection", "embedding")), ("regression", ("embedding",))])
def test_plain_network_matches_monai_network(head, kinds):
    torch.manual_seed(0)
    ref = BrainAgeNet(widen_factor=0.25, head=head)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    ref.eval()
    copy = est.BrainAgeNetwork(width=0.25, head=head)
    assert list(copy.state_dict()) == list(ref.state_dict())
    copy.load_state_dict(ref.state_dict(), strict=True)
    copy.eval()
    x = torch.randn(3, 1, 23, 29, 21)
    for kind in kinds:
        a, b = ref.features(x, kind), copy.features(x, kind)
        assert a.shape == b.shape
        # the same float32 operations, written twice: at most rounding apart
        atol = ROUNDING_MARGIN * network_rounding(ref, x, kind)
        torch.testing.assert_close(b, a, rtol=0, atol=atol)


# --------------------------------------------------------------------------- files


def test_submission_files(setup):
    sub = setup["root"] / "sub"
    assert sorted(p.name for p in sub.iterdir()) == ["estimator.py", "metadata.pkl", "weights.pth"]
    payload = torch.load(sub / "weights.pth", weights_only=True)
    model, _ = load_model(setup["root"] / "run" / "model.pt")
    assert set(payload) == {"model"}
    assert list(payload["model"]) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(payload["model"][key], value)

    meta = est.load_metadata(sub / "metadata.pkl")

    def plain(obj) -> bool:
        if isinstance(obj, dict):
            return all(isinstance(k, str) and plain(v) for k, v in obj.items())
        if isinstance(obj, list):
            return all(plain(v) for v in obj)
        return obj is None or type(obj) in (str, int, float, bool, bytes)

    assert plain(meta)
    assert meta["modality"] == "vbm" and meta["factor"] == 2 and meta["normalize"] == "zscore"
    assert meta["source_shape"] == [31, 37, 31] and meta["cache_shape"] == [16, 19, 16]
    assert meta["feature_kind"] == "projection" and meta["n_features"] == 128
    assert meta["network"]["width"] == 0.125 and meta["method"] == "yaware"
    assert meta["run"] == "run"  # the run folder's name, no local path sent to the server
    cache_mask = np.asarray(nib.load(setup["root"] / "cache" / "mask.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(est.unpack_mask(meta["cache_mask_bits"], meta["cache_shape"]), cache_mask)


def test_estimator_source_is_self_contained_and_passes_ramp_keyword_check(setup):
    from rampwf.utils.sanitize import _sanitize_input

    source = (setup["root"] / "sub" / "estimator.py").read_text()
    _sanitize_input(source)
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            assert top in ALLOWED_IMPORTS or top in stdlib or top == "__future__", name


# --------------------------------------------------------------------------- preprocessing and features


def test_network_inputs_equal_the_training_cache_and_an_independent_computation(masks_env):
    setup = masks_env
    step = fitted(setup["root"] / "sub")
    X = rows(setup)
    got = step.volumes(X, np.arange(X.shape[0]))
    cache = np.asarray(TrainingCache(setup["root"] / "cache").split("train").volumes)
    np.testing.assert_array_equal(got, cache.astype(np.float32))

    # independent: from the original volumes (not from RAMP rows), 2x2x2 block means with the
    # partial edge blocks averaged over the voxels they hold, z-score within the block mask
    truth = setup["truth"]
    vbm, mask = truth["vbm"], truth["vbm_mask"]
    padded_shape = (32, 38, 32)
    counts = np.zeros(padded_shape)
    counts[:31, :37, :31] = 1
    frac = np.zeros(padded_shape)
    frac[:31, :37, :31] = mask

    def blocks(a: np.ndarray) -> np.ndarray:
        return a.reshape(16, 2, 19, 2, 16, 2).sum(axis=(1, 3, 5))

    n = blocks(counts)
    block_mask = blocks(frac) / n >= 0.5
    assert len(train_order(setup)) == len(got) > 0
    for row, j in enumerate(train_order(setup)):
        values = np.zeros(padded_shape)
        values[:31, :37, :31] = np.where(mask, vbm[j].astype(np.float64), 0.0)
        means = blocks(values) / n
        expected = np.zeros_like(means)
        inside = means[block_mask]
        expected[block_mask] = (inside - inside.mean()) / inside.std()
        # the cache stores float16 (rounding <= U16 |z|) of a z-score whose float32 block means carry
        # a few EPS32 of the block values, |means| / std in z units
        atol = 16 * EPS32 * (np.abs(inside).max() / inside.std() + np.abs(expected).max())
        np.testing.assert_allclose(got[row], expected, rtol=U16, atol=atol)
        assert np.all(got[row][~block_mask] == 0)


def test_features_equal_the_project_network_on_the_cache(masks_env):
    setup = masks_env
    step = fitted(setup["root"] / "sub", batch_size=5)
    features = step.predict(rows(setup))
    assert features.dtype == np.float32 and features.shape == (len(train_order(setup)), 128)
    model, _ = load_model(setup["root"] / "run" / "model.pt")
    volumes = np.asarray(TrainingCache(setup["root"] / "cache").split("train").volumes, dtype=np.float32)
    expected = model.features(torch.from_numpy(volumes)[:, None], "projection").numpy()
    # the estimator's copy of the network over batches of 5: the same float32 function
    np.testing.assert_allclose(
        features, expected, rtol=0, atol=ROUNDING_MARGIN * network_rounding(model, volumes, "projection")
    )
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


class RecordingArray:
    """Array-like that records which rows ``__getitem__`` reads."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.rows: list[int] = []

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        self.rows += np.atleast_1d(np.arange(len(self.array))[first]).tolist()
        return self.array[key]


def test_indices_select_rows_in_order_and_only_those_are_read(masks_env, tmp_path):
    setup = masks_env
    pipeline = est.get_estimator()
    pipeline.set_params(
        features__weights=str(setup["root"] / "sub" / "weights.pth"),
        features__metadata=str(setup["root"] / "sub" / "metadata.pkl"),
        features__device="cpu",
        features__batch_size=3,
    )
    pipeline.fit(None, None)
    step = pipeline.named_steps["features"]
    assert step.indices is None
    X = rows(setup)
    full = pipeline.predict(X)
    # other rows in each batch of 3: the same float32 network, at most rounding apart
    model, _ = load_model(setup["root"] / "run" / "model.pt")
    volumes = TrainingCache(setup["root"] / "cache").split("train").volumes
    atol = ROUNDING_MARGIN * network_rounding(model, volumes, "projection")

    chosen = [9, 2, 11, 2, 5]
    recorder = RecordingArray(X)
    step.indices = np.asarray(chosen)
    part = pipeline.predict(recorder)
    np.testing.assert_allclose(part, full[chosen], rtol=0, atol=atol)
    assert set(recorder.rows) == set(chosen)

    step.indices = range(len(X))
    np.testing.assert_allclose(pipeline.predict(X), full, rtol=0, atol=atol)

    # every other row NaN: the chosen rows still give the same features
    poisoned = np.lib.format.open_memmap(tmp_path / "nan.npy", mode="w+", dtype=np.float32, shape=X.shape)
    poisoned[:] = np.nan
    poisoned[chosen] = X[chosen]
    poisoned.flush()
    step.indices = chosen
    np.testing.assert_allclose(
        pipeline.predict(np.load(tmp_path / "nan.npy", mmap_mode="r")), full[chosen], rtol=0, atol=atol
    )
    step.indices = [4]
    with pytest.raises(est.SubmissionError, match="row 4 holds NaN"):
        pipeline.predict(np.load(tmp_path / "nan.npy", mmap_mode="r"))
    step.indices = []
    assert pipeline.predict(X).shape == (0, 128)
    step.indices = [len(X)]
    with pytest.raises(est.SubmissionError, match="outside"):
        pipeline.predict(X)


@pytest.mark.slow
def test_estimator_runs_where_brainage_and_monai_cannot_be_imported(setup, tmp_path):
    chosen = [7, 0, 3]
    bootstrap = tmp_path / "bootstrap.py"
    bootstrap.write_text(
        textwrap.dedent(f"""
        import importlib.abc, importlib.util, os, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("brainage", "monai"):
                    raise ImportError("refused: " + name)

        sys.meta_path.insert(0, Refuse())
        for name in ("brainage", "monai", "monai.networks"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(name + " could be imported")
        import numpy as np
        os.environ["VBM_MASK"] = {setup["env"]["VBM_MASK"]!r}
        os.environ["QUASIRAW_MASK"] = {setup["env"]["QUASIRAW_MASK"]!r}
        spec = importlib.util.spec_from_file_location("estimator", {str(setup["root"] / "sub" / "estimator.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        pipeline = module.get_estimator().fit(None, None)
        for step in pipeline:
            if hasattr(step, "indices"):
                step.indices = {chosen!r}
        X = np.load({str(setup["root"] / "ramp" / "train.npy")!r}, mmap_mode="r")
        np.save({str(tmp_path / "out.npy")!r}, pipeline.predict(X))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("brainage", "monai"))
        print("loaded:", loaded)
    """)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VBM_MASK", "QUASIRAW_MASK")}
    proc = subprocess.run([PYTHON, "-I", str(bootstrap)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded: []" in proc.stdout
    for k, v in setup["env"].items():
        os.environ[k] = v
    try:
        expected = fitted(setup["root"] / "sub").predict(rows(setup))[chosen]
    finally:
        for k in setup["env"]:
            os.environ.pop(k, None)
    # another process (and batch) running the same float32 network: at most rounding apart
    model, _ = load_model(setup["root"] / "run" / "model.pt")
    volumes = TrainingCache(setup["root"] / "cache").split("train").volumes
    atol = ROUNDING_MARGIN * network_rounding(model, volumes, "projection")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=atol)


# --------------------------------------------------------------------------- bad input


def test_rows_of_the_wrong_length(masks_env):
    step = fitted(masks_env["root"] / "sub")
    X = np.zeros((2, step.row_length_ + 1), np.float32)
    with pytest.raises(
        est.SubmissionError, match=f"hold {step.row_length_ + 1} values.*RAMP row holds {step.row_length_}"
    ):
        step.predict(X)
    truth = masks_env["truth"]
    assert step.row_length_ == int(truth["vbm_mask"].sum()) + int(truth["quasiraw_mask"].sum()) + TAIL
    with pytest.raises(est.SubmissionError, match="2-D array"):
        step.predict(np.zeros(step.row_length_, np.float32))


@pytest.mark.parametrize("variable", ["VBM_MASK", "QUASIRAW_MASK"])
def test_masks_missing_from_the_environment(masks_env, monkeypatch, variable):
    monkeypatch.delenv(variable)
    with pytest.raises(est.SubmissionError, match=f"{variable} is not set"):
        fitted(masks_env["root"] / "sub")
    nowhere = masks_env["root"] / "nowhere.nii.gz"
    monkeypatch.setenv(variable, str(nowhere))
    with pytest.raises(est.SubmissionError, match=f"{variable}={re.escape(str(nowhere))}: no such mask image"):
        fitted(masks_env["root"] / "sub")


def test_a_mask_of_another_grid_or_shape(masks_env, monkeypatch, tmp_path):
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((121, 145, 121), np.float32), np.eye(4)), other)
    monkeypatch.setenv("VBM_MASK", str(other))
    with pytest.raises(
        est.SubmissionError,
        match=r"^VBM_MASK: the mask grid is \(121, 145, 121\).*trained on the vbm grid \(31, 37, 31\)",
    ):
        fitted(masks_env["root"] / "sub")
    same_grid = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((31, 37, 31), np.float32), np.eye(4)), same_grid)
    monkeypatch.setenv("VBM_MASK", str(same_grid))
    with pytest.raises(
        est.SubmissionError, match="^VBM_MASK: this mask, block-averaged by 2, does not give the training cache's mask"
    ):
        fitted(masks_env["root"] / "sub")


def test_weights_that_do_not_match_the_network(masks_env, tmp_path):
    sub = tmp_path / "sub"
    shutil.copytree(masks_env["root"] / "sub", sub)
    torch.save({"model": BrainAgeNet(widen_factor=0.25).state_dict()}, sub / "weights.pth")
    weights = re.escape(str(sub / "weights.pth"))
    with pytest.raises(est.SubmissionError, match=f"^{weights} does not match the network.*size mismatch"):
        fitted(sub)
    torch.save(BrainAgeNet(widen_factor=0.125).state_dict(), sub / "weights.pth")
    with pytest.raises(est.SubmissionError, match=f"^{weights}: .*under the key 'model'"):
        fitted(sub)
    (sub / "weights.pth").write_bytes(b"not a torch file")
    with pytest.raises(est.SubmissionError, match=f"^{weights}: not a readable torch"):
        fitted(sub)


def test_metadata_must_be_plain_and_within_the_feature_limit(masks_env, tmp_path):
    sub = tmp_path / "sub"
    shutil.copytree(masks_env["root"] / "sub", sub)
    meta = est.load_metadata(sub / "metadata.pkl")
    (sub / "metadata.pkl").write_bytes(pickle.dumps({**meta, "n_features": 10_001}))
    metadata = re.escape(str(sub / "metadata.pkl"))
    with pytest.raises(
        est.SubmissionError, match=f"^{metadata}: .*10001 features; the challenge accepts at most 10000"
    ):
        fitted(sub)
    (sub / "metadata.pkl").write_bytes(pickle.dumps({**meta, "extra": np.zeros(3)}))
    with pytest.raises(pickle.UnpicklingError, match=r"^metadata\.pkl refers to numpy\..*plain data only"):
        fitted(sub)


def test_builder_refuses_more_than_10000_features_and_harmonised_runs(setup, tmp_path):
    from brainage.data.cache import cache_identity
    from brainage.io import save_json
    from brainage.training.checkpoint import MODEL_FORMAT, VERSION, save_file

    config = TrainConfig(method="exp", projection_dim=10_001, width=0.125, epochs=1)
    save_file(
        tmp_path / "big" / "model.pt",
        {
            "format": MODEL_FORMAT,
            "version": VERSION,
            "epoch": 1,
            "config": config.to_dict(),
            "cache": cache_identity(setup["root"] / "cache"),
            "age_mean": 40.0,
            "age_std": 10.0,
            "model": BrainAgeNet(widen_factor=0.125, projection_dim=10_001).state_dict(),
        },
    )
    big_model = re.escape(str(tmp_path / "big" / "model.pt"))
    with pytest.raises(
        SubmissionBuildError,
        match=f"^{big_model}: projection features have 10001 dimensions; the challenge accepts at most 10000",
    ):
        build_submission(tmp_path / "big", tmp_path / "big_sub")
    assert not (tmp_path / "big_sub").exists()
    # the embedding of the same run is small enough
    build_submission(tmp_path / "big", tmp_path / "emb_sub", kind="embedding")
    assert est.load_metadata(tmp_path / "emb_sub" / "metadata.pkl")["n_features"] == 64

    harmonised = tmp_path / "cache_combat"
    shutil.copytree(setup["root"] / "cache", harmonised)
    meta = __import__("json").loads((harmonised / "cache.json").read_text())
    save_json(harmonised / "cache.json", {**meta, "harmonization": {"sites": ["0"]}})
    with pytest.raises(SubmissionBuildError, match=f"^{re.escape(str(harmonised))} is a ComBat-harmonised cache"):
        build_submission(setup["root"] / "run", tmp_path / "h_sub", cache=harmonised)
    assert not (tmp_path / "h_sub").exists()

    rebuilt = tmp_path / "cache_rebuilt"
    shutil.copytree(setup["root"] / "cache", rebuilt)
    volumes = np.load(rebuilt / "train.npy", mmap_mode="r+")
    volumes[0] = -volumes[0]
    volumes.flush()
    del volumes
    with pytest.raises(SubmissionBuildError, match=f"^{re.escape(str(rebuilt))}: not the cache the run was trained on"):
        build_submission(setup["root"] / "run", tmp_path / "r_sub", cache=rebuilt)


def test_builder_replaces_a_submission_but_not_other_folders(setup, tmp_path):
    target = tmp_path / "sub"
    build_submission(setup["root"] / "run", target)
    (target / "metadata.pkl").write_bytes(b"stale")
    build_submission(setup["root"] / "run", target)
    assert est.load_metadata(target / "metadata.pkl")["method"] == "yaware"
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=rf"^{re.escape(str(other))} holds other files \(\['todo\.txt'\]\)"):
        build_submission(setup["root"] / "run", other)
    assert (other / "todo.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- local RAMP kit


def test_kit_problem_enforces_the_feature_limit_and_the_indices_attribute():
    from brainage.data.openbhb import MODALITIES
    from brainage.submission import ramp_problem

    assert set(ramp_problem.MASK_FILES.values()) == {m.mask_file for m in MODALITIES.values()}

    class Step:
        def __init__(self, width: int, with_indices: bool = True) -> None:
            self.width = width
            if with_indices:
                self.indices = None
            self.seen = None

        def predict(self, X):
            self.seen = list(self.indices)
            return np.zeros((len(self.indices), self.width), np.float32)

    class Pipe(list):
        def predict(self, X):
            return self[-1].predict(X)

    X = np.zeros((6, 3), np.float32)
    ok = Pipe([Step(10_000)])
    assert ramp_problem.FrozenFeatures.features(ok, X, [4, 1]).shape == (2, 10_000)
    assert ok[0].seen == [4, 1] and ok[0].indices is None
    with pytest.raises(ValueError, match="10001 features per subject; at most 10000"):
        ramp_problem.FrozenFeatures.features(Pipe([Step(10_001)]), X, [0])
    with pytest.raises(ValueError, match="no step .* has an `indices` attribute"):
        ramp_problem.FrozenFeatures.features(Pipe([Step(3, with_indices=False)]), X, [0])


def test_kit_scores_by_hand():
    from brainage.submission.ramp_problem import split_scores

    # ages, site codes, external flag; internal rows 0-3, external rows 4-5
    y_true = np.array([[10, 0, 0], [20, 1, 0], [30, 1, 0], [40, 2, 0], [50, -1, 1], [60, -1, 1]], float)
    y_pred = np.array([[12, 0], [20, 1], [27, 0], [40, 2], [55, 1], [58, 2]], float)
    s = split_scores(y_true, y_pred)
    assert s["int_mae"] == pytest.approx((2 + 0 + 3 + 0) / 4)
    assert s["bacc"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert s["ext_mae"] == pytest.approx((5 + 2) / 2)
    assert s["challenge_score"] == pytest.approx(((2.5 / 3) ** 0.3) * 3.5)
    internal_only = split_scores(y_true[:4], y_pred[:4])
    assert np.isnan(internal_only["ext_mae"]) and np.isnan(internal_only["challenge_score"])


def test_ramp_kit_command_lays_out_a_kit(setup, tmp_path):
    from brainage.cli import main

    assert (
        main(
            [
                "ramp-kit",
                "--submission",
                str(setup["root"] / "sub"),
                "--data",
                str(setup["root"] / "data"),
                "--out",
                str(tmp_path / "kit"),
                "--name",
                "mine",
            ]
        )
        == 0
    )
    kit = tmp_path / "kit"
    assert (kit / "problem.py").read_text().startswith('"""Local RAMP kit')
    assert sorted(p.name for p in (kit / "submissions" / "mine").iterdir()) == [
        "estimator.py",
        "metadata.pkl",
        "weights.pth",
    ]
    assert (kit / VBM_MASK_NAME).is_file() and (kit / QR_MASK_NAME).is_file()
    train = np.load(kit / "data" / "train.npy", mmap_mode="r")
    table = (kit / "data" / "train.tsv").read_text().splitlines()
    assert train.shape == (
        len(table) - 1,
        est.TAIL_LENGTH + int(setup["truth"]["vbm_mask"].sum()) + int(setup["truth"]["quasiraw_mask"].sum()),
    )
    assert not (kit / "folds.json").exists()
