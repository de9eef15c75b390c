"""Brain-age gap and its age-bias correction.

A brain-age model regresses towards the training mean: on held-out subjects the gap
``predicted - true`` correlates negatively with age. The usual correction (discussed in
de Lange & Cole, "Commentary: Correction procedures in brain-age prediction", NeuroImage:
Clinical 26, 2020) fits ``pred = a * age + b`` on subjects with known age and
replaces each prediction by ``(pred - b) / a``. Fitting that line on the very subjects it is
applied to makes the corrected gap uncorrelated with age by construction and inflates any
downstream effect, so here it is always fitted on *other* subjects:

- :func:`corrected_gap_from_reference` fits on a held-out calibration set (the evaluation fits
  on the internal test set and applies to the external test and training subjects);
- :func:`cross_fitted_corrected_gap` fits, for each of K folds of one set, on the other K - 1
  folds (used for the internal test set itself);
- :func:`held_out_gap_correction` applies both to the three evaluation splits and summarises
  the result (what :func:`~brainage.evaluation.protocol.evaluate_features` returns under
  ``brain_age_gap``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold

from brainage.data.cache import SPLITS
from brainage.errors import BrainAgeError
from brainage.evaluation.metrics import pearson_r

__all__ = [
    "brain_age_gap",
    "AgeBiasCorrection",
    "corrected_gap_from_reference",
    "cross_fitted_corrected_gap",
    "held_out_gap_correction",
]


def brain_age_gap(predicted: Sequence[float], age: Sequence[float]) -> np.ndarray:
    """Brain-age gap ``predicted - age`` (years), shape (n,)."""
    p = np.asarray(predicted, dtype=float).ravel()
    a = np.asarray(age, dtype=float).ravel()
    if p.shape != a.shape:
        raise BrainAgeError(f"predicted and age differ in length: {p.shape[0]} != {a.shape[0]}")
    return p - a


class AgeBiasCorrection:
    """Linear age-bias correction of predicted ages.

    ``fit(age, predicted)`` estimates ``predicted ~ slope_ * age + intercept_`` by least
    squares on calibration subjects; ``correct(predicted)`` returns
    ``(predicted - intercept_) / slope_`` for other subjects.

    Args:
        min_slope: smallest slope accepted. A model whose predictions barely follow age has a
            slope near 0 and the correction would divide noise by it; ``fit`` refuses it.

    Raises:
        ValueError: fewer than 3 calibration subjects, constant ages, or a slope below
            ``min_slope``.
    """

    def __init__(self, min_slope: float = 0.05) -> None:
        self.min_slope = min_slope

    def fit(self, age: Sequence[float], predicted: Sequence[float]) -> AgeBiasCorrection:
        a = np.asarray(age, dtype=float).ravel()
        p = np.asarray(predicted, dtype=float).ravel()
        if a.shape != p.shape:
            raise BrainAgeError(f"age and predicted differ in length: {a.shape[0]} != {p.shape[0]}")
        if a.size < 3:
            raise BrainAgeError(f"age-bias correction needs at least 3 calibration subjects, got {a.size}")
        if np.ptp(a) == 0:
            raise BrainAgeError("age-bias correction needs calibration subjects of different ages")
        slope, intercept = np.polyfit(a, p, deg=1)
        if not slope > self.min_slope:
            raise BrainAgeError(
                f"predicted age hardly follows true age on the calibration set (slope {slope:.3g} "
                f"<= {self.min_slope}); the age-bias correction (pred - b) / a is undefined"
            )
        self.slope_ = float(slope)
        self.intercept_ = float(intercept)
        self.n_calibration_ = int(a.size)
        return self

    def correct(self, predicted: Sequence[float]) -> np.ndarray:
        """Bias-corrected predicted ages (years), shape (n,)."""
        if not hasattr(self, "slope_"):
            raise RuntimeError("AgeBiasCorrection is not fitted: call fit(age, predicted) first")
        return (np.asarray(predicted, dtype=float).ravel() - self.intercept_) / self.slope_

    def corrected_gap(self, predicted: Sequence[float], age: Sequence[float]) -> np.ndarray:
        """Bias-corrected brain-age gap ``correct(predicted) - age`` (years), shape (n,)."""
        return brain_age_gap(self.correct(predicted), age)


def corrected_gap_from_reference(
    reference_age: Sequence[float],
    reference_predicted: Sequence[float],
    age: Sequence[float],
    predicted: Sequence[float],
    min_slope: float = 0.05,
) -> tuple[np.ndarray, AgeBiasCorrection]:
    """Corrected gap (n,) of ``(age, predicted)``, with the line fitted on the reference set."""
    corr = AgeBiasCorrection(min_slope=min_slope).fit(reference_age, reference_predicted)
    return corr.corrected_gap(predicted, age), corr


def cross_fitted_corrected_gap(
    age: Sequence[float],
    predicted: Sequence[float],
    n_splits: int = 5,
    random_state: int = 0,
    min_slope: float = 0.05,
) -> np.ndarray:
    """Corrected gap (n,) where each subject's line is fitted on the other folds only.

    Folds come from ``KFold(n_splits, shuffle=True, random_state=random_state)``.
    """
    a = np.asarray(age, dtype=float).ravel()
    p = np.asarray(predicted, dtype=float).ravel()
    if a.shape != p.shape:
        raise BrainAgeError(f"age and predicted differ in length: {a.shape[0]} != {p.shape[0]}")
    if n_splits < 2:
        raise BrainAgeError(f"cross-fitting needs n_splits >= 2, got {n_splits}")
    if a.size < 2 * n_splits:
        raise BrainAgeError(f"cross-fitting over {n_splits} folds needs at least {2 * n_splits} subjects, got {a.size}")
    out = np.empty_like(a)
    folds = KFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    for fit_idx, apply_idx in folds.split(a):
        corr = AgeBiasCorrection(min_slope=min_slope).fit(a[fit_idx], p[fit_idx])
        out[apply_idx] = corr.corrected_gap(p[apply_idx], a[apply_idx])
    return out


def _mean_std(values: np.ndarray) -> dict[str, float | None]:
    finite = bool(values.size) and bool(np.isfinite(values).all())
    return {
        "mean": float(np.mean(values)) if finite else None,
        "std": float(np.std(values, ddof=1)) if finite and values.size > 1 else None,
    }


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r, None when undefined (a NaN entry, a constant vector, fewer than 2 values)."""
    if x.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    r = pearson_r(x, y)
    return r if np.isfinite(r) else None


