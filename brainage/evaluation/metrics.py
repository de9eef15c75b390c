"""Regression metrics for predicted ages (years) and their per-site breakdown."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from brainage.errors import BrainAgeError

__all__ = ["mae", "rmse", "pearson_r", "per_site_mae"]


def _pair(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise BrainAgeError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    if t.size == 0:
        raise BrainAgeError("empty y_true / y_pred: a metric needs at least one subject")
    return t, p


def mae(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Mean absolute error, in the unit of the ages (years). Inputs (n,)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(p - t)))


def rmse(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Root mean squared error (years). Inputs (n,)."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two (n,) vectors; NaN when either is constant or n < 2."""
    a, b = _pair(x, y)
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.sum(a * b) / denom, -1.0, 1.0))


def per_site_mae(
    y_true: Sequence[float], y_pred: Sequence[float], sites: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """MAE of each site: ``{site: {"n": count, "mae": years}}``, sites in sorted order."""
    t, p = _pair(y_true, y_pred)
    s = np.asarray(sites).astype(str).ravel()
    if s.shape != t.shape:
        raise BrainAgeError(f"sites and ages differ in length: {s.shape[0]} != {t.shape[0]}")
    out: dict[str, dict[str, float | int]] = {}
    for site in np.unique(s):
        keep = s == site
        out[str(site)] = {"n": int(keep.sum()), "mae": float(np.mean(np.abs(p[keep] - t[keep])))}
    return out
