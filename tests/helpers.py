"""Helpers the test modules share: data written by hand in the real on-disk formats, tolerances,
and independent computations. Fixtures live in conftest.py.

Importing this module needs numpy and pandas only (the imaging stack, torch, PIL and
scikit-learn are imported by the helpers that use them), so the CUDA tests import it on a GPU
machine without nibabel. It caps OpenMP at one thread unless OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- OpenBHB folders


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
    import nibabel as nib

    rng = np.random.default_rng(seed)
    vbm_shape, vbm_affine = subsampled(VBM_SHAPE, VBM_AFFINE, factor)
    qr_shape, qr_affine = subsampled(QR_SHAPE, QR_AFFINE, factor)
    tpm = rng.uniform(0.0, 0.1, vbm_shape).astype(np.float32)
    tpm[0] = 0.0  # an all-outside slab, as real masks have background
    brain = (rng.uniform(size=qr_shape) > 0.4).astype(np.uint8)
    vbm_mask, qr_mask = tpm > 0.05, brain > 0

    splits = (["train"] * (n - n // 3 - n // 6)) + ["internal_test"] * (n // 3) + ["external_test"] * (n // 6)
    sites = [f"{s % 3}" if sp != "external_test" else "9" for s, sp in enumerate(splits)]
    table = pd.DataFrame(
        {
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
        }
    )
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
        rows = np.concatenate([vbm[:, vbm_mask], qr[:, qr_mask], np.zeros((n, other), np.float32)], axis=1)
        train = (table["split"] == "train").to_numpy()
        test_order = np.r_[
            np.flatnonzero(table["split"] == "internal_test"), np.flatnonzero(table["split"] == "external_test")
        ]
        np.save(kit / "train.npy", rows[train])
        np.save(kit / "test.npy", rows[test_order])
        table[train].drop(columns="split").to_csv(kit / "train.tsv", sep="\t", index=False)
        table.iloc[test_order].drop(columns="split").to_csv(kit / "test.tsv", sep="\t", index=False)
    return {
        "table": table,
        "vbm": vbm,
        "quasiraw": qr,
        "vbm_mask": vbm_mask,
        "quasiraw_mask": qr_mask,
        "vbm_affine": vbm_affine,
        "quasiraw_affine": qr_affine,
    }


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
            features[split] = model.features(
                torch.from_numpy(volumes.astype(np.float32))[:, None], "projection"
            ).numpy()
        ages[split] = table["age"].to_numpy(float)
    ridge = GridSearchCV(Ridge(), {"alpha": CHALLENGE_ALPHAS}, cv=5, scoring="r2").fit(features["train"], ages["train"])
    return {split: (ages[split], ridge.predict(features[split]).astype(float)) for split in features}


# --------------------------------------------------------------------------- training caches

GRID = (16, 16, 16)


def write_cache(
    root: Path, n=(24, 8, 6), grid=GRID, seed: int = 0, nan_row: int | None = None, signature: str = "test"
) -> Path:
    """A cache folder in the preprocessing format, written by hand: ages drive a smooth gradient."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(-1.0, 1.0, grid[0])[:, None, None]
    for split, k in zip(("train", "internal_test", "external_test"), n, strict=True):
        ages = np.round(rng.uniform(6, 80, k), 1)
        vol = rng.normal(0, 1, (k, *grid)) + ((ages - 40) / 20)[:, None, None, None] * ramp
        vol = vol.astype(np.float16)
        if nan_row is not None and split == "train":
            vol[nan_row, 3, 3, 3] = np.nan
        np.save(root / f"{split}.npy", vol)
        sites = [f"s{i % 3}" if split != "external_test" else "ext" for i in range(k)]
        lines = ["row\tparticipant_id\tage\tsite\tsiteXacq"]
        lines += [f"{i}\t{split[:3]}{i:03d}\t{ages[i]}\t{sites[i]}\t{sites[i]}x1" for i in range(k)]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (root / "cache.json").write_text(json.dumps({"shape": list(grid), "signature": signature}))
    return root