def held_out_gap_correction(
    age: dict[str, Sequence[float]],
    predicted: dict[str, Sequence[float]],
    n_splits: int = 5,
    random_state: int = 0,
    min_slope: float = 0.05,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Raw and age-bias-corrected gaps of the three evaluation splits and their summary.

    The correction line is fitted on the internal test set (held out from the age probe) and
    never on the subjects it corrects:

    - ``external_test`` and ``train`` subjects: line fitted on the whole internal test set;
    - ``internal_test`` subjects: :func:`cross_fitted_corrected_gap` over ``n_splits`` folds.

    If the correction is undefined (too few internal subjects for the cross-fitting, or a slope
    below ``min_slope``), a ``UserWarning`` is issued, every corrected gap is NaN and the reason
    is stored under ``"error"``.

    Args:
        age, predicted: ``{split: (n,) years}`` for ``train``, ``internal_test``, ``external_test``.

    Returns:
        ``(raw, corrected, summary)``: ``raw`` and ``corrected`` map each split to its
        gaps ``predicted - age`` and its corrected gaps (n,);
        ``summary`` (JSON-ready) holds ``slope``, ``intercept``, ``n_calibration`` of the line
        fitted on the whole internal test set, ``gap_stats`` and ``corrected_gap_stats`` (per
        split ``mean`` and sample ``std``, ddof=1, years; None where undefined) and
        ``gap_age_r`` (per split the Pearson r of the gap with age, ``raw`` and ``corrected``).
    """
    a = {s: np.asarray(age[s], dtype=float).ravel() for s in SPLITS}
    p = {s: np.asarray(predicted[s], dtype=float).ravel() for s in SPLITS}
    corrected: dict[str, np.ndarray] = {}
    summary: dict = {
        "gap": "predicted - true age (years), Ridge probe",
        "correction": "predicted = slope * age + intercept; corrected = (predicted - intercept) / slope",
        "fitted_on": {
            "external_test": "internal_test (all subjects)",
            "train": "internal_test (all subjects)",
            "internal_test": f"internal_test, cross-fitted over {n_splits} folds (never the subject's own fold)",
        },
    }
    try:
        corr = AgeBiasCorrection(min_slope=min_slope).fit(a["internal_test"], p["internal_test"])
        for split in ("external_test", "train"):
            corrected[split] = corr.corrected_gap(p[split], a[split])
        corrected["internal_test"] = cross_fitted_corrected_gap(
            a["internal_test"], p["internal_test"], n_splits=n_splits, random_state=random_state, min_slope=min_slope
        )
        summary.update(slope=corr.slope_, intercept=corr.intercept_, n_calibration=corr.n_calibration_)
    except ValueError as err:
        warnings.warn(f"age-bias correction skipped: {err}", UserWarning, stacklevel=3)
        summary["error"] = str(err)
        corrected = {s: np.full(a[s].shape, np.nan) for s in SPLITS}
    raw = {s: brain_age_gap(p[s], a[s]) for s in SPLITS}
    summary["gap_stats"] = {s: _mean_std(raw[s]) for s in SPLITS}
    summary["corrected_gap_stats"] = {s: _mean_std(corrected[s]) for s in SPLITS}
    summary["gap_age_r"] = {s: {"raw": _corr(a[s], raw[s]), "corrected": _corr(a[s], corrected[s])} for s in SPLITS}
    return raw, corrected, summary
