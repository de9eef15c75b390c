"""Read the training cache written by :func:`brainage.data.preprocess.preprocess`.

A cache folder holds ``cache.json`` (how it was made, the grid), ``mask.nii.gz`` and, per
split, ``<split>.npy`` (n, X, Y, Z) float16, ``<split>.tsv`` and (from ``brainage preprocess``)
``<split>.signature.json``, checked against ``cache.json`` when the split is opened. The harmonisation step writes
the same format. This is the project's one reader of it; it needs numpy only (pandas for
:attr:`CacheSplit.table`, nibabel for :attr:`TrainingCache.mask`, both imported on use), so the
training path runs on machines that have only torch, monai and numpy.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import locale
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brainage.data.npfiles import load_npy
from brainage.errors import BrainAgeError, InputNotFoundError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SPLITS",
    "CacheSplit",
    "TrainingCache",
    "cache_identity",
    "load_cache_mask",
    "check_trained_cache",
    "locate_trained_cache",
    "open_split",
    "read_cache_meta",
    "site_labels",
]

#: The OpenBHB splits: their one home (the readers, evaluation and the workflow import them; this module needs numpy only).
SPLITS: tuple[str, ...] = ("train", "internal_test", "external_test")
_VOLUMES = "the split's float16 volumes (n, X, Y, Z) written by brainage preprocess"


def _site_column(columns) -> str:
    """The site label column of a table with these columns: ``siteXacq`` if present, else ``site``."""
    return "siteXacq" if "siteXacq" in columns else "site"


@dataclass
class CacheSplit:
    """One split of a cache: memory-mapped volumes and the per-row labels.

    Attributes:
        name: split name.
        volumes: ``(n, X, Y, Z)`` memory-mapped float16 volumes.
        ages: ``(n,)`` float32 ages in years.
        sites: ``(n,)`` unicode site labels (``siteXacq`` when the table has it, else ``site``).
        participant_id: ``(n,)`` unicode participant identifiers.
        table_path: the split's ``<split>.tsv``.
        sex: ``(n,)`` unicode sex labels as written in the table, or None without a ``sex`` column.
    """

    name: str
    volumes: np.ndarray
    ages: np.ndarray
    sites: np.ndarray
    participant_id: np.ndarray
    table_path: Path
    sex: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    @property
    def table(self) -> pd.DataFrame:
        """The split's participants (every column of ``<split>.tsv``) in row order; needs pandas."""
        import pandas as pd

        return pd.read_csv(self.table_path, sep="\t", dtype={"participant_id": str, "site": str, "siteXacq": str})


def read_cache_meta(cache: str | os.PathLike) -> dict[str, Any]:
    """Read ``cache.json``.

    Raises:
        FileNotFoundError: the folder is not a finished cache.
        ValueError: ``cache.json`` is unreadable or has no grid ``shape``.
    """
    return _read_cache_json(cache)[0]


