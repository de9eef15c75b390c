"""Local RAMP kit of the OpenBHB brain-age challenge, as written by ``brainage ramp-kit``.

Run a submission the way the challenge server does, on your own RAMP-layout data::

    ramp-test --submission <name> --quick-test

Kit folder layout (next to this file):

- ``data/train.npy``, ``data/test.npy``: (n, row length) float32 RAMP rows, memory-mapped;
  ``data/train.tsv``, ``data/test.tsv``: participants in row order (``age``, ``siteXacq`` or
  ``site``; ``split`` in test.tsv, else a test subject is internal when its site is in train);
- the two mask images, passed to the submission in ``VBM_MASK`` and ``QUASIRAW_MASK``;
- ``submissions/<name>/``: ``estimator.py``, ``weights.pth``, ``metadata.pkl``;
- optional ``folds.json``: ``{"fold name": {"train": [row, ...], "valid": [row, ...]}}`` over
  train.npy rows; without it one fold trains the probes on every train row, in file order,
  and the valid step re-scores those rows.

Per fold, as on the server: the estimator module is imported (with RAMP's keyword check),
``get_estimator()``, ``fit(None, None)``; every pipeline step with an ``indices`` attribute gets
the fold's train rows before ``predict(train.npy)`` and None after; the features (at most
10,000 columns) train the age probe (Ridge, alpha in 10^-2..10^2, 5-fold, R^2) and the site
probe (saga LogisticRegression, 150 iterations, C in 10^-2..10^2, 5-fold, balanced accuracy);
then ``indices = range(len(X))`` for ``predict`` on train.npy (train/valid steps) and test.npy.

Scores: ``challenge_score`` = BAcc^0.3 x Ext. MAE (BAcc a fraction; the L_c of the OpenBHB
papers, lower is better), ``int_mae``, ``bacc`` (site probe, internal rows), ``ext_mae``
(external rows), ``int_rmse``. Train and valid rows are all internal, so their
``ext_mae`` and ``challenge_score`` are NaN. Differences from the server: saga's sampling is
seeded (``BRAINAGE_PROBE_SEED``, default 0; -1 leaves it to NumPy's global state as the server
does), grid searches run on one core, and ``--quick-test`` does not swap in random data (the
kit's data are already small). The leaderboard column of the server kit, "challenge_metric",
is computed differently (Ext. MAE x BAcc + Int. MAE / n_sites); it is not reported here.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import rampwf as rw
from rampwf.prediction_types.base import BasePrediction
from rampwf.utils.importing import import_module_from_source
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV

KIT = Path(__file__).resolve().parent
MAX_FEATURES = 10_000
MASK_FILES = {
    "VBM_MASK": "cat12vbm_space-MNI152_desc-gm_TPM.nii.gz",
    "QUASIRAW_MASK": "quasiraw_space-MNI152_desc-brain_T1w.nii.gz",
}
GRID = 10.0 ** np.arange(-2, 3)

problem_title = "Brain age prediction with site-effect removal (OpenBHB), local check"


# --------------------------------------------------------------------------- data


def _site_column(table: pd.DataFrame) -> str:
    return "siteXacq" if "siteXacq" in table.columns else "site"


def _tables(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = Path(path) / "data"
    train = pd.read_csv(data / "train.tsv", sep="\t", dtype={"siteXacq": str, "site": str})
    test = pd.read_csv(data / "test.tsv", sep="\t", dtype={"siteXacq": str, "site": str})
    return train, test


def _targets(table: pd.DataFrame, codes: dict, external: np.ndarray) -> np.ndarray:
    """(n, 3) float: age (years), site code (-1 for external rows), 1.0 on external rows."""
    sites = table[_site_column(table)].astype(str)
    code = np.array([codes.get(s, -1) if not ext else -1 for s, ext in zip(sites, external)], dtype=float)  # noqa: B905 (runs in the kit)
    return np.column_stack([table["age"].to_numpy(dtype=float), code, external.astype(float)])


def _site_codes(train: pd.DataFrame, test: pd.DataFrame, external: np.ndarray) -> dict:
    """Site label -> integer, in sorted label order (training sites first, then unseen internal ones)."""
    seen = sorted(set(train[_site_column(train)].astype(str)))
    other = sorted(set(test.loc[~external, _site_column(test)].astype(str)) - set(seen))
    return {s: i for i, s in enumerate(seen + other)}


def _external(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    if "split" in test.columns:
        return (test["split"] == "external_test").to_numpy()
    seen = set(train[_site_column(train)].astype(str))
    return ~test[_site_column(test)].astype(str).isin(seen).to_numpy()


def _read(path: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    train, test = _tables(path)
    external = _external(train, test)
    codes = _site_codes(train, test, external)
    table = train if part == "train" else test
    flags = np.zeros(len(train), bool) if part == "train" else external
    X = np.load(Path(path) / "data" / f"{part}.npy", mmap_mode="r")
    if X.ndim != 2 or X.shape[0] != len(table):
        raise ValueError(f"data/{part}.npy has shape {X.shape}, data/{part}.tsv {len(table)} rows")
    return X, _targets(table, codes, flags)


def get_train_data(path: str = ".") -> tuple[np.ndarray, np.ndarray]:
    return _read(path, "train")


def get_test_data(path: str = ".") -> tuple[np.ndarray, np.ndarray]:
    return _read(path, "test")


def get_cv(X: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    spec = KIT / "folds.json"
    if not spec.is_file():
        rows = np.arange(len(X))
        return [(rows, rows)]
    folds = []
    for name, fold in json.loads(spec.read_text()).items():
        train, valid = np.asarray(fold["train"], dtype=int), np.asarray(fold["valid"], dtype=int)
        if train.size == 0 or valid.size == 0 or train.min() < 0 or max(train.max(), valid.max()) >= len(X):
            raise ValueError(f"folds.json: fold {name!r} needs non-empty train and valid rows within 0..{len(X) - 1}")
        folds.append((train, valid))
    return folds


# --------------------------------------------------------------------------- predictions


class Predictions(BasePrediction):
    """Predicted (age, site code) per row; the ground truth adds an external-row flag."""

    n_columns = 2
    n_columns_true = 3

    def __init__(self, y_pred=None, y_true=None, n_samples=None, fold_is=None):
        if y_pred is not None:
            values = np.asarray(y_pred, dtype=float)
        elif y_true is not None:
            values = np.asarray(y_true, dtype=float)
        elif n_samples is not None:
            values = np.full((n_samples, self.n_columns), np.nan)
        else:
            raise ValueError("Predictions needs y_pred, y_true or n_samples")
        self.y_pred = values if fold_is is None else values[fold_is]

    @classmethod
    def combine(cls, predictions_list, index_list=None):
        """Mean predicted age; most frequent predicted site (NaN where no fold predicted)."""
        chosen = range(len(predictions_list)) if index_list is None else index_list
        stack = np.stack([predictions_list[i].y_pred for i in chosen])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            age = np.nanmean(stack[:, :, 0], axis=0)
        site = np.full(stack.shape[1], np.nan)
        for j in range(stack.shape[1]):
            votes = stack[:, j, 1][~np.isnan(stack[:, j, 1])]
            if votes.size:
                values, counts = np.unique(votes, return_counts=True)
                site[j] = values[np.argmax(counts)]
        return cls(y_pred=np.column_stack([age, site]))


# --------------------------------------------------------------------------- scores


def split_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Challenge scores of one step: internal rows give Int. MAE and BAcc, external rows Ext. MAE."""
    external = y_true[:, 2] > 0.5
    internal = ~external
    nan = float("nan")
    scores = {"int_mae": nan, "int_rmse": nan, "bacc": nan, "ext_mae": nan, "challenge_score": nan}
    if internal.any():
        error = y_pred[internal, 0] - y_true[internal, 0]
        scores["int_mae"] = float(np.mean(np.abs(error)))
        scores["int_rmse"] = float(np.sqrt(np.mean(error**2)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            scores["bacc"] = float(
                balanced_accuracy_score(y_true[internal, 1].astype(int), y_pred[internal, 1].astype(int))
            )
    if external.any():
        scores["ext_mae"] = float(np.mean(np.abs(y_pred[external, 0] - y_true[external, 0])))
        scores["challenge_score"] = scores["bacc"] ** 0.3 * scores["ext_mae"]
    return scores


class ChallengeScore(rw.score_types.BaseScoreType):
    """One entry of :func:`split_scores` as a RAMP score type."""

    minimum = 0.0

    def __init__(self, name: str, lower_is_better: bool = True, maximum: float = float("inf"), precision: int = 6):
        self.name = name
        self.is_lower_the_better = lower_is_better
        self.maximum = maximum
        self.precision = precision

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return split_scores(np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float))[self.name]


score_types = [
    ChallengeScore("challenge_score"),
    ChallengeScore("int_mae"),
    ChallengeScore("bacc", lower_is_better=True, maximum=1.0),
    ChallengeScore("ext_mae"),
    ChallengeScore("int_rmse"),
]


# --------------------------------------------------------------------------- workflow


def _probe_seed() -> int | None:
    seed = int(os.environ.get("BRAINAGE_PROBE_SEED", "0"))
    return None if seed < 0 else seed


class FrozenFeatures:
    """RAMP workflow: the submission only restores weights; the probes are fitted on its features."""

    def __init__(self, filename: str = "estimator.py") -> None:
        self.filename = filename
        self.element_names = ["estimator", "weights.pth", "metadata.pkl"]

    @staticmethod
    def features(pipeline, X: np.ndarray, rows) -> np.ndarray:
        """``pipeline.predict(X)`` with ``indices = rows`` on every step that has it (None afterwards)."""
        steps = [step for step in pipeline if hasattr(step, "indices")]
        if not steps:
            raise ValueError("no step of the submission's pipeline has an `indices` attribute")
        for step in steps:
            step.indices = rows
        try:
            features = np.asarray(pipeline.predict(X))
        finally:
            for step in steps:
                step.indices = None
        if features.ndim != 2 or features.shape[0] != len(rows):
            raise ValueError(f"the submission returned features of shape {features.shape} for {len(rows)} rows")
        if features.shape[1] > MAX_FEATURES:
            raise ValueError(
                f"the submission returned {features.shape[1]} features per subject; at most {MAX_FEATURES} are allowed"
            )
        if not np.isfinite(features).all():
            raise ValueError("the submission returned NaN or inf features")
        print(f"- features: {features.shape}")
        return features

    def train_submission(self, module_path: str, X: np.ndarray, y: np.ndarray, train_idx=None):
        rows = np.arange(len(X)) if train_idx is None else np.asarray(train_idx)
        for variable, name in MASK_FILES.items():
            os.environ[variable] = str(KIT / name)
        module = import_module_from_source(os.path.join(module_path, self.filename), "estimator", sanitize=True)
        pipeline = module.get_estimator()
        pipeline = pipeline.fit(None, None)
        features = self.features(pipeline, X, rows)
        ages, sites = y[rows, 0], y[rows, 1].astype(int)
        age_probe = GridSearchCV(Ridge(), {"alpha": list(GRID)}, cv=5, scoring="r2", n_jobs=1)
        age_probe.fit(features, ages)
        site_probe = GridSearchCV(
            LogisticRegression(solver="saga", max_iter=150, random_state=_probe_seed()),
            {"C": list(GRID)},
            cv=5,
            scoring="balanced_accuracy",
            n_jobs=1,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            site_probe.fit(features, sites)
        return pipeline, age_probe, site_probe

    def test_submission(self, trained, X: np.ndarray) -> np.ndarray:
        pipeline, age_probe, site_probe = trained
        features = self.features(pipeline, X, range(len(X)))
        return np.column_stack([age_probe.predict(features), site_probe.predict(features).astype(float)])


workflow = FrozenFeatures()
