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
  folds (used for the internal test set itself).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.model_selection import KFold

__all__ = [
    "brain_age_gap",
    "AgeBiasCorrection",
    "corrected_gap_from_reference",
    "cross_fitted_corrected_gap",
]


def brain_age_gap(predicted: Sequence[float], age: Sequence[float]) -> np.ndarray:
    """Brain-age gap ``predicted - age`` (years), shape (n,)."""
    p = np.asarray(predicted, dtype=float).ravel()
    a = np.asarray(age, dtype=float).ravel()
    if p.shape != a.shape:
        raise ValueError(f"predicted and age differ in length: {p.shape[0]} != {a.shape[0]}")
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

    def fit(self, age: Sequence[float], predicted: Sequence[float]) -> "AgeBiasCorrection":
        a = np.asarray(age, dtype=float).ravel()
        p = np.asarray(predicted, dtype=float).ravel()
        if a.shape != p.shape:
            raise ValueError(f"age and predicted differ in length: {a.shape[0]} != {p.shape[0]}")
        if a.size < 3:
            raise ValueError(f"age-bias correction needs at least 3 calibration subjects, got {a.size}")
        if np.ptp(a) == 0:
            raise ValueError("age-bias correction needs calibration subjects of different ages")
        slope, intercept = np.polyfit(a, p, deg=1)
        if not slope > self.min_slope:
            raise ValueError(
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
        raise ValueError(f"age and predicted differ in length: {a.shape[0]} != {p.shape[0]}")
    if n_splits < 2:
        raise ValueError(f"cross-fitting needs n_splits >= 2, got {n_splits}")
    if a.size < 2 * n_splits:
        raise ValueError(
            f"cross-fitting over {n_splits} folds needs at least {2 * n_splits} subjects, got {a.size}"
        )
    out = np.empty_like(a)
    folds = KFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    for fit_idx, apply_idx in folds.split(a):
        corr = AgeBiasCorrection(min_slope=min_slope).fit(a[fit_idx], p[fit_idx])
        out[apply_idx] = corr.corrected_gap(p[apply_idx], a[apply_idx])
    return out
