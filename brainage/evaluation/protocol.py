"""The OpenBHB challenge protocol on frozen features.

Reproduces how the challenge server (the RAMP kit "brain_age_with_site_removal",
``problem.py``; Dufumier et al., "OpenBHB: a large-scale multi-site brain MRI data-set for age
prediction and debiasing", NeuroImage 263, 2022) scores a representation:

1. two probes are fitted on the *training* subjects' features only:
   ``GridSearchCV(Ridge(), {"alpha": 10.0 ** arange(-2, 3)}, cv=5, scoring="r2")`` for age and
   ``GridSearchCV(LogisticRegression(solver="saga", max_iter=150), {"C": 10.0 ** arange(-2, 3)},
   cv=5, scoring="balanced_accuracy")`` for the acquisition site;
2. Int. MAE and BAcc are measured on the internal test set (sites seen in training), Ext. MAE on
   the external test set (unseen sites);
3. the challenge score is ``L_c = BAcc ** 0.3 * Ext. MAE`` (BAcc as a fraction, lower is better).

Decisions, each matching the kit unless stated:

- No standardisation: the kit feeds the submission's features straight into both probes
  (no scaler in either pipeline), so neither does this module. The features' scale therefore
  matters (it sets the effective ridge / logistic penalty and the speed of saga), exactly as on
  the server. Features are used in the dtype they are stored in (float32 from a network).
- ``cv=5`` is passed as an integer, as in the kit: scikit-learn then uses unshuffled
  ``KFold`` for Ridge and unshuffled ``StratifiedKFold`` for the classifier, so the inner folds
  depend on the row order of the training features; rows are used in the order given.
- ``max_iter=150`` rarely lets saga converge; the kit keeps it and so does this module (the
  refit probe's convergence is recorded, the warnings are counted, not shown one by one).
- ``random_state``: the kit leaves saga's sampling to the global NumPy state, so its BAcc
  varies slightly from run to run. Here it defaults to 0 so every number can be reproduced;
  ``random_state=None`` restores the kit's behaviour. It is not part of the challenge identity.
- More than 10,000 feature columns: the server refuses the submission (``ValueError``), so
  :func:`evaluate_features` raises too unless ``allow_over_limit=True``, which warns and marks
  the result ``challenge_protocol: False``.
- The RAMP kit's leaderboard column "challenge_metric" computes ``ext_mae * bacc + mae / n_sites``,
  not the paper's ``L_c``. This project reports the ``L_c`` of the OpenBHB and ISBI 2023 papers,
  whose published numbers it compares with; the kit formula is not used.

Analysis scores next to the challenge's (not part of it): where sites and age are confounded,
BAcc above chance does not show that features encode the scanner, since age alone predicts
the site. ``site_given_age_bacc`` refits the same site probe on the features minus what a cubic
spline of age explains (fitted on the training split, applied to the internal test split with
its true ages), and ``sex_bacc`` is the same probe for sex, a second collateral attribute.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, cross_val_predict
from sklearn.preprocessing import SplineTransformer

from brainage.data.cache import SPLITS
from brainage.errors import BrainAgeError
from brainage.evaluation.brain_age_gap import held_out_gap_correction
from brainage.evaluation.metrics import mae, pearson_r, per_site_mae, rmse

__all__ = [
    "MAX_FEATURES",
    "CHALLENGE_ALPHAS",
    "CHALLENGE_CS",
    "ProbeSettings",
    "age_probe",
    "site_probe",
    "challenge_score",
    "check_features",
    "collateral_scores",
    "evaluate_features",
    "residualize_on_age",
]

log = logging.getLogger(__name__)

MAX_FEATURES = 10_000
"""Largest feature dimension the challenge server accepts."""

CHALLENGE_ALPHAS: tuple[float, ...] = tuple(float(v) for v in 10.0 ** np.arange(-2, 3))
CHALLENGE_CS: tuple[float, ...] = tuple(float(v) for v in 10.0 ** np.arange(-2, 3))
CHALLENGE_CV = 5
CHALLENGE_MAX_ITER = 150
#: Cubic B-spline basis of age (years) that ``residualize_on_age`` regresses the features on.
AGE_SPLINE = {"n_knots": 5, "degree": 3, "extrapolation": "linear"}

Triple = Sequence[Any]


@dataclass(frozen=True)
class ProbeSettings:
    """Probe hyper-parameters; the defaults are the challenge's.

    Attributes:
        cv: folds of both grid searches (an integer, as the kit passes it).
        alphas: Ridge penalty grid.
        cs: inverse LogisticRegression penalty grid.
        max_iter: saga iterations.
        random_state: seed of saga's sampling (None: global NumPy state, as the kit).
        n_jobs: parallel grid-search jobs (results do not depend on it).
    """

    cv: int = CHALLENGE_CV
    alphas: tuple[float, ...] = CHALLENGE_ALPHAS
    cs: tuple[float, ...] = CHALLENGE_CS
    max_iter: int = CHALLENGE_MAX_ITER
    random_state: int | None = 0
    n_jobs: int | None = 1

    def __post_init__(self) -> None:
        if int(self.cv) < 2:
            raise BrainAgeError(f"cv must be >= 2, got {self.cv}")
        if not self.alphas or any(not (a > 0) for a in self.alphas):
            raise BrainAgeError(f"alphas must be a non-empty list of positive numbers, got {self.alphas}")
        if not self.cs or any(not (c > 0) for c in self.cs):
            raise BrainAgeError(f"cs must be a non-empty list of positive numbers, got {self.cs}")
        if int(self.max_iter) < 1:
            raise BrainAgeError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.n_jobs is not None and int(self.n_jobs) == 0:
            raise BrainAgeError("n_jobs (--n-jobs) is 0; expected a number of parallel jobs >= 1, or -1 for all cores")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "cs", tuple(float(c) for c in self.cs))

    @property
    def is_challenge(self) -> bool:
        """True when grids, folds and iterations are the challenge's."""
        return (
            int(self.cv) == CHALLENGE_CV
            and np.allclose(self.alphas, CHALLENGE_ALPHAS)
            and len(self.alphas) == len(CHALLENGE_ALPHAS)
            and np.allclose(self.cs, CHALLENGE_CS)
            and len(self.cs) == len(CHALLENGE_CS)
            and int(self.max_iter) == CHALLENGE_MAX_ITER
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def age_probe(settings: ProbeSettings | None = None) -> GridSearchCV:
    """The unfitted age probe: Ridge with a grid search over alpha, scored by R^2."""
    s = settings or ProbeSettings()
    return GridSearchCV(Ridge(), {"alpha": list(s.alphas)}, cv=int(s.cv), scoring="r2", n_jobs=s.n_jobs)


def site_probe(settings: ProbeSettings | None = None) -> GridSearchCV:
    """The unfitted site probe: saga LogisticRegression, grid over C, balanced accuracy."""
    s = settings or ProbeSettings()
    return GridSearchCV(
        LogisticRegression(solver="saga", max_iter=int(s.max_iter), random_state=s.random_state),
        {"C": list(s.cs)},
        cv=int(s.cv),
        scoring="balanced_accuracy",
        n_jobs=s.n_jobs,
    )


def challenge_score(bacc: float, ext_mae: float) -> float:
    """OpenBHB challenge score ``L_c = bacc ** 0.3 * ext_mae`` (lower is better).

    Args:
        bacc: balanced accuracy of the site probe on the internal test set, a fraction in [0, 1].
        ext_mae: mean absolute age error on the external test set, years (>= 0).

    Raises:
        ValueError: a value outside its range (a BAcc given in percent is refused).
    """
    b, e = float(bacc), float(ext_mae)
    if not (math.isfinite(b) and 0.0 <= b <= 1.0):
        hint = " (a percentage? pass a fraction, e.g. 0.067 for 6.7 %)" if math.isfinite(b) and 1 < b <= 100 else ""
        raise BrainAgeError(f"bacc must be a fraction in [0, 1], got {bacc}{hint}")
    if not (math.isfinite(e) and e >= 0.0):
        raise BrainAgeError(f"ext_mae must be a finite non-negative number of years, got {ext_mae}")
    return b**0.3 * e


def check_features(
    features: Any, ages: Any, sites: Any, name: str, ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate one split; returns (features (n, p), ages (n,) float, sites (n,) str or None).

    Raises:
        ValueError: non 2-D features, an empty split, mismatched lengths, or a NaN/inf in the
            features or ages (the first offending row is named, with its participant id when
            ``ids`` is given).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise BrainAgeError(f"{name}: features must be 2-D (n_subjects, n_features), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise BrainAgeError(f"{name}: features must be numeric, got dtype {x.dtype}")
    n = x.shape[0]
    if n == 0:
        raise BrainAgeError(f"{name}: no subjects")
    y = np.asarray(ages, dtype=float).ravel()
    if y.shape[0] != n:
        raise BrainAgeError(f"{name}: {n} feature rows but {y.shape[0]} ages")
    s = None
    if sites is not None:
        s = np.asarray(sites).astype(str).ravel()
        if s.shape[0] != n:
            raise BrainAgeError(f"{name}: {n} feature rows but {s.shape[0]} sites")
    if ids is not None and len(ids) != n:
        raise BrainAgeError(f"{name}: {n} feature rows but {len(ids)} participant ids")

    def where(row: int) -> str:
        return f"row {row}" + (f" (participant {ids[row]})" if ids is not None else "")

    bad_rows = ~np.isfinite(x).all(axis=1)
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0])
        raise BrainAgeError(
            f"{name}: features contain NaN or inf in {int(bad_rows.sum())} row(s), first at {where(first)}"
        )
    bad_ages = ~np.isfinite(y)
    if bad_ages.any():
        first = int(np.flatnonzero(bad_ages)[0])
        raise BrainAgeError(f"{name}: age is NaN or inf at {where(first)}")
    return x, y, s


def _fit_classifier(settings: ProbeSettings, x: np.ndarray, labels: np.ndarray) -> tuple[GridSearchCV, int]:
    """The site probe's pipeline fitted on (x, labels); returns it and its saga convergence warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = clone(site_probe(settings)).fit(x, labels)
    n_conv = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if caught:
        log.info(
            "probe: %d warning(s) while fitting (%d saga convergence, max_iter=%d as in the challenge)",
            len(caught),
            n_conv,
            settings.max_iter,
        )
    return probe, n_conv


def _balanced_accuracy(true: np.ndarray, predicted: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(true, predicted))


def residualize_on_age(
    train: np.ndarray, train_ages: np.ndarray, test: np.ndarray, test_ages: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Features minus what age explains: an ANALYSIS transform, never part of the challenge.

    A least-squares fit of the (n, p) training features on a cubic B-spline basis of age
    (:data:`AGE_SPLINE`, knots at training-age quantiles, linear beyond them) is subtracted from
    both splits; the test split uses its *true* ages, which a submission never has.

    Returns:
        (train residuals (n_train, p), test residuals (n_test, p)), float64.
    """
    basis = SplineTransformer(knots="quantile", **AGE_SPLINE).fit(np.asarray(train_ages, float)[:, None])
    b_tr = basis.transform(np.asarray(train_ages, float)[:, None])
    b_te = basis.transform(np.asarray(test_ages, float)[:, None])
    x_tr = np.asarray(train, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(b_tr, x_tr, rcond=None)
    return x_tr - b_tr @ coef, np.asarray(test, dtype=np.float64) - b_te @ coef


def collateral_scores(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    internal: tuple[np.ndarray, np.ndarray, np.ndarray],
    sex: tuple[np.ndarray, np.ndarray] | None,
    settings: ProbeSettings,
) -> dict[str, Any]:
    """Analysis probes on the internal test set: site given age, and sex (balanced accuracies).

    Args:
        train, internal: ``(features, ages, sites)`` of the split, validated.
        sex: ``(train sex, internal sex)`` labels, or None when sex is unknown.
        settings: the challenge's probe settings (the same saga probe is used for both).

    Returns:
        ``site_given_age_bacc`` (fraction), ``sex_bacc`` and ``sex_chance`` (None without sex).
    """
    (x_tr, y_tr, s_tr), (x_in, y_in, s_in) = train, internal
    r_tr, r_in = residualize_on_age(x_tr, y_tr, x_in, y_in)
    probe, _ = _fit_classifier(settings, r_tr, s_tr)
    out: dict[str, Any] = {
        "site_given_age_bacc": _balanced_accuracy(s_in, probe.predict(r_in)),
        "sex_bacc": None,
        "sex_chance": None,
    }
    if sex is not None:
        sex_tr, sex_in = (np.asarray(v).astype(str) for v in sex)
        if np.unique(sex_tr).size < 2:
            log.warning("one sex only in the training split: no sex probe")
        else:
            probe, _ = _fit_classifier(settings, x_tr, sex_tr)
            out["sex_bacc"] = _balanced_accuracy(sex_in, probe.predict(x_in))
            out["sex_chance"] = 1.0 / np.unique(sex_tr).size
    return out


def _unpack(triple: Triple, name: str) -> tuple[Any, Any, Any]:
    if len(triple) != 3:
        raise BrainAgeError(f"{name}: expected a (features, ages, sites) triple, got {len(triple)} items")
    return triple[0], triple[1], triple[2]


def evaluate_features(
    train: Triple,
    internal: Triple,
    external: Triple,
    *,
    settings: ProbeSettings | None = None,
    allow_over_limit: bool = False,
    names: Sequence[str] = SPLITS,
    bias_cv: int = 5,
    sex: tuple[Any, Any] | None = None,
    analysis: bool = True,
) -> dict[str, Any]:
    """Score frozen features exactly as the OpenBHB challenge does, plus the analysis probes.

    Args:
        train, internal, external: ``(features (n, p), ages (n,) years, sites (n,))`` triples;
            ``sites`` may be None for ``external`` only.
        settings: probe settings; the default is the challenge's.
        allow_over_limit: accept more than 10,000 feature columns (warns; not the challenge).
        names: labels of the three splits in error messages (e.g. their file names).
        bias_cv: folds for cross-fitting the internal test set's age-bias correction.
        sex: ``(train sex (n_train,), internal sex (n_internal,))`` labels for the sex probe, or None.
        analysis: compute :func:`collateral_scores` (``site_given_age_bacc``, ``sex_bacc``);
            otherwise they are None.

    Returns:
        A dict with ``int_mae``, ``bacc`` (fraction), ``ext_mae``, ``challenge_score``,
        ``int_rmse``, ``ext_rmse``, ``int_r``, ``ext_r``, ``int_per_site_mae``,
        ``ext_per_site_mae`` (None without external sites), ``bacc_chance`` (1 / number of
        training sites), ``alpha``, ``C``, the probes' cross-validated scores, counts, the
        settings, and ``predictions``: ``internal``, ``external`` (Ridge probe, years),
        ``train_oof`` (out-of-fold Ridge predictions at the selected alpha, same folds),
        ``internal_site`` (site probe), ``gap`` and ``corrected_gap`` (``{split: (n,)}``, the
        gaps ``predicted - age`` and the age-bias-corrected gaps). ``brain_age_gap``
        summarises the gap and its age-bias correction
        (:func:`~brainage.evaluation.brain_age_gap.held_out_gap_correction`: line
        fitted on the internal test set, cross-fitted over ``bias_cv`` folds for the internal
        subjects themselves, folds shuffled with the settings' ``random_state`` or 0): slope,
        intercept, mean and std of the raw and corrected gaps per split, and their correlation
        with age. When the correction is undefined it warns and the corrected gaps are NaN.
        ``site_given_age_bacc``, ``sex_bacc``, ``sex_chance``: the analysis probes
        (:func:`collateral_scores`), not challenge scores.

    Raises:
        ValueError: bad input (see :func:`check_features`), a training set with one site,
            feature dimensions that differ between splits, or more than 10,000 columns.
    """
    s = settings or ProbeSettings()
    tr, inn, ex = _checked_splits((train, internal, external), names)
    over = _check_protocol_limits(tr, s, allow_over_limit)

    probes = _fit_probes(s, tr, inn, ex)
    bacc = _balanced_accuracy(inn.sites, probes.internal_site)
    unseen = _warn_about_internal_sites(inn, tr)
    if sex is not None:
        for labels, split in ((sex[0], tr), (sex[1], inn)):
            if len(labels) != len(split.ages):
                raise BrainAgeError(f"{split.name}: {len(split.ages)} feature rows but {len(labels)} sex labels")
    collateral = (
        collateral_scores(tr.triple(), inn.triple(), sex, s)
        if analysis
        else {"site_given_age_bacc": None, "sex_bacc": None, "sex_chance": None}
    )

    raw_gap, corrected_gap, gap_summary = held_out_gap_correction(
        {"train": tr.ages, "internal_test": inn.ages, "external_test": ex.ages},
        {"train": probes.train_oof, "internal_test": probes.internal, "external_test": probes.external},
        n_splits=int(bias_cv),
        random_state=s.random_state if s.random_state is not None else 0,
    )
    return _scores(s, tr, inn, ex, probes, bacc, unseen, collateral, over, gap_summary, raw_gap, corrected_gap)


@dataclass(frozen=True)
class _Split:
    """One validated split: ``features`` (n, p), ``ages`` (n,) years, ``sites`` (n,) str or None."""

    name: str
    features: np.ndarray
    ages: np.ndarray
    sites: np.ndarray | None

    def triple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return self.features, self.ages, self.sites


@dataclass(frozen=True)
class _Probes:
    """The challenge's two probes fitted on the training split, and their predictions (years, site labels)."""

    age: GridSearchCV
    site: GridSearchCV
    n_conv: int  # saga convergence warnings of the site probe's grid search
    train_oof: np.ndarray  # (n_train,) out-of-fold Ridge predictions at the selected alpha
    internal: np.ndarray  # (n_internal,)
    external: np.ndarray  # (n_external,)
    internal_site: np.ndarray  # (n_internal,) predicted site labels


def _checked_splits(triples: Sequence[Triple], names: Sequence[str]) -> tuple[_Split, _Split, _Split]:
    """The three validated splits; sites are required for train and internal test, and one feature width."""
    n_train, n_int, n_ext = names
    tr, inn, ex = (
        _Split(name, *check_features(*_unpack(triple, name), name=name))
        for triple, name in zip(triples, (n_train, n_int, n_ext), strict=True)
    )
    if tr.sites is None:
        raise BrainAgeError(f"{n_train}: sites are required (the site probe is fitted on them)")
    if inn.sites is None:
        raise BrainAgeError(f"{n_int}: sites are required (BAcc is measured on them)")
    p = tr.features.shape[1]
    for split in (inn, ex):
        if split.features.shape[1] != p:
            raise BrainAgeError(f"{split.name}: {split.features.shape[1]} feature columns but {n_train} has {p}")
    return tr, inn, ex


def _check_protocol_limits(tr: _Split, s: ProbeSettings, allow_over_limit: bool) -> bool:
    """Raise when the probes cannot be fitted on ``tr``; returns whether the columns exceed the challenge's limit."""
    train_sites = np.unique(tr.sites)
    if train_sites.size < 2:
        raise BrainAgeError(
            f"{tr.name}: all {len(tr.sites)} training subjects come from one site ({train_sites[0]!r}); "
            "the site probe (a classifier) and hence BAcc and the challenge score are undefined"
        )
    if len(tr.ages) < s.cv:
        raise BrainAgeError(f"{tr.name}: {len(tr.ages)} subjects, fewer than the {s.cv} cross-validation folds")
    sites, counts = np.unique(tr.sites, return_counts=True)
    if counts.max() < int(s.cv):
        # scikit-learn's StratifiedKFold (the site probe's folds) needs one site with at least cv subjects
        raise BrainAgeError(
            f"{tr.name}: cv (--cv) is {s.cv}, but every training site has fewer subjects than that (largest: "
            f"site {sites[counts.argmax()]!r} with {counts.max()}, smallest {counts.min()}); the site probe's "
            "stratified folds need at least one site with cv subjects: lower --cv or give more subjects"
        )
    p = tr.features.shape[1]
    over = p > MAX_FEATURES
    if over and not allow_over_limit:
        raise BrainAgeError(
            f"{tr.name}: {p} feature columns; the OpenBHB challenge accepts at most {MAX_FEATURES} "
            "(pass allow_over_limit=True / --allow-over-limit to score anyway, outside the protocol)"
        )
    if over:
        warnings.warn(
            f"{p} feature columns exceed the challenge limit of {MAX_FEATURES}: scores are not challenge-compliant",
            UserWarning,
            stacklevel=3,  # the caller of evaluate_features
        )
    return over


def _fit_probes(s: ProbeSettings, tr: _Split, inn: _Split, ex: _Split) -> _Probes:
    """Fit the age and site probes on the training split and predict the other splits."""
    age = clone(age_probe(s)).fit(tr.features, tr.ages)
    site, n_conv = _fit_classifier(s, tr.features, tr.sites)
    alpha = float(age.best_params_["alpha"])
    pred_in = age.predict(inn.features).astype(float)
    pred_ex = age.predict(ex.features).astype(float)
    pred_tr_oof = cross_val_predict(Ridge(alpha=alpha), tr.features, tr.ages, cv=int(s.cv)).astype(float)
    return _Probes(age, site, n_conv, pred_tr_oof, pred_in, pred_ex, site.predict(inn.features))


def _warn_about_internal_sites(inn: _Split, tr: _Split) -> list[str]:
    """Log what makes BAcc less than a balanced accuracy; returns the internal sites absent from train."""
    if np.unique(inn.sites).size == 1:
        log.warning("%s: one site only; BAcc is then that site's recall, not a balanced accuracy", inn.name)
    unseen = sorted(set(np.unique(inn.sites)) - set(np.unique(tr.sites)))
    if unseen:
        log.warning(
            "%s: site(s) %s absent from %s; the probe cannot predict them (recall 0)", inn.name, unseen, tr.name
        )
    return unseen


def _scores(
    s: ProbeSettings,
    tr: _Split,
    inn: _Split,
    ex: _Split,
    probes: _Probes,
    bacc: float,
    unseen: list[str],
    collateral: dict[str, Any],
    over: bool,
    gap_summary: dict[str, Any],
    raw_gap: dict[str, np.ndarray],
    corrected_gap: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The result of :func:`evaluate_features` (see its Returns), in its key order."""
    y_tr, y_in, y_ex = tr.ages, inn.ages, ex.ages
    pred_in, pred_ex = probes.internal, probes.external
    n_train_sites = np.unique(tr.sites).size
    ext_mae = mae(y_ex, pred_ex)
    return {
        "int_mae": mae(y_in, pred_in),
        "bacc": bacc,
        "ext_mae": ext_mae,
        "challenge_score": challenge_score(bacc, ext_mae),
        "int_rmse": rmse(y_in, pred_in),
        "ext_rmse": rmse(y_ex, pred_ex),
        "int_r": pearson_r(y_in, pred_in),
        "ext_r": pearson_r(y_ex, pred_ex),
        "train_oof_mae": mae(y_tr, probes.train_oof),
        "int_per_site_mae": per_site_mae(y_in, pred_in, inn.sites),
        "ext_per_site_mae": per_site_mae(y_ex, pred_ex, ex.sites) if ex.sites is not None else None,
        "bacc_chance": 1.0 / n_train_sites,
        **collateral,
        "n_sites_train": int(n_train_sites),
        "internal_sites_unseen_in_train": unseen,
        "alpha": float(probes.age.best_params_["alpha"]),
        "C": float(probes.site.best_params_["C"]),
        "age_probe_cv_r2": float(probes.age.best_score_),
        "site_probe_cv_bacc": float(probes.site.best_score_),
        "site_probe_converged": bool(np.all(np.asarray(probes.site.best_estimator_.n_iter_) < s.max_iter)),
        "site_probe_convergence_warnings": int(probes.n_conv),
        "n_train": int(len(y_tr)),
        "n_internal": int(len(y_in)),
        "n_external": int(len(y_ex)),
        "n_features": int(tr.features.shape[1]),
        "challenge_protocol": bool(s.is_challenge and not over),
        "probe_settings": s.to_dict(),
        "brain_age_gap": gap_summary,
        "predictions": {
            "train_oof": probes.train_oof,
            "internal": pred_in,
            "external": pred_ex,
            "internal_site": np.asarray(probes.internal_site).astype(str),
            "gap": raw_gap,
            "corrected_gap": corrected_gap,
        },
    }
