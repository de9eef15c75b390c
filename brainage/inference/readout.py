"""From a network's output to an age in years.

- L1 models (``head``): the regression head's output, in the standardised units the trainer
  used, mapped back to years: ``output * age_std + age_mean``.
- Contrastive models (``ridge``): the network gives features, not ages. The age is read out by
  the challenge's age probe (``GridSearchCV(Ridge(), alpha grid, cv=5, scoring="r2")``,
  :func:`brainage.evaluation.protocol.age_probe`) fitted on the training subjects' features:
  the same readout ``brainage evaluate`` scores. Its coefficients are stored in the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brainage.errors import BrainAgeError

__all__ = ["READOUTS", "Readout", "fit_ridge_readout"]

READOUTS: tuple[str, ...] = ("head", "ridge")


@dataclass(frozen=True, eq=False)
class Readout:
    """How a bundle turns network outputs into ages.

    Attributes:
        kind: ``"head"`` or ``"ridge"``.
        features: the features fed to the readout: ``"embedding"`` or ``"projection"``.
        age_mean, age_std: (head) the trainer's age standardisation, years.
        coef: (ridge) ``(p,)`` float64 Ridge coefficients.
        intercept: (ridge) Ridge intercept, years.
        alpha: (ridge) the penalty the grid search chose.
        fitted_on: (ridge) which subjects the Ridge was fitted on.
    """

    kind: str
    features: str
    age_mean: float = 0.0
    age_std: float = 1.0
    coef: np.ndarray | None = None
    intercept: float = 0.0
    alpha: float | None = None
    fitted_on: str = ""

    def __post_init__(self) -> None:
        if self.kind not in READOUTS:
            raise BrainAgeError(f"unknown readout {self.kind!r}; expected one of {READOUTS}")
        if self.kind == "ridge" and (self.coef is None or np.asarray(self.coef).ndim != 1):
            raise BrainAgeError("a ridge readout needs a 1-D coefficient vector")

    def predict(self, features: np.ndarray, head_output: np.ndarray | None) -> np.ndarray:
        """Ages (n,) float64 in years.

        Args:
            features: ``(n, p)`` features of kind :attr:`features` (ridge).
            head_output: ``(n,)`` regression-head outputs (head).
        """
        if self.kind == "head":
            if head_output is None:
                raise BrainAgeError("a head readout needs the regression head's output")
            return np.asarray(head_output, dtype=np.float64) * self.age_std + self.age_mean
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef.shape[0]:
            raise BrainAgeError(f"features of shape {x.shape}; the ridge readout expects (n, {self.coef.shape[0]})")
        return x @ self.coef + self.intercept

    def to_spec(self) -> dict[str, Any]:
        """JSON description (the coefficients go into the weights file)."""
        if self.kind == "head":
            return {
                "kind": "head",
                "features": self.features,
                "age_mean": self.age_mean,
                "age_std": self.age_std,
                "rule": "age = head output * age_std + age_mean (the trainer's standardisation)",
            }
        return {
            "kind": "ridge",
            "features": self.features,
            "alpha": self.alpha,
            "intercept": self.intercept,
            "n_features": int(self.coef.shape[0]),
            "fitted_on": self.fitted_on,
            "rule": "age = features @ coef + intercept (Ridge; coef in weights.pt under 'readout_coef')",
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], coef: np.ndarray | None) -> Readout:
        if spec.get("kind") == "head":
            return cls("head", str(spec["features"]), age_mean=float(spec["age_mean"]), age_std=float(spec["age_std"]))
        return cls(
            "ridge",
            str(spec["features"]),
            coef=None if coef is None else np.asarray(coef, dtype=np.float64),
            intercept=float(spec["intercept"]),
            alpha=spec.get("alpha"),
            fitted_on=str(spec.get("fitted_on", "")),
        )


def fit_ridge_readout(features: np.ndarray, ages: np.ndarray, kind: str, fitted_on: str, settings=None) -> Readout:
    """The challenge's age probe fitted on ``(n, p)`` features and ``(n,)`` ages (years).

    Args:
        settings: :class:`brainage.evaluation.protocol.ProbeSettings` (default: the challenge's).
    """
    from sklearn.base import clone

    from brainage.evaluation.protocol import age_probe

    probe = clone(age_probe(settings)).fit(np.asarray(features), np.asarray(ages, dtype=float))
    ridge = probe.best_estimator_
    return Readout(
        "ridge",
        kind,
        coef=np.asarray(ridge.coef_, dtype=np.float64).ravel(),
        intercept=float(ridge.intercept_),
        alpha=float(probe.best_params_["alpha"]),
        fitted_on=fitted_on,
    )