def _read_cache_json(cache: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """:func:`read_cache_meta` and the raw bytes of ``cache.json`` (one read)."""
    path = Path(cache) / "cache.json"
    if not path.is_file():
        raise InputNotFoundError(
            f"{path} not found: {cache} is not a finished training cache (run `brainage preprocess`)"
        )
    raw = path.read_bytes()
    try:
        # decoded as Path.read_text would (the locale's preferred encoding)
        meta = json.loads(raw.decode(locale.getpreferredencoding(False)))
        shape = tuple(int(s) for s in meta["shape"])
    except (ValueError, KeyError, TypeError) as err:
        raise BrainAgeError(f"{path}: not a valid cache description ({err})") from err
    if len(shape) != 3:
        raise BrainAgeError(f"{path}: grid shape {shape} is not 3-D")
    meta["shape"] = list(shape)
    return meta, raw


def cache_identity(cache: str | os.PathLike, split: str = "train", sample_rows: int = 32) -> dict[str, Any]:
    """What a checkpoint records about the cache it was trained on.

    ``fingerprint`` is a SHA-256 of ``cache.json``, the split's table and ``sample_rows`` evenly
    spaced volumes of the split: it changes when the data are rebuilt differently even if the
    preprocessing parameters (and so the cache's ``signature``) are the same, and costs a few
    reads even for the full OpenBHB set.
    """
    cache = Path(cache)
    meta, raw = _read_cache_json(cache)
    digest = hashlib.sha256(raw)
    table = cache / f"{split}.tsv"
    if table.is_file():
        digest.update(table.read_bytes())
    array = cache / f"{split}.npy"
    if array.is_file():
        volumes = load_npy(array, _VOLUMES)
        n = int(volumes.shape[0])
        for row in sorted({int(i) for i in np.linspace(0, n - 1, min(n, sample_rows))} if n else set()):
            digest.update(np.ascontiguousarray(volumes[row]).tobytes())
    return {
        "path": str(cache.resolve()),
        "shape": meta["shape"],
        "signature": meta.get("signature"),
        "fingerprint": digest.hexdigest()[:32],
    }


def locate_trained_cache(
    identity: dict[str, Any], cache: str | os.PathLike | None, model_path: str | os.PathLike, why: str
) -> tuple[Path, dict[str, Any]]:
    """The cache a model was trained on: ``cache``, else the path its :func:`cache_identity` recorded.

    Args:
        identity: the model file's ``cache`` record.
        cache: a folder given by the user, or ``None``.
        model_path: the model file (named in messages).
        why: what the cache is needed for (ends the message when it is missing).

    Returns:
        ``(folder, cache.json content)``; the content is not checked here (see
        :func:`check_trained_cache`).

    Raises:
        FileNotFoundError: no finished cache at that path.
    """
    recorded = cache if cache is not None else identity.get("path")
    if not recorded or not (Path(recorded) / "cache.json").is_file():
        raise InputNotFoundError(
            f"{model_path}: the training cache {recorded or '(not recorded)'} is not available; pass --cache with "
            f"the cache the run was trained on ({why})"
        )
    path = Path(recorded)
    try:
        return path, json.loads((path / "cache.json").read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise BrainAgeError(f"{path / 'cache.json'}: not a valid cache description ({err})") from err


def check_trained_cache(
    identity: dict[str, Any], path: str | os.PathLike, meta: dict[str, Any], model_path: str | os.PathLike, why: str
) -> None:
    """Refuse a cache other than the one a model's :func:`cache_identity` record describes.

    Compares the preprocessing signature, the content fingerprint and the grid.

    Raises:
        ValueError: the first difference found; ``why`` ends the fingerprint message.
    """
    signature = identity.get("signature")
    if signature and meta.get("signature") and signature != meta["signature"]:
        raise BrainAgeError(
            f"{path}: cache signature {meta['signature']} differs from the one the run was trained on ({signature})"
        )
    if identity.get("fingerprint") and cache_identity(path)["fingerprint"] != identity["fingerprint"]:
        raise BrainAgeError(
            f"{path}: not the cache the run was trained on (its content fingerprint differs from the one "
            f"recorded in {model_path}); {why}"
        )
    if list(meta.get("shape", [])) != list(identity.get("shape", meta.get("shape", []))):
        raise BrainAgeError(f"{path}: grid {meta.get('shape')} but the run was trained on {identity.get('shape')}")


def _read_table(path: Path) -> dict[str, list[str]]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except UnicodeDecodeError as err:
        raise BrainAgeError(f"{path}: not a text table in the locale's encoding ({err}); rebuild the cache") from err
    if not rows:
        return {}
    return {key: [row[key] for row in rows] for key in rows[0]}


def _check_split_signature(cache: Path, split: str, meta: dict[str, Any]) -> None:
    """Refuse a split written by another run than the one ``cache.json`` describes.

    ``brainage preprocess`` writes ``<split>.signature.json`` after each split and lists the
    signatures in ``cache.json`` (``split_signatures``). A split whose signature file disagrees
    comes from another run (an interrupted rerun with other parameters, or a rerun of other
    splits), so the folder mixes two caches. Caches without these records (written by other
    tools, such as the harmonisation step, or by older versions) are not checked.
    """
    expected = meta.get("split_signatures")
    sidecar = cache / f"{split}.signature.json"
    if not isinstance(expected, dict) or not sidecar.is_file():
        return
    try:
        found = json.loads(sidecar.read_text()).get("signature")
    except (ValueError, AttributeError) as err:
        raise BrainAgeError(f"{sidecar}: unreadable split signature ({err}); rebuild the cache") from err
    if found != expected.get(split):
        described = (
            f"signature {expected[split]}" if split in expected else f"no {split!r} split (it lists {sorted(expected)})"
        )
        raise BrainAgeError(
            f"{cache}: the {split!r} split (signature {found}, {sidecar.name}) was written by another "
            f"preprocessing run than the one cache.json describes ({described}): the folder mixes two "
            "caches. Rerun `brainage preprocess` into it (finished splits with matching inputs are kept)."
        )


def open_split(cache: str | os.PathLike, split: str, *, meta: dict[str, Any] | None = None) -> CacheSplit:
    """Memory-map one split of a cache and read its labels.

    ``meta`` (internal) is the cache's :func:`read_cache_meta`, when the caller has read it already.

    Raises:
        ValueError: unknown split, table and array disagree, missing columns, bad ages, or a
            split written by another preprocessing run than ``cache.json`` describes.
        FileNotFoundError: missing files.
    """
    if split not in SPLITS:
        hint = difflib.get_close_matches(split, SPLITS, n=1)
        raise BrainAgeError(
            f"unknown split {split!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid splits are: {', '.join(SPLITS)}"
        )
    cache = Path(cache)
    if meta is None:
        meta = read_cache_meta(cache)
    array_path, table_path = cache / f"{split}.npy", cache / f"{split}.tsv"
    for path in (array_path, table_path):
        if not path.is_file():
            raise InputNotFoundError(f"{path} not found: the cache {cache} has no {split!r} split")
    _check_split_signature(cache, split, meta)
    volumes = load_npy(array_path, _VOLUMES)
    table = _read_table(table_path)
    n = len(next(iter(table.values()))) if table else 0
    if volumes.ndim != 4 or volumes.shape != (n, *meta["shape"]):
        raise BrainAgeError(
            f"{array_path}: shape {tuple(volumes.shape)} does not match {table_path} ({n} rows) and the cache "
            f"grid {tuple(meta['shape'])}"
        )
    if n == 0:
        empty = np.zeros(0, dtype=str)
        return CacheSplit(split, volumes, np.zeros(0, np.float32), empty, empty, table_path)
    missing = [c for c in ("participant_id", "age") if c not in table]
    if missing or _site_column(table) not in table:
        raise BrainAgeError(f"{table_path}: missing column(s) {missing or ['site']}; columns are {list(table)}")
    try:
        ages = np.asarray(table["age"], dtype=np.float32)
    except ValueError as err:
        raise BrainAgeError(f"{table_path}: non-numeric age ({err})") from err
    if not np.isfinite(ages).all():
        raise BrainAgeError(f"{table_path}: {int((~np.isfinite(ages)).sum())} missing or non-finite age(s)")
    sites = np.asarray(table[_site_column(table)], dtype=str)
    sex = np.asarray(table["sex"], dtype=str) if "sex" in table else None
    return CacheSplit(split, volumes, ages, sites, np.asarray(table["participant_id"], dtype=str), table_path, sex)


class TrainingCache:
    """A finished cache folder: its metadata, mask and memory-mapped splits."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = read_cache_meta(self.path)
        self.shape: tuple[int, int, int] = tuple(self.meta["shape"])  # type: ignore[assignment]
        self._splits: dict[str, CacheSplit] = {}

    @property
    def mask(self) -> np.ndarray:
        """Boolean (X, Y, Z) mask on the cache grid."""
        return load_cache_mask(self.path)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-MNI affine of the cache grid (mm)."""
        return np.asarray(self.meta["affine"], dtype=float)

    def split(self, name: str) -> CacheSplit:
        """One split, memory-mapped and checked against its table (see :func:`open_split`)."""
        if name not in self._splits:
            self._splits[name] = open_split(self.path, name, meta=self.meta)
        return self._splits[name]


def load_cache_mask(cache: str | os.PathLike) -> np.ndarray:
    """Boolean (X, Y, Z) mask of a cache folder (``mask.nii.gz``); needs nibabel.

    Raises:
        InputNotFoundError: no ``mask.nii.gz``.
        BrainAgeError: not a readable NIfTI image.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(cache) / "mask.nii.gz"
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found: the cache {cache} is incomplete (rerun `brainage preprocess`)")
    try:
        return np.asarray(nib.load(path).dataobj) > 0
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise BrainAgeError(
            f"{path}: not a readable NIfTI mask ({type(err).__name__}: {err}); rerun `brainage preprocess`"
        ) from err


def site_labels(table: pd.DataFrame) -> np.ndarray:
    """Site labels the OpenBHB site probe classifies: ``siteXacq`` if present, else ``site``."""
    return table[_site_column(table.columns)].astype(str).to_numpy()