def tiny(method: str, **kw):
    """A training config of two short CPU epochs on a small network (tests only)."""
    from brainage.training import TrainConfig

    values = dict(
        method=method, epochs=2, batch_size=8, width=0.125, lr=1e-3, progress=False, device="cpu", num_threads=1
    )
    values.update(kw)
    return TrainConfig(**values)


# --------------------------------------------------------------------------- feature files

SITES = ["a", "b", "c", "d"]


def planted(rng, n, sites, site_strength=3.0, age_noise=1.0, n_noise=4, onehot_basis=SITES):
    """Features = [age + noise, site_strength * one-hot(site) + noise, pure noise] (float32)."""
    age = rng.uniform(6.0, 80.0, n)
    site = rng.choice(sites, n)
    onehot = (site[:, None] == np.asarray(onehot_basis)[None, :]).astype(float)
    x = np.c_[
        age + rng.normal(0.0, age_noise, n),
        site_strength * onehot + rng.normal(0.0, 1.0, (n, len(onehot_basis))),
        rng.normal(0.0, 1.0, (n, n_noise)),
    ]
    return x.astype(np.float32), age, site


def three_splits(seed=0, site_strength=3.0, n=(200, 120, 80)):
    rng = np.random.default_rng(seed)
    return (
        planted(rng, n[0], SITES, site_strength),
        planted(rng, n[1], SITES, site_strength),
        planted(rng, n[2], np.array(["x", "y"]), site_strength),
    )


def write_feature_dir(folder, seed=0, nan_row=None, one_site=False, head=True):
    """A features folder (``<split>.npz``) of :func:`three_splits`; ``head`` adds a prediction column."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, data in zip(("train", "internal_test", "external_test"), three_splits(seed=seed), strict=True):
        x, age, site = data
        if split == "train" and one_site:
            site = np.full(len(site), "a")
        if split == "internal_test" and nan_row is not None:
            x = x.copy()
            x[nan_row, 0] = np.inf
        arrays = dict(
            features=x,
            age=age,
            site=site.astype(str),
            participant_id=np.array([f"{split[:3]}{i:03d}" for i in range(len(age))]),
        )
        if head:
            arrays["prediction"] = age + 1.0
        np.savez(folder / f"{split}.npz", **arrays)
    return folder


# --------------------------------------------------------------------------- workflow


def job_counts(out: str) -> dict[str, int]:
    """The "Job stats" table of a dry run: {rule: count}, with "total"."""
    table = out.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    assert "total" in counts, out[:2000]
    return counts


# --------------------------------------------------------------------------- debiasing data sets


def write_idx(path, array: np.ndarray, code: int, compress: bool) -> None:
    """``array`` as an IDX file (big-endian, data type ``code``), gzipped when ``compress``."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def mnist_folder(folder, n_train=12, n_test=5, compress=False, seed=0):
    """Random MNIST-format IDX files (train / t10k images and labels) under ``folder``; returns what was written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        gz = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{gz}", x, 0x08, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{gz}", y, 0x08, compress)
        data[prefix] = (x, y)
    return data


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar10_folder(folder, train_per_class: int, test_per_class: int, seed: int = 0):
    """A complete ``cifar-10-batches-py`` folder: ``data_batch_1..5``, ``test_batch``,
    ``batches.meta``, in the format of the distributed pickles (protocol 2, bytes keys,
    rows of 1024 red, 1024 green, 1024 blue values). Returns the rows and labels written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    n_train = 10 * train_per_class
    if n_train % 5:
        raise ValueError("10 * train_per_class must split into five batches")
    train_labels = rng.permutation(np.repeat(np.arange(10), train_per_class))
    test_labels = rng.permutation(np.repeat(np.arange(10), test_per_class))
    per_batch = n_train // 5
    batches = [(f"data_batch_{i + 1}", train_labels[i * per_batch : (i + 1) * per_batch]) for i in range(5)]
    for name, labels in batches + [("test_batch", test_labels)]:
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        batch = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": [int(v) for v in labels],
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(labels.size)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        written[name] = (data, labels.astype(np.int64))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return written


def png(path, colour, size=8):
    """A size x size RGB PNG of one colour (0-255 grey or an RGB triple)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)
