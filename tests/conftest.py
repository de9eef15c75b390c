"""Shared fixtures: small OpenBHB folders in the real on-disk formats, written by hand."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

# OpenBHB full-resolution grids and affines, written out here independently of the package.
VBM_SHAPE, QR_SHAPE = (121, 145, 121), (182, 218, 182)
VBM_AFFINE = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 1.5, -72], [0, 0, 0, 1]], float)
QR_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]], float)
VBM_MASK_NAME = "cat12vbm_space-MNI152_desc-gm_TPM.nii.gz"
QR_MASK_NAME = "quasiraw_space-MNI152_desc-brain_T1w.nii.gz"


def subsampled(shape, affine, factor):
    shape = tuple(int(np.ceil(n / factor)) for n in shape)
    return shape, affine @ np.diag([factor, factor, factor, 1.0])


def write_openbhb(
    root: Path,
    n: int = 12,
    factor: int = 8,
    seed: int = 0,
    ramp: bool = False,
    per_subject: bool = True,
) -> dict:
    """Write a tiny OpenBHB folder; returns the ground truth used to write it.

    Per-subject layout under ``root`` and, when ``ramp``, the RAMP kit under ``root/ramp``.
    Volumes are float32 random fields; masks: a TPM-like map with values around the 0.05
    threshold (vbm) and a binary brain mask (quasiraw).
    """
    rng = np.random.default_rng(seed)
    vbm_shape, vbm_affine = subsampled(VBM_SHAPE, VBM_AFFINE, factor)
    qr_shape, qr_affine = subsampled(QR_SHAPE, QR_AFFINE, factor)
    tpm = rng.uniform(0.0, 0.1, vbm_shape).astype(np.float32)
    tpm[0] = 0.0  # an all-outside slab, as real masks have background
    brain = (rng.uniform(size=qr_shape) > 0.4).astype(np.uint8)
    vbm_mask, qr_mask = tpm > 0.05, brain > 0

    splits = (["train"] * (n - n // 3 - n // 6)) + ["internal_test"] * (n // 3) + ["external_test"] * (n // 6)
    sites = [f"{s % 3}" if sp != "external_test" else "9" for s, sp in enumerate(splits)]
    table = pd.DataFrame({
        "participant_id": [f"{1000 + i}" for i in range(n)],
        "study": ["ABIDE1"] * n,
        "sex": rng.choice(["male", "female"], n),
        "age": np.round(rng.uniform(6, 80, n), 1),
        "site": sites,
        "diagnosis": ["control"] * n,
        "tiv": rng.uniform(1200, 1700, n).round(1),
        "csfv": rng.uniform(200, 400, n).round(1),
        "gmv": rng.uniform(500, 800, n).round(1),
        "wmv": rng.uniform(400, 600, n).round(1),
        "magnetic_field_strength": ["3"] * n,
        "acquisition_setting": ["1"] * n,
        "siteXacq": sites,
        "split": splits,
    })
    vbm = rng.normal(0.5, 0.2, (n,) + vbm_shape).astype(np.float32)
    qr = rng.normal(100, 20, (n,) + qr_shape).astype(np.float32)

    res = root / "resource"
    res.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(tpm, vbm_affine), res / VBM_MASK_NAME)
    nib.save(nib.Nifti1Image(brain, qr_affine), res / QR_MASK_NAME)
    if per_subject:
        table.to_csv(root / "participants.tsv", sep="\t", index=False)
        for i, row in table.iterrows():
            folder = "train" if row["split"] == "train" else "val"
            d = root / folder / "derivatives" / f"sub-{row['participant_id']}" / "ses-1"
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / f"sub-{row['participant_id']}_preproc-cat12vbm_desc-gm_T1w.npy", vbm[i][None])
            np.save(d / f"sub-{row['participant_id']}_preproc-quasiraw_T1w.npy", qr[i][None])
    if ramp:
        kit = root / "ramp"
        (kit / "resource").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(tpm, vbm_affine), kit / "resource" / VBM_MASK_NAME)
        nib.save(nib.Nifti1Image(brain, qr_affine), kit / "resource" / QR_MASK_NAME)
        other = 8 * 163_842 + 284 + 476 + 1036
        rows = np.concatenate(
            [vbm[:, vbm_mask], qr[:, qr_mask], np.zeros((n, other), np.float32)], axis=1
        )
        train = (table["split"] == "train").to_numpy()
        test_order = np.r_[np.flatnonzero(table["split"] == "internal_test"),
                           np.flatnonzero(table["split"] == "external_test")]
        np.save(kit / "train.npy", rows[train])
        np.save(kit / "test.npy", rows[test_order])
        table[train].drop(columns="split").to_csv(kit / "train.tsv", sep="\t", index=False)
        table.iloc[test_order].drop(columns="split").to_csv(kit / "test.tsv", sep="\t", index=False)
    return {"table": table, "vbm": vbm, "quasiraw": qr, "vbm_mask": vbm_mask, "quasiraw_mask": qr_mask,
            "vbm_affine": vbm_affine, "quasiraw_affine": qr_affine}


# --------------------------------------------------------------------------- float tolerances
# Two code paths that compute the same float32 function (another batch composition, memory
# layout, process split or implementation of the same operations) differ only by rounding, and
# by how much depends on the CPU: SIMD width, oneDNN/BLAS blocking and the thread count set the
# order of every sum. Each path lies within E of the exact result, E being the float32 rounding
# error of the computation, which a test measures where it runs as |float32 - float64| of the
# same computation on the same inputs. Two paths then differ by at most about 2E; the margin
# leaves another factor 4 for the variation of E between summation orders.
ROUNDING_MARGIN = 8.0
EPS32 = float(np.finfo(np.float32).eps)  # 2^-23
U16 = 2.0**-11  # unit roundoff of float16: |fl16(x) - x| <= U16 * |x| (round to nearest)


def rounding_error(float32_result, float64_result) -> float:
    """max |float32 - float64| of one computation, at least float32 epsilon times its largest value."""
    low = np.asarray(float32_result, dtype=np.float64)
    exact = np.asarray(float64_result, dtype=np.float64)
    return max(float(np.abs(low - exact).max()), EPS32 * float(np.abs(exact).max()))


def network_rounding(model, volumes, kind: str | None = None) -> float:
    """:func:`rounding_error` of a network's forward pass (eval mode) on ``volumes`` (n, [1,] X, Y, Z).

    Outputs are ``model.features(x, kind)``, or ``model(x)`` without ``kind``; the float64
    reference runs a double copy of ``model``.
    """
    import copy

    import torch

    x = torch.as_tensor(np.asarray(volumes, dtype=np.float32))
    x = x[:, None] if x.ndim == 4 else x
    exact_model = copy.deepcopy(model).double().eval()
    model.eval()
    with torch.no_grad():
        if kind is None:
            low, exact = model(x), exact_model(x.double())
        else:
            low, exact = model.features(x, kind), exact_model.features(x.double(), kind)
    return rounding_error(low.numpy(), exact.numpy())


@pytest.fixture(scope="session")
def openbhb_dir(tmp_path_factory):
    """A read-only tiny OpenBHB folder in both layouts (copy it before corrupting it)."""
    root = tmp_path_factory.mktemp("openbhb")
    truth = write_openbhb(root, ramp=True)
    return root, truth


@pytest.fixture(scope="session")
def inference_run(tmp_path_factory):
    """A simulated data set (VBM grid / 4), its cache, a short L^exp run, a 1-epoch L1 run, the exp bundle.

    Shared by the export and predict tests (about 25 s on 2 cores). Five sites put the lifespan site
    in training (ages 6 to 86; with four it is the external one and training ages span 8 to 30),
    and 10 epochs of 8 subjects give predictions that follow age on every seed tried (internal
    slope 0.24 to 0.44 over seeds 0-3; 4 epochs of 16 gave 0.00 to 0.27), which the age-bias
    calibration needs.
    """
    from brainage.data.preprocess import preprocess
    from brainage.data.simulate import simulate_openbhb
    from brainage.inference import export_bundle
    from brainage.training import TrainConfig, train

    root = tmp_path_factory.mktemp("inference")
    simulate_openbhb(root / "data", n_subjects=100, downsample=4, seed=7, n_sites=5, modalities="vbm",
                     internal_fraction=0.25, n_jobs=2, progress=False)
    preprocess(root / "data", root / "cache", progress=False)
    short = dict(batch_size=8, width=0.125, lr=2e-3, schedule="cosine", device="cpu", progress=False, num_threads=1)
    train(TrainConfig(method="exp", epochs=10, **short), root / "cache", root / "run")
    train(TrainConfig(method="l1", epochs=1, **short), root / "cache", root / "run_l1")
    export_bundle(root / "run", root / "bundle", progress=False)
    return root


# The challenge's Ridge grid, written out from its description: GridSearchCV(Ridge(), alpha in 10 ** [-2, 2], cv=5, r2).
CHALLENGE_ALPHAS = 10.0 ** np.arange(-2, 3)


def cache_split(cache: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """A cache split read with numpy and pandas: (n, X, Y, Z) float16 volumes and its table."""
    table = pd.read_csv(cache / f"{split}.tsv", sep="\t", dtype={"participant_id": str, "site": str, "siteXacq": str})
    return np.load(cache / f"{split}.npy"), table


def reference_ages(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (true ages, predicted ages)}`` of the exp run, computed without brainage.inference.

    The run's network (``model.pt``) on the cache volumes, its L2-normalised projection, and the
    challenge's Ridge probe fitted here with scikit-learn on the training subjects.
    """
    import torch
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    from brainage.training import load_model

    model, _ = load_model(root / "run" / "model.pt")
    features, ages = {}, {}
    for split in ("train", "internal_test", "external_test"):
        volumes, table = cache_split(root / "cache", split)
        with torch.no_grad():
            features[split] = model.features(torch.from_numpy(volumes.astype(np.float32))[:, None], "projection").numpy()
        ages[split] = table["age"].to_numpy(float)
    ridge = GridSearchCV(Ridge(), {"alpha": CHALLENGE_ALPHAS}, cv=5, scoring="r2").fit(features["train"], ages["train"])
    return {split: (ages[split], ridge.predict(features[split]).astype(float)) for split in features}
