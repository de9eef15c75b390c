"""Quality control of new images against the training cohort.

Four measures per image, each also computed at export time for training subjects, so a bundle
holds the training cohort's range of each:

- ``signal_in_mask``: sum of |voxel| inside the source mask / sum of |voxel| on the whole
  source grid. A grey-matter map puts almost all its signal inside the grey-matter mask; a T1w
  image or a misregistered map does not.
- ``intensity_mean``, ``intensity_std``: mean and standard deviation (ddof 0) of the voxels
  inside the source mask, before normalisation (the units of the input: tissue probability
  for VBM, scanner units for quasi-raw T1w).
- ``template_r``: Pearson correlation, inside the model-grid mask, of the network input with
  the training cohort's mean input (leave-one-out for the training subjects themselves). Low
  for another modality, a flipped or shifted image.

An image is flagged for a measure when its value lies outside the training range:
below the training minimum for ``signal_in_mask`` and ``template_r`` (higher is never a
problem), outside [minimum, maximum] for the intensities. Ages are flagged outside the
training age range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["QC_MEASURES", "QC_RULES", "age_flags", "image_measures", "measure_flags", "summarize", "template_r"]

#: Measure -> which side of the training range is flagged.
QC_RULES: dict[str, str] = {
    "signal_in_mask": "below",
    "intensity_mean": "outside",
    "intensity_std": "outside",
    "template_r": "below",
}
QC_MEASURES: tuple[str, ...] = tuple(QC_RULES)


def image_measures(volume: np.ndarray, source_mask: np.ndarray) -> dict[str, float]:
    """``signal_in_mask``, ``intensity_mean`` and ``intensity_std`` of one source-grid volume (float64 sums)."""
    inside = volume[source_mask].astype(np.float64)
    total = float(np.abs(volume, dtype=np.float64).sum())
    return {
        "signal_in_mask": float(np.abs(inside).sum()) / total if total > 0 else math.nan,
        "intensity_mean": float(inside.mean()) if inside.size else math.nan,
        "intensity_std": float(inside.std()) if inside.size else math.nan,
    }


def template_r(model_input: np.ndarray, mask: np.ndarray, reference_mean: np.ndarray) -> float:
    """Pearson r inside ``mask`` between a network input and the cohort's mean input (NaN if constant)."""
    x = np.asarray(model_input, dtype=np.float64)[mask]
    y = np.asarray(reference_mean, dtype=np.float64)[mask]
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else math.nan


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``min``, ``max``, ``mean``, ``std`` (ddof 1), 1st and 99th percentiles of finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "min": None, "max": None, "mean": None, "std": None, "p01": None, "p99": None}
    return {
        "n": int(v.size),
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
        "p01": float(np.percentile(v, 1)),
        "p99": float(np.percentile(v, 99)),
    }


def measure_flags(measures: Mapping[str, float], reference: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Flag names of the measures outside the training range (see the module docstring).

    A measure without a reference range (``n`` 0, or absent) is never flagged; a NaN value is.
    """
    reasons = []
    for name, side in QC_RULES.items():
        ref = reference.get(name) or {}
        value = measures.get(name, math.nan)
        if not ref.get("n"):
            continue
        if not math.isfinite(value):
            reasons.append(f"{name}_undefined")
        elif value < ref["min"]:
            reasons.append(f"{name}_below_training_range")
        elif side == "outside" and value > ref["max"]:
            reasons.append(f"{name}_above_training_range")
    return reasons


def age_flags(age: float, predicted: float, age_range: Sequence[float]) -> tuple[bool | None, bool]:
    """``(true age outside the training range or None when unknown, predicted age outside it)``."""
    low, high = float(age_range[0]), float(age_range[1])
    outside_age = None if not math.isfinite(age) else bool(age < low or age > high)
    return outside_age, bool(math.isfinite(predicted) and (predicted < low or predicted > high))
