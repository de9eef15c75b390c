"""Reference rows of the OpenBHB table: features that bound what the protocol can show.

Both are scored by the same protocol code as every method (:func:`~brainage.evaluation.protocol.evaluate_features`):

- ``constant``: one column of zeros. The Ridge probe predicts the training mean age (the
  mean predictor's MAE), the site probe one class (chance-level BAcc): the trivial yardstick.
- ``age-oracle``: the true age itself, z-scored with the training split's mean and standard
  deviation, as one column. Its Int./Ext. MAE are near 0; its BAcc is what age confounding
  alone gives the site probe (sites recruit different ages), i.e. the floor under which no
  age-predictive feature can push site leakage by removing scanner information. z-scoring
  matters: in raw years the probe's saga solver does not converge in its 150 iterations and
  the oracle would look like chance.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from brainage.errors import BrainAgeError

__all__ = ["REFERENCE_KINDS", "reference_features", "reference_method_id"]

REFERENCE_KINDS: tuple[str, ...] = ("constant", "age-oracle")


def reference_method_id(kind: str) -> str:
    """The method id a reference's scores are recorded under (``ref_constant``, ``ref_age_oracle``)."""
    return "ref_" + kind.replace("-", "_")


def reference_features(kind: str, ages: Mapping[str, np.ndarray], train: str = "train") -> dict[str, np.ndarray]:
    """(n, 1) float64 reference features per split.

    Args:
        kind: one of :data:`REFERENCE_KINDS`.
        ages: ``{split: (n,) ages in years}``; ``train`` gives the standardisation.
        train: the split whose mean and standard deviation z-score the oracle.

    Raises:
        ValueError: unknown kind, or training ages without spread (the oracle is undefined).
    """
    if kind not in REFERENCE_KINDS:
        raise BrainAgeError(f"unknown reference {kind!r}; valid choices are: {', '.join(map(repr, REFERENCE_KINDS))}")
    if kind == "constant":
        return {split: np.zeros((len(a), 1)) for split, a in ages.items()}
    mean, sd = float(np.mean(ages[train])), float(np.std(ages[train]))
    if not sd > 0:
        raise BrainAgeError(f"{train}: every subject has the same age ({mean}); the age oracle cannot be z-scored")
    return {split: ((np.asarray(a, dtype=np.float64) - mean) / sd)[:, None] for split, a in ages.items()}
