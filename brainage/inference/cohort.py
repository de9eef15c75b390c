"""A summary of the subjects a model was trained on (ages, sex, sites, studies), JSON-ready."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from brainage.data.cache import _site_column
from brainage.errors import BrainAgeError

__all__ = ["AGE_BIN_YEARS", "cohort_summary"]

#: Width of the age-histogram bins (years).
AGE_BIN_YEARS = 10


def _counts(values: pd.Series) -> dict[str, int]:
    counts = values.astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


def cohort_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Ages (range, moments, quantiles, histogram), sex, site and study counts of a participants table.

    Args:
        table: rows of the training split (columns ``age`` and ``site`` or ``siteXacq``; ``sex``
            and ``study`` when present).

    Raises:
        ValueError: an empty table or a missing or non-finite age.
    """
    if len(table) == 0:
        raise BrainAgeError("the training cohort is empty")
    ages = pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(ages).all():
        raise BrainAgeError(f"the training cohort has {int((~np.isfinite(ages)).sum())} missing or non-numeric age(s)")
    low = AGE_BIN_YEARS * math.floor(ages.min() / AGE_BIN_YEARS)
    high = AGE_BIN_YEARS * (math.floor(ages.max() / AGE_BIN_YEARS) + 1)
    edges = np.arange(low, high + AGE_BIN_YEARS / 2, AGE_BIN_YEARS, dtype=float)
    counts, _ = np.histogram(ages, bins=edges)
    site_column = _site_column(table.columns)
    summary: dict[str, Any] = {
        "n": int(len(ages)),
        "age": {
            "min": float(ages.min()),
            "max": float(ages.max()),
            "mean": float(ages.mean()),
            "std": float(ages.std(ddof=1)) if len(ages) > 1 else None,
            "median": float(np.median(ages)),
            "q05": float(np.percentile(ages, 5)),
            "q95": float(np.percentile(ages, 95)),
        },
        "age_histogram": {
            "edges": edges.tolist(),
            "counts": counts.astype(int).tolist(),
            "bins": f"[a, a + {AGE_BIN_YEARS}) years",
        },
        "sites": {"column": site_column, "n": int(table[site_column].nunique()), "counts": _counts(table[site_column])},
    }
    if "sex" in table:
        summary["sex"] = _counts(table["sex"])
    if "study" in table:
        summary["studies"] = _counts(table["study"])
    return summary
