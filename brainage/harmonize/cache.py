"""Harmonise a whole training cache with ComBat, streaming voxel chunks from disk.

Input: a cache written by :func:`brainage.data.preprocess.preprocess`. Output: a cache in the
same format (``<split>.npy`` float16 (n, X, Y, Z), harmonised on the mask and 0 outside,
``<split>.tsv``, ``mask.nii.gz``, ``cache.json``) plus ``model.npz``. The model is fitted on
``train`` only; ``internal_test`` (sites seen in train) is harmonised with it; the unseen
sites of ``external_test`` follow the external strategy (default: left unharmonised).

Memory: one chunk of mask voxels for all subjects of a split is in memory at a time. A chunk
of contiguous mask voxels covers a contiguous range of each volume, so it is read and
written with one positioned read/write per subject (no memory map, whose touched pages
would count towards the resident set).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brainage import __version__
from brainage.data.cache import SPLITS, TrainingCache, site_labels
from brainage.errors import BrainAgeError
from brainage.harmonize.combat import DEFAULT_CHUNK_SIZE, SITE, ComBatHarmonizer, covariate_frame
from brainage.io import atomic_path, make_folders, save_json

__all__ = ["EXTERNAL_STRATEGIES", "harmonize_cache"]

log = logging.getLogger(__name__)

#: How subjects of the external (unseen) sites are treated.
EXTERNAL_STRATEGIES: dict[str, str] = {
    "none": (
        "left unharmonised: ComBat has no parameters for unseen sites, and the challenge maps each "
        "image to features on its own, without site labels or group statistics"
    ),
    "transductive": (
        "TRANSDUCTIVE, not challenge-compliant: each external site's location/scale estimated from "
        "its own external subjects (site labels and group statistics of the test set are used; "
        "ages are not) against the training model at the training subjects' mean covariates"
    ),
}
#: What each age-free transform does, as recorded in cache.json.
ADJUST_TEXT: dict[str, str] = {
    "location": "x - sigma * gamma*_site (site location removed; covariate and age effects pass through)",
    "location-scale": (
        "(x - m_site - sigma * gamma*_site) / sqrt(delta*_site) + m_site, m_site = the site's "
        "mean fitted covariate effect over its training subjects"
    ),
}


class _NpyFile:
    """A C-ordered ``.npy`` file read/written by flat ranges of each row via pread/pwrite."""

    def __init__(self, path: Path, mode: str = "r") -> None:
        self.path = path
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
            self.offset = fh.tell()
        if fortran:
            raise BrainAgeError(f"{path}: Fortran-ordered arrays are not supported")
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row = int(np.prod(self.shape[1:], dtype=np.int64))
        self.fd = os.open(path, os.O_RDONLY if mode == "r" else os.O_RDWR)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """(n, hi - lo) values of flat positions [lo, hi) of every row."""
        out = np.empty((self.shape[0], hi - lo), dtype=self.dtype)
        size = self.dtype.itemsize
        for i in range(self.shape[0]):
            got = os.preadv(self.fd, [memoryview(out[i]).cast("B")], self.offset + (i * self.row + lo) * size)
            if got != (hi - lo) * size:
                raise BrainAgeError(f"{self.path}: short read ({got} of {(hi - lo) * size} bytes) at row {i}")
        return out

    def write(self, block: np.ndarray, lo: int) -> None:
        """Write (n, w) ``block`` at flat positions [lo, lo + w) of every row."""
        size = self.dtype.itemsize
        block = np.ascontiguousarray(block, dtype=self.dtype)
        for i in range(self.shape[0]):
            os.pwrite(self.fd, memoryview(block[i]).cast("B"), self.offset + (i * self.row + lo) * size)

    def close(self, sync: bool = False) -> None:
        if sync:
            os.fsync(self.fd)
        os.close(self.fd)


def _signature(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def harmonize_cache(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    external: str = "none",
    eb: bool = True,
    covariates: Sequence[str] = ("sex",),
    age_degree: int = 2,
    adjust: str = "location",
    progress: bool = True,
) -> dict:
    """Fit ComBat on the cache's training split and write the harmonised cache to ``out``.

    Args:
        cache: training cache folder (``brainage preprocess`` output).
        out: folder of the harmonised cache (must differ from ``cache``).
        chunk_size: voxels per chunk (see :class:`ComBatHarmonizer`).
        external: key of :data:`EXTERNAL_STRATEGIES`.
        eb: empirical-Bayes site effects.
        covariates: participants columns used as covariates besides SITE and age.
        age_degree: polynomial degree of the training ages protected at fit time (0: none).
        adjust: the age-free transform applied to every split (``location`` or
            ``location-scale``, see :mod:`brainage.harmonize.combat`).
        progress: tqdm bar over chunks.

    Returns:
        The metadata written to ``out/cache.json`` (the source's keys plus ``harmonization``).

    Raises:
        ValueError: invalid strategy, ``out`` equal to ``cache``, internal-test sites absent
            from train, and every error of :class:`ComBatHarmonizer` (one site, a one-subject
            site, NaN, covariate without variance). Nothing is left in ``out`` on error.
    """
    if external not in EXTERNAL_STRATEGIES:
        raise BrainAgeError(f"unknown external strategy {external!r}; expected one of {list(EXTERNAL_STRATEGIES)}")
    src = TrainingCache(cache)
    out = Path(out)
    if out.resolve() == src.path.resolve():
        raise BrainAgeError(f"--out {out} is the source cache itself; write the harmonised cache elsewhere")
    plan = _plan_splits(src, external, covariates, age_degree)
    model = ComBatHarmonizer(
        covariates=tuple(covariates), age_degree=age_degree, adjust=adjust, eb=eb, chunk_size=chunk_size
    )
    readers: dict[str, _NpyFile] = {}
    # Validates sites and covariates now, before anything is written; reads lazily.
    chunks = model.fit_chunks(
        lambda a, b: _read_chunk(readers["train"], plan.flat, a, b),
        len(plan.tables["train"]),
        len(plan.flat),
        plan.fit_frame,
    )
    _check_test_sites(model, plan.sites, set(plan.fit_frame[SITE]))

    make_folders(out)
    # A finished cache is recognised by cache.json: remove the old one before touching anything.
    (out / "cache.json").unlink(missing_ok=True)
    _write_splits(src, out, plan, model, chunks, readers, progress)

    info = _harmonization_info(model, plan.tables["train"], external, eb, age_degree, adjust, chunk_size)
    meta = dict(src.meta)
    params = {
        "source_signature": src.meta.get("signature"),
        "chunk_size": int(chunk_size),
        "external": external,
        "eb": bool(eb),
        "covariates": list(model.covariates_),
        "adjust": adjust,
        "age_degree": int(age_degree),
    }
    meta.update(
        {
            "source_cache": str(src.path.resolve()),
            "source_signature": src.meta.get("signature"),
            "signature": _signature(params),
            "brainage_version": __version__,
            "harmonization": info,
        }
    )
    save_json(out / "cache.json", meta)
    return meta


@dataclass
class _Plan:
    """The splits of one harmonisation, their participants, the fit covariates and the mask voxels."""

    splits: list[str]  # the source cache's splits, in SPLITS order
    harmonised: list[str]  # the splits ComBat transforms, ``train`` first
    tables: dict[str, pd.DataFrame]  # participants of every split
    fit_frame: pd.DataFrame  # fit-time covariates of the training rows
    sites: dict[str, np.ndarray]  # site label of every row of each harmonised split
    flat: np.ndarray  # (n_voxels,) flat indices of the mask voxels in a volume, increasing


def _plan_splits(src: TrainingCache, external: str, covariates: Sequence[str], age_degree: int) -> _Plan:
    """Which splits are harmonised and with what; raises when the cache has no ``train`` split."""
    splits = [s for s in SPLITS if s in src.meta.get("splits", {})]
    if "train" not in splits:
        raise BrainAgeError(f"{src.path}: the cache has no train split; ComBat is fitted on train")
    tables = {s: src.split(s).table for s in splits}
    harmonised = [s for s in splits if s != "external_test" or external == "transductive"]
    # Ages of the training split only: every split (train included) is transformed from its sites.
    fit_frame = covariate_frame(tables["train"], covariates, age=age_degree > 0)
    sites = {s: site_labels(tables[s]) for s in harmonised}
    flat = np.flatnonzero(src.mask.ravel())
    return _Plan(splits, harmonised, tables, fit_frame, sites, flat)


def _check_test_sites(model: ComBatHarmonizer, sites: dict[str, np.ndarray], train_sites: set[str]) -> None:
    """Internal-test sites must be training sites; external-test sites (transductive only) must not."""
    if "internal_test" in sites:
        unseen = sorted(set(sites["internal_test"]) - train_sites)
        if unseen:
            raise BrainAgeError(
                f"internal_test has site(s) {unseen} that are not in train; ComBat cannot harmonise them"
            )
    if "external_test" in sites:  # only with the transductive strategy
        seen = sorted(set(sites["external_test"]) & train_sites)
        if seen:
            raise BrainAgeError(f"external_test has site(s) {seen} that are also in train; they are not external")
        model.check_unseen_site_sizes(sites["external_test"])


def _write_splits(
    src: TrainingCache,
    out: Path,
    plan: _Plan,
    model: ComBatHarmonizer,
    chunks: Iterator[tuple[int, int, np.ndarray]],
    readers: dict[str, _NpyFile],
    progress: bool,
) -> None:
    """Every file of ``out`` but ``cache.json``; the harmonised arrays via hidden partial files renamed last.

    ``readers`` is filled here (the lazy ``chunks`` read the training split through it).
    """
    writers: dict[str, _NpyFile] = {}
    partials = {s: out / f".{s}.npy.partial" for s in plan.harmonised}
    try:
        for s in plan.harmonised:
            shape = src.split(s).volumes.shape
            np.lib.format.open_memmap(partials[s], mode="w+", dtype=np.float16, shape=shape).flush()
            readers[s] = _NpyFile(src.path / f"{s}.npy")
            writers[s] = _NpyFile(partials[s], mode="r+")
        _harmonise_chunks(plan, model, chunks, readers, writers, progress)
        for s in plan.harmonised:
            writers.pop(s).close(sync=True)

        model.save(out / "model.npz")
        with atomic_path(out / "mask.nii.gz") as tmp:
            shutil.copyfile(src.path / "mask.nii.gz", tmp)
        for s in plan.splits:
            with atomic_path(out / f"{s}.tsv") as tmp:
                shutil.copyfile(src.path / f"{s}.tsv", tmp)
            if s not in plan.harmonised:
                with atomic_path(out / f"{s}.npy") as tmp:
                    shutil.copyfile(src.path / f"{s}.npy", tmp)
        for s in plan.harmonised:
            os.replace(partials[s], out / f"{s}.npy")
    finally:
        for f in list(readers.values()) + list(writers.values()):
            f.close()
        for path in partials.values():
            path.unlink(missing_ok=True)


def _harmonise_chunks(
    plan: _Plan,
    model: ComBatHarmonizer,
    chunks: Iterator[tuple[int, int, np.ndarray]],
    readers: dict[str, _NpyFile],
    writers: dict[str, _NpyFile],
    progress: bool,
) -> None:
    """Fit chunk by chunk; write each chunk's training block and the test splits' transform of it."""
    bar = tqdm(total=len(model.chunk_bounds_) - 1, desc="harmonize", unit="chunk", disable=not progress)
    try:
        for start, stop, block in chunks:
            _write_chunk(writers["train"], plan.flat, start, stop, block)
            del block
            for s in plan.harmonised[1:]:
                if len(plan.tables[s]) == 0:
                    continue
                values = _read_chunk(readers[s], plan.flat, start, stop)
                if s == "external_test":
                    result = model.transform_unseen_columns(values, plan.sites[s], start, stop)
                else:
                    result = model.transform_columns(values, plan.sites[s], start, stop)
                _write_chunk(writers[s], plan.flat, start, stop, result)
            bar.update(1)
    finally:
        bar.close()


def _harmonization_info(
    model: ComBatHarmonizer,
    train: pd.DataFrame,
    external: str,
    eb: bool,
    age_degree: int,
    adjust: str,
    chunk_size: int,
) -> dict:
    """The ``harmonization`` entry of ``cache.json``: what was fitted on what, and how each split was treated."""
    return {
        "method": "ComBat",
        "implementation": f"neuroHarmonize {importlib.metadata.version('neuroHarmonize')}",
        "fitted_on": "train",
        "n_fit_subjects": len(train),
        "site_label": "siteXacq" if "siteXacq" in train.columns else "site",
        "sites": model.sites_.tolist(),
        "covariates": list(model.covariates_),
        "sex_coding": {"female": 0, "male": 1},
        "age_used": (
            f"protected at fit time on the training split only (polynomial of degree {age_degree} in "
            f"(age - {model.age_mean_:.2f}) / {model.age_scale_:.2f}); never used by the transform"
            if age_degree
            else False
        ),
        "adjust": adjust,
        "transform": ADJUST_TEXT[adjust],
        "eb": bool(eb),
        "eb_priors": "estimated per voxel chunk" if eb else "none (eb off)",
        "chunk_size": int(chunk_size),
        "n_chunks": int(len(model.chunk_bounds_) - 1),
        "n_passthrough_voxels": int(model.passthrough_.sum()),
        "train": "the same age-free transform as the test splits (not neuroHarmonize's fit output)",
        "internal_test": "harmonised with the training model, from the site labels only",
        "external_strategy": external,
        "external_test": EXTERNAL_STRATEGIES[external],
        "model": "model.npz",
    }


def _span(flat: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    return int(flat[start]), int(flat[stop - 1]) + 1


def _read_chunk(reader: _NpyFile, flat: np.ndarray, start: int, stop: int) -> np.ndarray:
    """(n, stop - start) float64 values of mask voxels [start, stop) of every subject."""
    lo, hi = _span(flat, start, stop)
    return reader.read(lo, hi)[:, flat[start:stop] - lo].astype(np.float64)


def _write_chunk(writer: _NpyFile, flat: np.ndarray, start: int, stop: int, values: np.ndarray) -> None:
    """Write (n, stop - start) values of mask voxels [start, stop) as float16, zeros off the mask."""
    lo, hi = _span(flat, start, stop)
    buf = np.zeros((values.shape[0], hi - lo), dtype=np.float16)
    buf[:, flat[start:stop] - lo] = values
    if not np.all(np.isfinite(buf)):
        raise BrainAgeError(f"harmonised values in voxels {start}..{stop - 1} do not fit float16 (overflow or NaN)")
    writer.write(buf, lo)
