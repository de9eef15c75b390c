"""OpenBHB evaluation: the challenge protocol on frozen features, metrics, brain-age gap,
aggregation into the paper's table, figures.

Modules: :mod:`~brainage.evaluation.protocol` (probes, ``challenge_score``,
``evaluate_features``), :mod:`~brainage.evaluation.metrics`,
:mod:`~brainage.evaluation.brain_age_gap`, :mod:`~brainage.evaluation.features` (reading the
split files), :mod:`~brainage.evaluation.pipeline` (``brainage evaluate``),
:mod:`~brainage.evaluation.table` (``brainage table``), :mod:`~brainage.evaluation.figures`.
"""

from brainage.evaluation.brain_age_gap import (
    AgeBiasCorrection,
    brain_age_gap,
    corrected_gap_from_reference,
    cross_fitted_corrected_gap,
    held_out_gap_correction,
)
from brainage.evaluation.metrics import mae, pearson_r, per_site_mae, rmse
from brainage.evaluation.protocol import (
    MAX_FEATURES,
    ProbeSettings,
    age_probe,
    challenge_score,
    evaluate_features,
    site_probe,
)

__all__ = [
    "AgeBiasCorrection",
    "MAX_FEATURES",
    "ProbeSettings",
    "age_probe",
    "brain_age_gap",
    "challenge_score",
    "corrected_gap_from_reference",
    "cross_fitted_corrected_gap",
    "evaluate_features",
    "held_out_gap_correction",
    "mae",
    "pearson_r",
    "per_site_mae",
    "rmse",
    "site_probe",
]
