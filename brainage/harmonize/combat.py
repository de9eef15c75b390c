"""ComBat harmonisation of voxel features as a scikit-learn-style estimator.

Wraps neuroHarmonize (Pomponio et al., "Harmonization of large MRI datasets for the analysis
of brain imaging patterns throughout the lifespan", NeuroImage 208:116450, 2020,
https://github.com/rpomponio/neuroHarmonize), itself built on neuroCombat (Fortin et al.,
NeuroImage 167:104-120, 2018; the method of Johnson et al., Biostatistics 8:118-127, 2007).

Model, per feature v (a voxel) and subject i of site j::

    x_iv = alpha_v + c_i . beta_v + gamma_jv + sqrt(delta_jv) * sigma_v * e_iv

with covariates ``c_i`` (here: sex, dummy-coded). ``alpha_v`` (the grand mean), ``beta_v``
and ``sigma_v^2`` (the pooled variance) are per-feature least-squares estimates; the site
location ``gamma`` and scale ``delta`` are estimated per site and feature and, with empirical
Bayes (``eb=True``), shrunk towards priors whose hyper-parameters (per site: mean and variance
of ``gamma`` over features, inverse-gamma moments of ``delta`` over features) are estimated
*across features*. Harmonised values are
``(x - alpha - c.beta - gamma*) / sqrt(delta*) + alpha + c.beta`` in units of the input.

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
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from brainage.data.cache import site_labels
from brainage.io import save_npz

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SITE",
    "ComBatHarmonizer",
    "chunk_bounds",
    "covariate_frame",
    "encode_sex",
]

SITE = "SITE"
#: ~20k voxels x 3,227 subjects is ~2.8 GB peak for one chunk (see benchmarks/harmonize.py).
DEFAULT_CHUNK_SIZE = 20_000
UNSEEN_POLICIES = ("raise", "nan", "passthrough")
_MODEL_FORMAT = 1


def _is_age_name(name: str) -> bool:
    return "age" in re.split(r"[^a-z0-9]+", str(name).lower())


def _check_covariate_names(covariates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(covariates, str):
        raise TypeError(f"covariates must be a sequence of column names, got the string {covariates!r}")
    names = tuple(str(c) for c in covariates)
    for name in names:
        if _is_age_name(name):
            raise ValueError(
                f"covariate {name!r} refused: age is the prediction target and is never a ComBat "
                "covariate here (feeding test ages into harmonisation leaks the target)"
            )
        if name == SITE:
            raise ValueError(f"{SITE!r} is the batch column, not a covariate")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate covariates in {list(names)}")
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
        raise ValueError(f"sex value {series.iloc[i]!r} (row {i}) is not one of 'male', 'female', 'm', 'f', 0, 1")
    return out.to_numpy(dtype=np.float64)


def covariate_frame(table: pd.DataFrame, covariates: Sequence[str] = ("sex",)) -> pd.DataFrame:
    """The covariate frame neuroHarmonize receives, built from SITE and the named columns only.

    Args:
        table: participants of the rows (needs ``siteXacq`` or ``site`` and each covariate).
        covariates: column names; ``sex`` is dummy-coded (:func:`encode_sex`), others must be
            numeric. Any name with an ``age`` token is refused.

    Returns:
        DataFrame with ``SITE`` (str: the challenge's site label, ``siteXacq`` when present)
        followed by the covariates (float64), in that order; no other column of ``table``
        (in particular not ``age``) is copied.
    """
    names = _check_covariate_names(covariates)
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise ValueError(f"covariate column(s) {missing} not in the participants table (columns: {list(table.columns)})")
    frame = pd.DataFrame({SITE: site_labels(table)})
    for name in names:
        if name == "sex":
            frame[name] = encode_sex(table[name])
        else:
            frame[name] = pd.to_numeric(table[name], errors="raise").to_numpy(dtype=np.float64)
    return frame


def chunk_bounds(n_features: int, chunk_size: int) -> np.ndarray:
    """(n_chunks + 1,) int64 boundaries splitting ``n_features`` into near-equal contiguous chunks.

    ``ceil(n_features / chunk_size)`` chunks whose widths differ by at most one, so no chunk is a
    tiny remainder whose EB priors would rest on a handful of voxels.
    """
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be >= 2 (EB priors are estimated across the voxels of a chunk), got {chunk_size}")
    n_chunks = max(1, -(-int(n_features) // int(chunk_size)))
    return (np.arange(n_chunks + 1, dtype=np.int64) * int(n_features)) // n_chunks


def _neuroharmonize():
    # neuroHarmonize's top-level import pulls in nibabel helpers; import the two modules used.
    learn = importlib.import_module("neuroHarmonize.harmonizationLearn")
    apply = importlib.import_module("neuroHarmonize.harmonizationApply")
    return learn.harmonizationLearn, apply.harmonizationApply


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence neuroCombat's np.matrix PendingDeprecationWarning (harmless, once per chunk)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the matrix subclass", category=PendingDeprecationWarning)
        yield


class ComBatHarmonizer(TransformerMixin, BaseEstimator):
    """ComBat over voxels, chunked so whole-brain VBM of the full OpenBHB training set fits in memory.

    Fitted on training subjects only; ``covars`` holds ``SITE`` and the covariates, nothing
    else (an ``age`` column is refused at fit and transform time). Build it with
    :func:`covariate_frame`.

    Args:
        covariates: covariate column names (numeric; default sex dummy-coded 0/1).
        eb: empirical-Bayes shrinkage of the site effects (priors estimated per chunk).
        chunk_size: target voxels per chunk. Peak memory of one chunk is about
            ``5.3 * n_subjects * chunk_size * 8`` bytes (neuroHarmonize keeps ~4 float64
            (chunk, n) arrays alive besides the input); 20,000 -> ~2.8 GB at 3,227 subjects.
        unseen_sites: what ``transform`` does with rows of sites absent at fit time:
            ``"raise"``, ``"nan"`` (neuroHarmonize's behaviour) or ``"passthrough"`` (returned
            unharmonised).
        progress: tqdm bar over chunks.

    Attributes (after fit; K sites, p features, q covariates):
        sites_: (K,) site labels in neuroHarmonize's (sorted) order.
        covariates_: (q,) covariate names, in design order.
        grand_mean_: (p,) alpha, input units.
        coef_: (q, p) covariate coefficients beta.
        var_pooled_: (p,) pooled residual variance sigma^2.
        gamma_star_, delta_star_: (K, p) site location (standardised units) and scale.
        passthrough_: (p,) bool, features constant over the training set (left unchanged).
        chunk_bounds_: (n_chunks + 1,) feature boundaries of the chunks used at fit time.
        n_features_in_: p.

    Raises:
        ValueError: fewer than two sites, a site with one subject, NaN/inf inputs, a covariate
            without variance or confounded with SITE, an age covariate, mismatched shapes.
    """

    def __init__(
        self,
        covariates: Sequence[str] = ("sex",),
        eb: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        unseen_sites: str = "raise",
        progress: bool = False,
    ) -> None:
        self.covariates = covariates
        self.eb = eb
        self.chunk_size = chunk_size
        self.unseen_sites = unseen_sites
        self.progress = progress

    # ------------------------------------------------------------------ validation

    def _frame(self, covars: pd.DataFrame, n_rows: int, covariates: tuple[str, ...], what: str) -> pd.DataFrame:
        if not isinstance(covars, pd.DataFrame):
            raise TypeError(f"covars must be a pandas DataFrame with columns {[SITE, *covariates]}, got {type(covars).__name__}")
        ages = [c for c in covars.columns if _is_age_name(c)]
        if ages:
            raise ValueError(
                f"covars has age column(s) {ages}: age is never given to ComBat here "
                f"(build covars with brainage.harmonize.covariate_frame: SITE and {list(covariates)} only)"
            )
        expected = [SITE, *covariates]
        if sorted(map(str, covars.columns)) != sorted(expected):
            raise ValueError(f"{what}: covars must have exactly the columns {expected}, got {list(covars.columns)}")
        if len(covars) != n_rows:
            raise ValueError(f"{what}: X has {n_rows} rows but covars has {len(covars)}")
        frame = pd.DataFrame({SITE: covars[SITE].to_numpy()})
        if frame[SITE].isna().any():
            raise ValueError(f"{what}: SITE is missing for row {int(np.flatnonzero(frame[SITE].isna())[0])}")
        frame[SITE] = frame[SITE].astype(str)
        for name in covariates:
            try:
                values = pd.to_numeric(covars[name], errors="raise").to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"{what}: covariate {name!r} must be numeric (dummy-code sex with encode_sex): {err}"
                ) from err
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{what}: covariate {name!r} has NaN/inf at row {int(np.flatnonzero(~np.isfinite(values))[0])}")
            frame[name] = values
        return frame

    def _check_fit_frame(self, frame: pd.DataFrame, covariates: tuple[str, ...]) -> np.ndarray:
        sites, counts = np.unique(frame[SITE].to_numpy(), return_counts=True)
        if len(sites) < 2:
            raise ValueError(
                f"the training set has a single site ({sites.tolist()}): ComBat needs at least two sites to estimate site effects"
            )
        lonely = sites[counts < 2]
        if len(lonely):
            raise ValueError(
                f"site(s) {lonely.tolist()} have a single training subject: ComBat needs >= 2 subjects per site "
                "to estimate a site variance (drop or merge them)"
            )
        for name in covariates:
            values = frame[name].to_numpy()
            if np.ptp(values) == 0:
                raise ValueError(f"covariate {name!r} has no variance in the training set (all values {values[0]!r})")
        design = np.column_stack([frame[SITE].to_numpy()[:, None] == sites[None, :], frame[list(covariates)].to_numpy()])
        if np.linalg.matrix_rank(design.astype(np.float64)) < design.shape[1]:
            raise ValueError(
                f"covariate(s) {list(covariates)} are confounded with SITE in the training set "
                "(e.g. every site has a single sex): the ComBat design matrix is singular"
            )
        return sites

    @staticmethod
    def _check_finite(block: np.ndarray, start: int, what: str) -> None:
        finite = np.isfinite(block)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise ValueError(
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
            raise ValueError(
                (f"{what}: " if what else "")
                + f"external site(s) {values[counts < 2].tolist()} have a single subject: the transductive "
                "strategy estimates each external site from its own subjects and needs >= 2"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "gamma_star_"):
            raise NotFittedError("this ComBatHarmonizer is not fitted: call fit (or load a saved model) first")

    # ------------------------------------------------------------------ fit

    def fit(self, X: np.ndarray, covars: pd.DataFrame) -> "ComBatHarmonizer":
        """Fit on (n, p) training features (float, memory-mapped arrays welcome) and their covars."""
        for _ in self.fit_chunks(_column_reader(X), X.shape[0], X.shape[1], covars):
            pass
        return self

    def fit_transform(self, X: np.ndarray, covars: pd.DataFrame) -> np.ndarray:  # type: ignore[override]
        """Fit and return the (n, p) float64 harmonised training features (neuroHarmonize's own output)."""
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
        """Validate now, then fit chunk by chunk, yielding (start, stop, harmonised training block).

        ``read(start, stop)`` returns the (n_samples, stop - start) training features of one
        chunk; only one chunk is in memory at a time. The fitted attributes are complete once
        the iterator is exhausted.
        """
        if self.unseen_sites not in UNSEEN_POLICIES:
            raise ValueError(f"unseen_sites must be one of {UNSEEN_POLICIES}, got {self.unseen_sites!r}")
        covariates = _check_covariate_names(self.covariates)
        frame = self._frame(covars, n_samples, covariates, "fit")
        sites = self._check_fit_frame(frame, covariates)
        bounds = chunk_bounds(n_features, self.chunk_size)
        k, q, p = len(sites), len(covariates), int(n_features)
        self.sites_ = sites
        self.covariates_ = np.asarray(covariates, dtype=str)
        self.n_features_in_ = p
        self.chunk_bounds_ = bounds
        self.grand_mean_ = np.zeros(p)
        self.coef_ = np.zeros((q, p))
        self.var_pooled_ = np.ones(p)
        self.gamma_star_ = np.zeros((k, p))
        self.delta_star_ = np.ones((k, p))
        self.passthrough_ = np.zeros(p, dtype=bool)
        return self._fit_iter(read, frame, bounds)

    def _fit_iter(self, read: Callable[[int, int], np.ndarray], frame: pd.DataFrame, bounds: np.ndarray):
        from tqdm.auto import tqdm

        learn, _ = _neuroharmonize()
        k = len(self.sites_)
        for start, stop in tqdm(list(zip(bounds[:-1], bounds[1:])), desc="ComBat fit", unit="chunk", disable=not self.progress):
            block = np.asarray(read(int(start), int(stop)), dtype=np.float64)
            self._check_finite(block, int(start), "fit")
            cols = slice(start, stop)
            const = np.ptp(block, axis=0) == 0
            keep = ~const
            # A feature constant over the training set has zero pooled variance, which
            # neuroHarmonize turns into 0/0; such features are left unchanged instead.
            self.passthrough_[cols] = const
            self.grand_mean_[cols] = np.where(const, block[0], 0.0)
            out = block
            if keep.any():
                data = block if keep.all() else block[:, keep]
                with _quiet():
                    # neuroHarmonize skips EB (and prints) for a single feature; do it quietly.
                    model, harmonised = learn(data, frame, eb=bool(self.eb) and keep.sum() > 1)
                del data
                idx = np.flatnonzero(keep) + start
                self.grand_mean_[idx] = model["stand_mean"][:, 0]
                self.coef_[:, idx] = model["B_hat"][k:]
                self.var_pooled_[idx] = model["var_pooled"][:, 0]
                self.gamma_star_[:, idx] = model["gamma_star"]
                self.delta_star_[:, idx] = model["delta_star"]
                del model
                if keep.all():
                    out = harmonised
                else:
                    out = block.copy()  # block may be a view of the caller's array
                    out[:, keep] = harmonised
                del harmonised
            bad = ~np.isfinite(out)
            if bad.any() or not np.all(np.isfinite(self.delta_star_[:, cols])):
                raise ValueError(
                    f"fit: ComBat produced non-finite values in features {start}..{stop - 1} "
                    "(a site with zero variance at some voxel and eb=False?)"
                )
            yield int(start), int(stop), out

    # ------------------------------------------------------------------ apply

    def neuroharmonize_model(self, start: int = 0, stop: int | None = None) -> dict:
        """A model dict that ``neuroHarmonize.harmonizationApply`` accepts, for features [start, stop).

        Rebuilt from the saved arrays: apply reads only the first column of ``stand_mean`` (the
        grand mean), the covariate rows of ``B_hat`` (its site rows multiply zeroed design
        columns, so zeros stand in for them), ``var_pooled``, ``gamma_star``, ``delta_star``.
        """
        self._check_fitted()
        cols = slice(start, self.n_features_in_ if stop is None else stop)
        k = len(self.sites_)
        m = self.grand_mean_[cols].shape[0]
        return {
            "SITE_labels": self.sites_,
            "B_hat": np.vstack([np.zeros((k, m)), self.coef_[:, cols]]),
            "stand_mean": self.grand_mean_[cols][:, None],
            "var_pooled": self.var_pooled_[cols][:, None],
            "gamma_star": self.gamma_star_[:, cols],
            "delta_star": self.delta_star_[:, cols],
            "info_dict": {"ref_level": None},
            "smooth_model": {"perform_smoothing": False, "smooth_cols": []},
        }

    def transform(self, X: np.ndarray, covars: pd.DataFrame) -> np.ndarray:
        """(n, p) features of any subjects -> (n, p) float64 harmonised with the fitted model.

        Rows of training sites go through ``harmonizationApply`` (any subset of sites, see
        :meth:`transform_columns`); rows of unseen sites follow ``unseen_sites``.
        """
        self._check_fitted()
        self._check_width(X)
        out = np.empty(X.shape, dtype=np.float64)
        bounds = self.chunk_bounds_
        for start, stop in zip(bounds[:-1], bounds[1:]):
            out[:, start:stop] = self.transform_columns(X[:, start:stop], covars, int(start), int(stop))
        return out

    def _check_width(self, X: np.ndarray) -> None:
        if getattr(X, "ndim", None) != 2:
            raise ValueError(f"X must be a 2-D (subjects, features) array, got shape {getattr(X, 'shape', None)}")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but the model was fitted on {self.n_features_in_}")

    def transform_columns(self, block: np.ndarray, covars: pd.DataFrame, start: int, stop: int) -> np.ndarray:
        """Harmonise features [start, stop) of (n, stop - start) ``block``; returns float64.

        neuroHarmonize's apply builds its design from the sites present in the batch and fails
        ("shapes not aligned") unless every training site is there (neuroHarmonize issue #50).
        Apply treats rows independently (each row is standardised with the fitted per-feature
        parameters and adjusted with its own site's gamma*/delta*), so one filler row per
        missing site is appended and dropped afterwards; it cannot change the real rows.
        """
        self._check_fitted()
        _, apply = _neuroharmonize()
        covariates = tuple(self.covariates_.tolist())
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != stop - start:
            raise ValueError(f"block shape {block.shape} does not match features [{start}, {stop})")
        frame = self._frame(covars, block.shape[0], covariates, "transform")
        sites = frame[SITE].to_numpy()
        seen = np.isin(sites, self.sites_)
        if not seen.all() and self.unseen_sites == "raise":
            raise ValueError(
                f"transform: site(s) {sorted(set(sites[~seen]))} were not in the training set; ComBat has no "
                "parameters for them (set unseen_sites='nan' or 'passthrough', or see transform_unseen_sites)"
            )
        out = np.empty_like(block)
        if seen.any():
            self._check_finite(block[seen], start, "transform")
            missing = np.setdiff1d(self.sites_, sites[seen])
            data = np.vstack([block[seen], np.tile(self.grand_mean_[start:stop], (len(missing), 1))])
            filler = pd.DataFrame({SITE: missing, **{c: np.zeros(len(missing)) for c in covariates}})
            batch = pd.concat([frame.loc[seen, [SITE, *covariates]], filler], ignore_index=True)
            with _quiet():
                result = apply(data, batch, self.neuroharmonize_model(start, stop))
            out[seen] = result[: int(seen.sum())]
        if not seen.all():
            out[~seen] = np.nan if self.unseen_sites == "nan" else block[~seen]
        return out

    def transform_unseen_sites(self, X: np.ndarray, covars: pd.DataFrame) -> np.ndarray:
        """TRANSDUCTIVE: harmonise subjects of unseen sites with statistics of their own group.

        See :meth:`transform_unseen_columns`. Not something a challenge submission could do.
        """
        self._check_fitted()
        self._check_width(X)
        out = np.empty(X.shape, dtype=np.float64)
        bounds = self.chunk_bounds_
        for start, stop in zip(bounds[:-1], bounds[1:]):
            out[:, start:stop] = self.transform_unseen_columns(X[:, start:stop], covars, int(start), int(stop))
        return out

    def transform_unseen_columns(self, block: np.ndarray, covars: pd.DataFrame, start: int, stop: int) -> np.ndarray:
        """TRANSDUCTIVE: features [start, stop) of subjects from sites absent at fit time.

        Each new site's location/scale (and, with ``eb``, its EB priors over this chunk's
        features) is estimated from the rows given here, against the fitted grand mean,
        covariate coefficients and pooled variance; this needs >= 2 subjects per new site and
        their site labels as a group. neuroHarmonize's own route for this
        (``harmonizationLearn(orig_model=...)``) crashes with "shapes not aligned" in 2.5.2,
        so the per-site step is written here with neuroCombat's EB solver (``it_sol``).
        """
        self._check_fitted()
        nc = importlib.import_module("neuroCombat.neuroCombat")
        covariates = tuple(self.covariates_.tolist())
        block = np.asarray(block, dtype=np.float64)
        frame = self._frame(covars, block.shape[0], covariates, "transform_unseen_sites")
        sites = frame[SITE].to_numpy()
        known = np.isin(sites, self.sites_)
        if known.any():
            raise ValueError(f"transform_unseen_sites: site(s) {sorted(set(sites[known]))} were seen at fit time; use transform")
        self._check_finite(block, start, "transform_unseen_sites")
        self.check_unseen_site_sizes(sites, "transform_unseen_sites")
        cols = slice(start, stop)
        # neuroCombat's design matrix holds covariates as float32; mirror it.
        cov = frame[list(covariates)].to_numpy(dtype=np.float32).astype(np.float64)
        fitted = self.grand_mean_[cols] + cov @ self.coef_[:, cols]
        scale = np.sqrt(self.var_pooled_[cols])
        standardised = (block - fitted) / scale
        active = ~self.passthrough_[cols]
        out = block.copy()
        for site in np.unique(sites):
            rows = np.flatnonzero(sites == site)
            s = standardised[np.ix_(rows, np.flatnonzero(active))]
            g_hat, d_hat = s.mean(axis=0), s.var(axis=0, ddof=1)
            if self.eb and s.shape[1] > 1:
                g_star, d_star = nc.it_sol(
                    s.T, g_hat, d_hat, g_hat.mean(), g_hat.var(ddof=1), nc.aprior(d_hat), nc.bprior(d_hat)
                )
            else:
                g_star, d_star = g_hat, d_hat
            adjusted = (s - g_star) / np.sqrt(d_star) * scale[active] + fitted[np.ix_(rows, np.flatnonzero(active))]
            out[np.ix_(rows, np.flatnonzero(active))] = adjusted
        if not np.all(np.isfinite(out)):
            raise ValueError(f"transform_unseen_sites: non-finite output in features {start}..{stop - 1}")
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted arrays to ``.npz`` (no pickle), atomically.

        Keys: ``sites`` (K,) str, ``covariates`` (q,) str, ``grand_mean`` (p,), ``coef`` (q, p),
        ``var_pooled`` (p,), ``gamma_star`` / ``delta_star`` (K, p) -- what apply needs -- plus
        ``passthrough`` (p,) bool and ``chunk_bounds`` (for the transductive option and the
        record), ``eb``, ``chunk_size`` and ``format``.
        """
        self._check_fitted()
        return save_npz(
            path,
            format=np.int64(_MODEL_FORMAT),
            sites=self.sites_.astype(str),
            covariates=self.covariates_.astype(str),
            grand_mean=self.grand_mean_,
            coef=self.coef_,
            var_pooled=self.var_pooled_,
            gamma_star=self.gamma_star_,
            delta_star=self.delta_star_,
            passthrough=self.passthrough_,
            chunk_bounds=self.chunk_bounds_,
            eb=np.bool_(self.eb),
            chunk_size=np.int64(self.chunk_size),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, unseen_sites: str = "raise") -> "ComBatHarmonizer":
        """Read a model written by :meth:`save` (``allow_pickle=False``) and check its shapes."""
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        needed = {"format", "sites", "covariates", "grand_mean", "coef", "var_pooled", "gamma_star",
                  "delta_star", "passthrough", "chunk_bounds", "eb", "chunk_size"}
        if needed - set(arrays):
            raise ValueError(f"{path}: not a ComBat model (missing {sorted(needed - set(arrays))})")
        if int(arrays["format"]) != _MODEL_FORMAT:
            raise ValueError(f"{path}: model format {int(arrays['format'])}, this version reads {_MODEL_FORMAT}")
        k, p = arrays["gamma_star"].shape
        q = len(arrays["covariates"])
        shapes = {"sites": (k,), "grand_mean": (p,), "coef": (q, p), "var_pooled": (p,), "delta_star": (k, p), "passthrough": (p,)}
        for key, shape in shapes.items():
            if arrays[key].shape != shape:
                raise ValueError(f"{path}: {key} has shape {arrays[key].shape}, expected {shape}")
        model = cls(covariates=tuple(arrays["covariates"].tolist()), eb=bool(arrays["eb"]),
                    chunk_size=int(arrays["chunk_size"]), unseen_sites=unseen_sites)
        model.sites_ = arrays["sites"].astype(str)
        model.covariates_ = arrays["covariates"].astype(str)
        model.grand_mean_ = arrays["grand_mean"]
        model.coef_ = arrays["coef"]
        model.var_pooled_ = arrays["var_pooled"]
        model.gamma_star_ = arrays["gamma_star"]
        model.delta_star_ = arrays["delta_star"]
        model.passthrough_ = arrays["passthrough"].astype(bool)
        model.chunk_bounds_ = arrays["chunk_bounds"].astype(np.int64)
        model.n_features_in_ = p
        return model


def _column_reader(X: np.ndarray) -> Callable[[int, int], np.ndarray]:
    if getattr(X, "ndim", None) != 2:
        raise ValueError(f"X must be a 2-D (subjects, features) array, got shape {getattr(X, 'shape', None)}")
    return lambda start, stop: X[:, start:stop]
