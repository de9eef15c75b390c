"""ComBat harmonisation of voxel features as a scikit-learn-style estimator.

Estimation is done by neuroHarmonize (Pomponio et al., "Harmonization of large MRI datasets for
the analysis of brain imaging patterns throughout the lifespan", NeuroImage 208:116450, 2020,
https://github.com/rpomponio/neuroHarmonize), itself built on neuroCombat (Fortin et al.,
NeuroImage 167:104-120, 2018; the method of Johnson et al., Biostatistics 8:118-127, 2007).

Model, per feature v (a voxel) and subject i of site j::

    x_iv = alpha_v + c_i . beta_v + gamma_jv + sqrt(delta_jv) * sigma_v * e_iv

with covariates ``c_i``: sex (dummy-coded) and, protected on the training split, age as a
quadratic polynomial of the standardised age ``z = (age - mean) / sd`` (``z``, ``z^2``).
``alpha_v`` (the grand mean), ``beta_v`` and ``sigma_v^2`` (the pooled variance) are per-feature
least-squares estimates; the site location ``gamma`` (here in data units, ``sigma * gamma`` of
neuroCombat's standardised one) and scale ``delta`` are estimated per site and feature and, with
empirical Bayes (``eb=True``), shrunk towards priors estimated *across features*.

The transform never uses age (test ages are the target), so it cannot be neuroCombat's
``(x - alpha - c.beta - gamma*) / sqrt(delta*) + alpha + c.beta``. Two age-free transforms,
applied alike to every split, the training split included (``adjust``):

- ``"location"`` (default): ``x - sigma * gamma*_j``. Exact without covariates: the covariate
  part ``alpha + c.beta`` (age included) passes through unchanged.
- ``"location-scale"``: ``(x - m_j - sigma * gamma*_j) / sqrt(delta*_j) + m_j`` with
  ``m_j = alpha + mean(c over site j's training subjects) . beta``: each subject's covariate
  part is replaced by its site's mean, so within-site age differences are rescaled by
  ``1 / sqrt(delta*_j)`` too. See ``docs/harmonization.md`` for the choice.

Chunking: features are processed in contiguous blocks of about ``chunk_size`` voxels and
neuroHarmonize is run on each block separately. Everything per feature (alpha, beta, sigma,
the site means/variances) is unchanged by this; only the EB hyper-parameters, which are
estimated across the features neuroHarmonize sees, now come from the block's voxels
instead of the whole brain: each block gets its own (regional) prior. With ``eb=False``
chunked and unchunked outputs are equal up to rounding; with EB they differ slightly, most
for small sites (which lean on the prior) where site effects vary across the brain (see
``docs/harmonization.md`` for the measured differences).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from brainage.data.cache import site_labels
from brainage.errors import BrainAgeError
from brainage.io import save_npz

__all__ = [
    "ADJUSTMENTS",
    "AGE",
    "DEFAULT_CHUNK_SIZE",
    "SITE",
    "ComBatHarmonizer",
    "chunk_bounds",
    "covariate_frame",
    "encode_sex",
]

SITE = "SITE"
AGE = "age"
#: Age-free transforms (see the module docstring).
ADJUSTMENTS = ("location", "location-scale")
#: ~20k voxels x 3,227 subjects is ~2.8 GB peak for one chunk (see benchmarks/harmonize.py).
DEFAULT_CHUNK_SIZE = 20_000
UNSEEN_POLICIES = ("raise", "nan", "passthrough")
_MODEL_FORMAT = 2


def _is_age_name(name: str) -> bool:
    return "age" in re.split(r"[^a-z0-9]+", str(name).lower())


def _check_covariate_names(covariates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(covariates, str):
        raise TypeError(f"covariates must be a sequence of column names, got the string {covariates!r}")
    names = tuple(str(c) for c in covariates)
    for name in names:
        if _is_age_name(name):
            raise BrainAgeError(
                f"covariate {name!r} refused: age enters ComBat only through age_degree (protected at fit "
                "time on the training split, never used by transform)"
            )
        if name == SITE:
            raise BrainAgeError(f"{SITE!r} is the batch column, not a covariate")
    if len(set(names)) != len(names):
        raise BrainAgeError(f"duplicate covariates in {list(names)}")
    return names


def encode_sex(values: Sequence | pd.Series) -> np.ndarray:
    """Dummy-code sex: female -> 0.0, male -> 1.0 ("f"/"m" and numeric 0/1 accepted).

    Raises:
        ValueError: a missing or unknown value (the first one is named).
    """
    series = pd.Series(values).reset_index(drop=True)
    codes = {"female": 0.0, "f": 0.0, "male": 1.0, "m": 1.0, "0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}
    out = series.astype(str).str.strip().str.lower().map(codes)
    bad = out.isna() | series.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise BrainAgeError(f"sex value {series.iloc[i]!r} (row {i}) is not one of 'male', 'female', 'm', 'f', 0, 1")
    return out.to_numpy(dtype=np.float64)


def covariate_frame(table: pd.DataFrame, covariates: Sequence[str] = ("sex",), age: bool = True) -> pd.DataFrame:
    """The fit-time covariate frame, built from SITE, the named columns and (optionally) age only.

    Args:
        table: participants of the training rows (needs ``siteXacq`` or ``site``, each
            covariate, and ``age`` when ``age``).
        covariates: column names; ``sex`` is dummy-coded (:func:`encode_sex`), others must be
            numeric. Any name with an ``age`` token is refused (age has its own argument).
        age: copy the ``age`` column (years) for :class:`ComBatHarmonizer` to protect.
            Only ever for the training split: ``transform`` takes site labels alone.

    Returns:
        DataFrame with ``SITE`` (str: the challenge's site label, ``siteXacq`` when present),
        the covariates (float64) and ``age`` (float64, when asked), in that order.
    """
    names = _check_covariate_names(covariates)
    wanted = [*names, AGE] if age else list(names)
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise BrainAgeError(
            f"covariate column(s) {missing} not in the participants table (columns: {list(table.columns)})"
        )
    frame = pd.DataFrame({SITE: site_labels(table)})
    for name in names:
        if name == "sex":
            frame[name] = encode_sex(table[name])
        else:
            frame[name] = pd.to_numeric(table[name], errors="raise").to_numpy(dtype=np.float64)
    if age:
        frame[AGE] = pd.to_numeric(table[AGE], errors="raise").to_numpy(dtype=np.float64)
    return frame


def chunk_bounds(n_features: int, chunk_size: int) -> np.ndarray:
    """(n_chunks + 1,) int64 boundaries splitting ``n_features`` into near-equal contiguous chunks.

    ``ceil(n_features / chunk_size)`` chunks whose widths differ by at most one, so no chunk is a
    tiny remainder whose EB priors would rest on a handful of voxels.
    """
    if chunk_size < 2:
        raise BrainAgeError(
            f"chunk_size must be >= 2 (EB priors are estimated across the voxels of a chunk), got {chunk_size}"
        )
    n_chunks = max(1, -(-int(n_features) // int(chunk_size)))
    return (np.arange(n_chunks + 1, dtype=np.int64) * int(n_features)) // n_chunks


def _learn():
    # neuroHarmonize's top-level import pulls in nibabel helpers; import the module used.
    return importlib.import_module("neuroHarmonize.harmonizationLearn").harmonizationLearn


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence neuroCombat's np.matrix PendingDeprecationWarning (harmless, once per chunk)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the matrix subclass", category=PendingDeprecationWarning)
        yield


def _age_free(
    x: np.ndarray, location: np.ndarray, centre: np.ndarray | None = None, scale: np.ndarray | None = None
) -> np.ndarray:
    """``x - location``, or ``(x - centre - location) / sqrt(scale) + centre`` when a scale is given.

    All arrays broadcast to x's (n, w); location in data units (``sigma * gamma*``), scale is
    ``delta*``, centre is ``m_j``.
    """
    if scale is None:
        return x - location
    return (x - centre - location) / np.sqrt(scale) + centre


def _site_column(sites: Sequence | pd.Series | pd.DataFrame, n_rows: int, what: str) -> np.ndarray:
    """(n,) str site labels from an array or a frame's ``SITE`` column; any age column is refused."""
    if isinstance(sites, pd.DataFrame):
        ages = [c for c in sites.columns if _is_age_name(c)]
        if ages:
            raise BrainAgeError(
                f"{what}: the frame has age column(s) {ages}; the transform never uses age (pass site labels)"
            )
        if SITE not in sites.columns:
            raise BrainAgeError(f"{what}: the frame has no {SITE!r} column (columns: {list(sites.columns)})")
        sites = sites[SITE]
    labels = pd.Series(np.asarray(sites, dtype=object).ravel())
    if len(labels) != n_rows:
        raise BrainAgeError(f"{what}: X has {n_rows} rows but there are {len(labels)} site labels")
    if labels.isna().any():
        raise BrainAgeError(f"{what}: SITE is missing for row {int(np.flatnonzero(labels.isna())[0])}")
    return labels.astype(str).to_numpy()


class ComBatHarmonizer(TransformerMixin, BaseEstimator):
    """ComBat over voxels with age protected at fit time and an age-free transform.

    ``fit`` sees the training subjects' site, covariates and age (build the frame with
    :func:`covariate_frame`); ``transform`` sees site labels only, for every split alike.
    Chunked over features so whole-brain VBM of the full OpenBHB training set fits in memory.

    Args:
        covariates: covariate column names besides age (numeric; default sex dummy-coded 0/1).
        age_degree: degree of the polynomial in standardised age protected at fit time
            (0: age not modelled, 1: linear, 2: linear and quadratic, the default).
        adjust: the age-free transform, ``"location"`` or ``"location-scale"`` (module
            docstring).
        eb: empirical-Bayes shrinkage of the site effects (priors estimated per chunk).
        chunk_size: target voxels per chunk. Peak memory of one chunk is about
            ``5.3 * n_subjects * chunk_size * 8`` bytes (neuroHarmonize keeps ~4 float64
            (chunk, n) arrays alive besides the input); 20,000 -> ~2.8 GB at 3,227 subjects.
        unseen_sites: what ``transform`` does with rows of sites absent at fit time:
            ``"raise"``, ``"nan"`` or ``"passthrough"`` (returned unharmonised).
        progress: tqdm bar over chunks.

    Attributes (after fit; K sites, p features, q design covariates):
        sites_: (K,) site labels in neuroHarmonize's (sorted) order.
        covariates_: (q,) design covariate names, e.g. ``sex, age_z, age_z^2``.
        age_mean_, age_scale_: training mean and sd of age (years) behind ``age_z``; NaN
            without age.
        grand_mean_: (p,) alpha, input units.
        coef_: (q, p) covariate coefficients beta.
        var_pooled_: (p,) pooled residual variance sigma^2.
        gamma_star_, delta_star_: (K, p) site location (standardised units) and scale.
        site_design_mean_: (K, q) mean design covariates of each site's training subjects.
        train_design_mean_: (q,) mean design covariates of the training subjects.
        passthrough_: (p,) bool, features constant over the training set (left unchanged).
        chunk_bounds_: (n_chunks + 1,) feature boundaries of the chunks used at fit time.
        n_features_in_: p.

    Raises:
        ValueError: fewer than two sites, a site with one subject, NaN/inf inputs, a covariate
            without variance or confounded with SITE, an age-named covariate, an age column at
            transform time, mismatched shapes.
    """

    def __init__(
        self,
        covariates: Sequence[str] = ("sex",),
        age_degree: int = 2,
        adjust: str = "location",
        eb: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        unseen_sites: str = "raise",
        progress: bool = False,
    ) -> None:
        self.covariates = covariates
        self.age_degree = age_degree
        self.adjust = adjust
        self.eb = eb
        self.chunk_size = chunk_size
        self.unseen_sites = unseen_sites
        self.progress = progress

    # ------------------------------------------------------------------ validation

    def _check_params(self) -> tuple[str, ...]:
        if self.unseen_sites not in UNSEEN_POLICIES:
            raise BrainAgeError(f"unseen_sites must be one of {UNSEEN_POLICIES}, got {self.unseen_sites!r}")
        if self.adjust not in ADJUSTMENTS:
            raise BrainAgeError(f"adjust must be one of {ADJUSTMENTS}, got {self.adjust!r}")
        if not (isinstance(self.age_degree, (int, np.integer)) and 0 <= self.age_degree <= 3):
            raise BrainAgeError(f"age_degree must be an integer in 0..3, got {self.age_degree!r}")
        return _check_covariate_names(self.covariates)

    def _fit_frame(self, covars: pd.DataFrame, n_rows: int, covariates: tuple[str, ...]) -> pd.DataFrame:
        """The frame neuroHarmonize receives: SITE, the covariates, then age_z, age_z^2, ..."""
        expected = [SITE, *covariates] + ([AGE] if self.age_degree else [])
        if not isinstance(covars, pd.DataFrame):
            raise TypeError(f"covars must be a pandas DataFrame with columns {expected}, got {type(covars).__name__}")
        if sorted(map(str, covars.columns)) != sorted(expected):
            raise BrainAgeError(
                f"fit: covars must have exactly the columns {expected} (build it with covariate_frame), "
                f"got {list(covars.columns)}"
            )
        frame = pd.DataFrame({SITE: _site_column(covars[SITE], n_rows, "fit")})
        values = {}
        for name in expected[1:]:
            try:
                values[name] = pd.to_numeric(covars[name], errors="raise").to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise BrainAgeError(
                    f"fit: covariate {name!r} must be numeric (dummy-code sex with encode_sex): {err}"
                ) from err
            bad = ~np.isfinite(values[name])
            if bad.any():
                raise BrainAgeError(f"fit: covariate {name!r} has NaN/inf at row {int(np.flatnonzero(bad)[0])}")
        for name in covariates:
            frame[name] = values[name]
        self.age_mean_, self.age_scale_ = float("nan"), float("nan")
        if self.age_degree:
            age = values[AGE]
            self.age_mean_, self.age_scale_ = float(age.mean()), float(age.std())
            if not self.age_scale_ > 0:
                raise BrainAgeError(f"fit: age has no variance in the training set (all {age[0]!r})")
            z = (age - self.age_mean_) / self.age_scale_
            for degree in range(1, int(self.age_degree) + 1):
                frame["age_z" if degree == 1 else f"age_z^{degree}"] = z**degree
        return frame

    @staticmethod
    def _check_fit_frame(frame: pd.DataFrame) -> np.ndarray:
        sites, counts = np.unique(frame[SITE].to_numpy(), return_counts=True)
        if len(sites) < 2:
            raise BrainAgeError(
                f"the training set has a single site ({sites.tolist()}): ComBat needs at least two sites to estimate site effects"
            )
        lonely = sites[counts < 2]
        if len(lonely):
            raise BrainAgeError(
                f"site(s) {lonely.tolist()} have a single training subject: ComBat needs >= 2 subjects per site "
                "to estimate a site variance (drop or merge them)"
            )
        names = list(frame.columns[1:])
        for name in names:
            values = frame[name].to_numpy()
            if np.ptp(values) == 0:
                raise BrainAgeError(
                    f"covariate {name!r} has no variance in the training set (all values {values[0]!r})"
                )
        design = np.column_stack([frame[SITE].to_numpy()[:, None] == sites[None, :], frame[names].to_numpy()])
        if np.linalg.matrix_rank(design.astype(np.float64)) < design.shape[1]:
            raise BrainAgeError(
                f"covariate(s) {names} are confounded with SITE in the training set "
                "(e.g. every site has a single sex): the ComBat design matrix is singular"
            )
        return sites

    @staticmethod
    def _check_finite(block: np.ndarray, start: int, what: str) -> None:
        finite = np.isfinite(block)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise BrainAgeError(
                f"{what}: {int((~finite).sum())} NaN/inf value(s) in features {start}..{start + block.shape[1] - 1}, "
                f"first at row {int(row)}, feature {start + int(col)}"
            )

    @staticmethod
    def check_unseen_site_sizes(sites: Sequence, what: str | None = None) -> None:
        """Raise ``ValueError`` when a site absent at fit time has a single subject.

        The transductive strategy (:meth:`transform_unseen_columns`) estimates each such site's
        location and scale from its own subjects, which needs >= 2 per site. ``what`` prefixes
        the message.
        """
        values, counts = np.unique(np.asarray(sites), return_counts=True)
        if (counts < 2).any():
            raise BrainAgeError(
                (f"{what}: " if what else "")
                + f"external site(s) {values[counts < 2].tolist()} have a single subject: the transductive "
                "strategy estimates each external site from its own subjects and needs >= 2"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "gamma_star_"):
            raise NotFittedError("this ComBatHarmonizer is not fitted: call fit (or load a saved model) first")

    def _check_width(self, X: np.ndarray) -> None:
        if getattr(X, "ndim", None) != 2:
            raise BrainAgeError(f"X must be a 2-D (subjects, features) array, got shape {getattr(X, 'shape', None)}")
        if X.shape[1] != self.n_features_in_:
            raise BrainAgeError(f"X has {X.shape[1]} features but the model was fitted on {self.n_features_in_}")

    # ------------------------------------------------------------------ fit

    def fit(self, X: np.ndarray, covars: pd.DataFrame) -> ComBatHarmonizer:
        """Fit on (n, p) training features (float, memory-mapped arrays welcome) and their covars."""
        for _ in self.fit_chunks(_column_reader(X), X.shape[0], X.shape[1], covars):
            pass
        return self

    def fit_transform(self, X: np.ndarray, covars: pd.DataFrame) -> np.ndarray:  # type: ignore[override]
        """Fit, then return the (n, p) float64 training features through the age-free transform."""
        out = np.empty(X.shape, dtype=np.float64)
        for start, stop, block in self.fit_chunks(_column_reader(X), X.shape[0], X.shape[1], covars):
            out[:, start:stop] = block
        return out

    def fit_chunks(
        self,
        read: Callable[[int, int], np.ndarray],
        n_samples: int,
        n_features: int,
        covars: pd.DataFrame,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Validate now, then fit chunk by chunk, yielding (start, stop, transformed training block).

        ``read(start, stop)`` returns the (n_samples, stop - start) training features of one
        chunk; only one chunk is in memory at a time. The yielded block is the age-free
        :meth:`transform` of the training rows (not neuroHarmonize's own output, which uses
        each subject's age). The fitted attributes are complete once the iterator is exhausted.
        """
        covariates = self._check_params()
        frame = self._fit_frame(covars, n_samples, covariates)
        sites = self._check_fit_frame(frame)
        design = frame.iloc[:, 1:].to_numpy(dtype=np.float64)
        site_index = np.searchsorted(sites, frame[SITE].to_numpy())
        bounds = chunk_bounds(n_features, self.chunk_size)
        k, q, p = len(sites), design.shape[1], int(n_features)
        self.sites_ = sites
        self.covariates_ = np.asarray(frame.columns[1:], dtype=str)
        self.site_design_mean_ = np.stack([design[site_index == j].mean(axis=0) for j in range(k)]).reshape(k, q)
        self.train_design_mean_ = design.mean(axis=0).reshape(q)
        self.n_features_in_ = p
        self.chunk_bounds_ = bounds
        self.grand_mean_ = np.zeros(p)
        self.coef_ = np.zeros((q, p))
        self.var_pooled_ = np.ones(p)
        self.gamma_star_ = np.zeros((k, p))
        self.delta_star_ = np.ones((k, p))
        self.passthrough_ = np.zeros(p, dtype=bool)
        return self._fit_iter(read, frame, bounds, site_index)

    def _fit_iter(
        self, read: Callable[[int, int], np.ndarray], frame: pd.DataFrame, bounds: np.ndarray, site_index: np.ndarray
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        from tqdm.auto import tqdm

        learn = _learn()
        k = len(self.sites_)
        for start, stop in tqdm(
            list(zip(bounds[:-1], bounds[1:], strict=True)), desc="ComBat fit", unit="chunk", disable=not self.progress
        ):
            block = np.asarray(read(int(start), int(stop)), dtype=np.float64)
            self._check_finite(block, int(start), "fit")
            const = np.ptp(block, axis=0) == 0
            keep = ~const
            # A feature constant over the training set has zero pooled variance, which
            # neuroHarmonize turns into 0/0; such features are left unchanged instead.
            self.passthrough_[start:stop] = const
            self.grand_mean_[start:stop] = np.where(const, block[0], 0.0)
            if keep.any():
                data = block if keep.all() else block[:, keep]
                with _quiet():
                    # neuroHarmonize skips EB (and prints) for a single feature; do it quietly.
                    model, _ = learn(data, frame, eb=bool(self.eb) and keep.sum() > 1)
                del data
                idx = np.flatnonzero(keep) + start
                self.grand_mean_[idx] = model["stand_mean"][:, 0]
                self.coef_[:, idx] = model["B_hat"][k:]
                self.var_pooled_[idx] = model["var_pooled"][:, 0]
                self.gamma_star_[:, idx] = model["gamma_star"]
                self.delta_star_[:, idx] = model["delta_star"]
                del model
            out = self._adjust(block, site_index, int(start), int(stop))
            if not np.all(np.isfinite(out)):
                raise BrainAgeError(
                    f"fit: ComBat produced non-finite values in features {start}..{stop - 1} "
                    "(a site with zero variance at some voxel and eb=False?)"
                )
            yield int(start), int(stop), out

    # ------------------------------------------------------------------ the age-free transform

    def _adjust(self, block: np.ndarray, site_index: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Rows of the fitted sites ``site_index`` (n,) through the transform; features [start, stop)."""
        cols = slice(start, stop)
        location = np.sqrt(self.var_pooled_[cols]) * self.gamma_star_[:, cols][site_index]
        if self.adjust == "location":
            return _age_free(block, location)
        centre = self.grand_mean_[cols] + self.site_design_mean_[site_index] @ self.coef_[:, cols]
        return _age_free(block, location, centre, self.delta_star_[:, cols][site_index])

    def transform(self, X: np.ndarray, sites: Sequence | pd.DataFrame) -> np.ndarray:
        """(n, p) features of any subjects and their (n,) site labels -> (n, p) float64 harmonised.

        Age-free: ``sites`` is an array of labels or a frame whose ``SITE`` column is used (a
        frame with an age column is refused). Rows of unseen sites follow ``unseen_sites``.
        """
        self._check_fitted()
        self._check_width(X)
        out = np.empty(X.shape, dtype=np.float64)
        bounds = self.chunk_bounds_
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            out[:, start:stop] = self.transform_columns(X[:, start:stop], sites, int(start), int(stop))
        return out

    def transform_columns(self, block: np.ndarray, sites: Sequence | pd.DataFrame, start: int, stop: int) -> np.ndarray:
        """Harmonise features [start, stop) of (n, stop - start) ``block``; returns float64."""
        self._check_fitted()
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != stop - start:
            raise BrainAgeError(f"block shape {block.shape} does not match features [{start}, {stop})")
        labels = _site_column(sites, block.shape[0], "transform")
        seen = np.isin(labels, self.sites_)
        if not seen.all() and self.unseen_sites == "raise":
            raise BrainAgeError(
                f"transform: site(s) {sorted(set(labels[~seen]))} were not in the training set; ComBat has no "
                "parameters for them (set unseen_sites='nan' or 'passthrough', or see transform_unseen_sites)"
            )
        out = np.empty_like(block)
        if seen.any():
            self._check_finite(block[seen], start, "transform")
            out[seen] = self._adjust(block[seen], np.searchsorted(self.sites_, labels[seen]), start, stop)
        if not seen.all():
            out[~seen] = np.nan if self.unseen_sites == "nan" else block[~seen]
        return out

    def transform_unseen_sites(self, X: np.ndarray, sites: Sequence | pd.DataFrame) -> np.ndarray:
        """TRANSDUCTIVE: harmonise subjects of unseen sites with statistics of their own group.

        See :meth:`transform_unseen_columns`. Not something a challenge submission could do.
        """
        self._check_fitted()
        self._check_width(X)
        out = np.empty(X.shape, dtype=np.float64)
        bounds = self.chunk_bounds_
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            out[:, start:stop] = self.transform_unseen_columns(X[:, start:stop], sites, int(start), int(stop))
        return out

    def transform_unseen_columns(
        self, block: np.ndarray, sites: Sequence | pd.DataFrame, start: int, stop: int
    ) -> np.ndarray:
        """TRANSDUCTIVE: features [start, stop) of subjects from sites absent at fit time.

        Each new site's location/scale (and, with ``eb``, its EB priors over this chunk's
        features) is estimated from the rows given here, against the fitted grand mean and
        pooled variance at the *training* subjects' mean covariates (the new subjects' ages are
        not used, so a new site's mean age difference from the training cohort is removed with
        its site effect). Needs >= 2 subjects per new site and their site labels as a group.
        neuroHarmonize's own route for this (``harmonizationLearn(orig_model=...)``) crashes with
        "shapes not aligned" in 2.5.2, so the per-site step is written here with neuroCombat's EB
        solver (``it_sol``).
        """
        self._check_fitted()
        nc = importlib.import_module("neuroCombat.neuroCombat")
        block = np.asarray(block, dtype=np.float64)
        labels = _site_column(sites, block.shape[0], "transform_unseen_sites")
        known = np.isin(labels, self.sites_)
        if known.any():
            raise BrainAgeError(
                f"transform_unseen_sites: site(s) {sorted(set(labels[known]))} were seen at fit time; use transform"
            )
        self._check_finite(block, start, "transform_unseen_sites")
        self.check_unseen_site_sizes(labels, "transform_unseen_sites")
        cols = slice(start, stop)
        centre = self.grand_mean_[cols] + self.train_design_mean_ @ self.coef_[:, cols]
        sigma = np.sqrt(self.var_pooled_[cols])
        standardised = (block - centre) / sigma
        active = np.flatnonzero(~self.passthrough_[cols])
        out = block.copy()
        for site in np.unique(labels):
            rows = np.flatnonzero(labels == site)
            s = standardised[np.ix_(rows, active)]
            g_hat, d_hat = s.mean(axis=0), s.var(axis=0, ddof=1)
            if self.eb and s.shape[1] > 1:
                g_star, d_star = nc.it_sol(
                    s.T, g_hat, d_hat, g_hat.mean(), g_hat.var(ddof=1), nc.aprior(d_hat), nc.bprior(d_hat)
                )
            else:
                g_star, d_star = g_hat, d_hat
            values = block[np.ix_(rows, active)]
            location = sigma[active] * g_star
            if self.adjust == "location":
                out[np.ix_(rows, active)] = _age_free(values, location)
            else:
                out[np.ix_(rows, active)] = _age_free(values, location, centre[active], d_star)
        if not np.all(np.isfinite(out)):
            raise BrainAgeError(f"transform_unseen_sites: non-finite output in features {start}..{stop - 1}")
        return out

    # ------------------------------------------------------------------ persistence

    _ARRAYS = (
        "grand_mean",
        "coef",
        "var_pooled",
        "gamma_star",
        "delta_star",
        "site_design_mean",
        "train_design_mean",
        "passthrough",
        "chunk_bounds",
    )

    def save(self, path: str | os.PathLike) -> Path:
        """Write what the transform needs to ``.npz`` (no pickle), atomically.

        Keys: ``sites`` (K,) str, ``covariates`` (q,) design names, ``grand_mean`` (p,), ``coef``
        (q, p), ``var_pooled`` (p,), ``gamma_star`` / ``delta_star`` (K, p),
        ``site_design_mean`` (K, q), ``train_design_mean`` (q,), ``passthrough`` (p,) bool,
        ``chunk_bounds``, ``age_mean`` / ``age_scale`` (years), and the parameters
        ``input_covariates``, ``age_degree``, ``adjust``, ``eb``, ``chunk_size``, ``format``.
        """
        self._check_fitted()
        return save_npz(
            path,
            format=np.int64(_MODEL_FORMAT),
            sites=self.sites_.astype(str),
            covariates=self.covariates_.astype(str),
            input_covariates=np.asarray(_check_covariate_names(self.covariates), dtype=str),
            age_degree=np.int64(self.age_degree),
            adjust=np.str_(self.adjust),
            age_mean=np.float64(self.age_mean_),
            age_scale=np.float64(self.age_scale_),
            eb=np.bool_(self.eb),
            chunk_size=np.int64(self.chunk_size),
            **{key: getattr(self, f"{key}_") for key in self._ARRAYS},
        )

    @classmethod
    def load(cls, path: str | os.PathLike, unseen_sites: str = "raise") -> ComBatHarmonizer:
        """Read a model written by :meth:`save` (``allow_pickle=False``) and check its shapes."""
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "format" in arrays and int(arrays["format"]) != _MODEL_FORMAT:
            raise BrainAgeError(
                f"{path}: ComBat model format {int(arrays['format'])}, this version reads {_MODEL_FORMAT} "
                "(format 1 models used no age covariate: rerun `brainage harmonize`)"
            )
        needed = {
            "format",
            "sites",
            "covariates",
            "input_covariates",
            "age_degree",
            "adjust",
            "age_mean",
            "age_scale",
            "eb",
            "chunk_size",
            *cls._ARRAYS,
        }
        if needed - set(arrays):
            raise BrainAgeError(f"{path}: not a ComBat model (missing {sorted(needed - set(arrays))})")
        k, p = arrays["gamma_star"].shape
        q = len(arrays["covariates"])
        shapes = {
            "sites": (k,),
            "grand_mean": (p,),
            "coef": (q, p),
            "var_pooled": (p,),
            "delta_star": (k, p),
            "site_design_mean": (k, q),
            "train_design_mean": (q,),
            "passthrough": (p,),
        }
        for key, shape in shapes.items():
            if arrays[key].shape != shape:
                raise BrainAgeError(f"{path}: {key} has shape {arrays[key].shape}, expected {shape}")
        model = cls(
            covariates=tuple(arrays["input_covariates"].tolist()),
            age_degree=int(arrays["age_degree"]),
            adjust=str(arrays["adjust"]),
            eb=bool(arrays["eb"]),
            chunk_size=int(arrays["chunk_size"]),
            unseen_sites=unseen_sites,
        )
        model._check_params()
        for key in cls._ARRAYS:
            setattr(model, f"{key}_", arrays[key])
        model.sites_ = arrays["sites"].astype(str)
        model.covariates_ = arrays["covariates"].astype(str)
        model.passthrough_ = arrays["passthrough"].astype(bool)
        model.chunk_bounds_ = arrays["chunk_bounds"].astype(np.int64)
        model.age_mean_, model.age_scale_ = float(arrays["age_mean"]), float(arrays["age_scale"])
        model.n_features_in_ = p
        return model


def _column_reader(X: np.ndarray) -> Callable[[int, int], np.ndarray]:
    if getattr(X, "ndim", None) != 2:
        raise BrainAgeError(f"X must be a 2-D (subjects, features) array, got shape {getattr(X, 'shape', None)}")
    return lambda start, stop: X[:, start:stop]
