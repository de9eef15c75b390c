"""The summary figure of ``brainage predict`` (PNG, matplotlib's object API on the Agg canvas)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from brainage.io import atomic_path

__all__ = ["plot_prediction_summary"]


def plot_prediction_summary(
    table: pd.DataFrame,
    path: str | os.PathLike,
    age_range: Sequence[float],
    calibration: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """Predicted vs true age and the gap distributions; predicted ages alone when no age is known.

    Args:
        table: the predictions (columns ``age``, ``predicted_age``, ``brain_age_gap``,
            ``corrected_brain_age_gap``, ``flagged``).
        age_range: the training age range (years), shaded.
        calibration: ``(slope, intercept)`` of the bundle's age-bias line, drawn when given.
    """
    done = table[np.isfinite(table["predicted_age"].astype(float))]
    known = done[np.isfinite(done["age"].astype(float))]
    fig = Figure(figsize=(10.5 if len(known) else 5.5, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    flagged = known["flagged"].astype(bool).to_numpy()
    if len(known):
        ax, hist_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        age, predicted = known["age"].to_numpy(float), known["predicted_age"].to_numpy(float)
        ax.axvspan(*age_range, color="0.92", label="training age range")
        ax.scatter(age[~flagged], predicted[~flagged], s=14, color="tab:blue", label="passed QC")
        ax.scatter(age[flagged], predicted[flagged], s=22, color="tab:red", marker="x", label="flagged")
        lo = float(min(age.min(), predicted.min(), age_range[0]))
        hi = float(max(age.max(), predicted.max(), age_range[1]))
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=1, ls="--", label="predicted = true")
        if calibration is not None:
            slope, intercept = calibration
            ax.plot(
                [lo, hi],
                [slope * lo + intercept, slope * hi + intercept],
                color="tab:orange",
                lw=1,
                label="age-bias line (bundle)",
            )
        ax.set(
            xlabel="true age (years)",
            ylabel="predicted age (years)",
            title=f"{len(known)} subjects, MAE {np.mean(np.abs(predicted - age)):.2f} y",
        )
        ax.legend(fontsize=8, loc="upper left")
        bins = np.histogram_bin_edges(
            np.r_[known["brain_age_gap"].to_numpy(float), known["corrected_brain_age_gap"].dropna().to_numpy(float)],
            bins=20,
        )
        hist_ax.hist(known["brain_age_gap"].to_numpy(float), bins=bins, alpha=0.6, label="gap (predicted - true)")
        corrected = known["corrected_brain_age_gap"].to_numpy(float)
        if np.isfinite(corrected).any():
            hist_ax.hist(corrected[np.isfinite(corrected)], bins=bins, alpha=0.6, label="bias-corrected gap")
        hist_ax.axvline(0, color="0.3", lw=1)
        hist_ax.set(xlabel="years", ylabel="subjects", title="brain-age gap")
        hist_ax.legend(fontsize=8)
    else:
        ax = fig.add_subplot(1, 1, 1)
        ax.axvspan(*age_range, color="0.92", label="training age range")
        ax.hist(done["predicted_age"].to_numpy(float), bins=20, color="tab:blue", label="predicted age")
        ax.set(xlabel="predicted age (years)", ylabel="subjects", title=f"{len(done)} subjects (no true ages given)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)
