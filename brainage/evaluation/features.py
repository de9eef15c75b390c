"""Reading the per-split feature files written by feature extraction.

Each split is an ``.npz`` holding ``features`` (n, p) float, ``age`` (n,) years, ``site`` (n,)
str (siteXacq labels), ``participant_id`` (n,) str, optionally ``sex`` (n,) str and, for models
with a regression head, ``prediction`` (n,) years.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainage.data.cache import SPLITS
from brainage.data.npfiles import read_npz
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.evaluation.protocol import check_features

__all__ = ["FeatureSplit", "load_split", "load_feature_dir"]


@dataclass
class FeatureSplit:
    """One split of frozen features.

    Attributes:
        features: (n, p) array, dtype as stored.
        age: (n,) float ages in years.
        site: (n,) str site labels, or None when the file has none.
        participant_id: (n,) str.
        prediction: (n,) network regression-head output in years, or None.
        sex: (n,) str sex labels, or None when the file has none (or some are missing).
    """

    name: str
    path: Path
    features: np.ndarray
    age: np.ndarray
    site: np.ndarray | None
    participant_id: np.ndarray
    prediction: np.ndarray | None = None
    sex: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def triple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return self.features, self.age, self.site


def load_split(path: str | os.PathLike, name: str | None = None) -> FeatureSplit:
    """Load and validate one feature file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable npz, a missing key, mismatched lengths, NaN/inf features or
            ages (the file, row and participant are named).
    """
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise InputNotFoundError(f"feature file {path} not found")
    arrays = read_npz(path, "features (n, p), age (n,) and optionally site, participant_id, sex, prediction")
    missing = [k for k in ("features", "age") if k not in arrays]
    if missing:
        raise BrainAgeError(f"{path}: missing array(s) {missing}; found {sorted(arrays)}")
    n = arrays["features"].shape[0] if arrays["features"].ndim else 0
    ids = arrays.get("participant_id")
    ids = np.asarray(ids).astype(str) if ids is not None else np.array([f"{name}-{i}" for i in range(n)])
    x, y, s = check_features(arrays["features"], arrays["age"], arrays.get("site"), name=str(path), ids=list(ids))
    pred = arrays.get("prediction")
    if pred is not None:
        pred = np.asarray(pred, dtype=float).ravel()
        if pred.shape[0] != len(y):
            raise BrainAgeError(f"{path}: {len(y)} feature rows but {pred.shape[0]} predictions")
        if not np.isfinite(pred).all():
            row = int(np.flatnonzero(~np.isfinite(pred))[0])
            raise BrainAgeError(f"{path}: prediction is NaN or inf at row {row} (participant {ids[row]})")
    sex = arrays.get("sex")
    if sex is not None:
        sex = np.asarray(sex).astype(str).ravel()
        if sex.shape[0] != len(y):
            raise BrainAgeError(f"{path}: {len(y)} feature rows but {sex.shape[0]} sex labels")
        if np.isin(np.char.lower(np.char.strip(sex)), ["", "nan", "n/a", "na"]).any():
            sex = None  # the sex probe needs every label
    return FeatureSplit(name=name, path=path, features=x, age=y, site=s, participant_id=ids, prediction=pred, sex=sex)


def load_feature_dir(folder: str | os.PathLike) -> dict[str, FeatureSplit]:
    """Load ``train.npz``, ``internal_test.npz`` and ``external_test.npz`` from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f"feature folder {folder} not found")
    absent = [s for s in SPLITS if not (folder / f"{s}.npz").is_file()]
    if absent:
        raise InputNotFoundError(
            f"{folder}: missing feature file(s) {[f'{s}.npz' for s in absent]} (expected {list(SPLITS)})"
        )
    return {s: load_split(folder / f"{s}.npz", name=s) for s in SPLITS}
