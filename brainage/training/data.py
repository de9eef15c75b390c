"""Training data: the preprocessed cache read with numpy only, held in (device) memory, and views.

The cache format is the one written by :func:`brainage.data.preprocess.preprocess` (and, for
``combat_l1``, by the harmonisation step): ``cache.json``, ``<split>.npy`` (n, X, Y, Z) float16
and ``<split>.tsv``. It is read here without nibabel/pandas so that training runs on machines
that only have torch, monai and numpy.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SPLITS",
    "CacheSplitArrays",
    "VolumeStore",
    "build_augmentation",
    "cache_identity",
    "make_views",
    "open_cache_split",
    "read_cache_meta",
]

SPLITS: tuple[str, ...] = ("train", "internal_test", "external_test")


@dataclass
class CacheSplitArrays:
    """One split of a cache: memory-mapped volumes and the per-row labels.

    Attributes:
        name: split name.
        volumes: ``(n, X, Y, Z)`` memory-mapped float16 volumes.
        ages: ``(n,)`` float32 ages in years.
        sites: ``(n,)`` unicode site labels (``siteXacq`` when the table has it, else ``site``).
        participant_id: ``(n,)`` unicode participant identifiers.
    """

    name: str
    volumes: np.ndarray
    ages: np.ndarray
    sites: np.ndarray
    participant_id: np.ndarray

    def __len__(self) -> int:
        return int(self.volumes.shape[0])


def read_cache_meta(cache: str | os.PathLike) -> dict[str, Any]:
    """Read ``cache.json``.

    Raises:
        FileNotFoundError: the folder is not a finished cache.
        ValueError: ``cache.json`` is unreadable or has no grid ``shape``.
    """
    path = Path(cache) / "cache.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {cache} is not a finished training cache (run `brainage preprocess`)")
    try:
        meta = json.loads(path.read_text())
        shape = tuple(int(s) for s in meta["shape"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a valid cache description ({err})") from err
    if len(shape) != 3:
        raise ValueError(f"{path}: grid shape {shape} is not 3-D")
    meta["shape"] = list(shape)
    return meta


def cache_identity(cache: str | os.PathLike, split: str = "train", sample_rows: int = 32) -> dict[str, Any]:
    """What a checkpoint records about the cache it was trained on.

    ``fingerprint`` is a SHA-256 of ``cache.json``, the split's table and ``sample_rows`` evenly
    spaced volumes of the split: it changes when the data are rebuilt differently even if the
    preprocessing parameters (and so the cache's ``signature``) are the same, and costs a few
    reads even for the full OpenBHB set.
    """
    cache = Path(cache)
    meta = read_cache_meta(cache)
    digest = hashlib.sha256((cache / "cache.json").read_bytes())
    table = cache / f"{split}.tsv"
    if table.is_file():
        digest.update(table.read_bytes())
    array = cache / f"{split}.npy"
    if array.is_file():
        volumes = np.load(array, mmap_mode="r", allow_pickle=False)
        n = int(volumes.shape[0])
        for row in sorted({int(i) for i in np.linspace(0, n - 1, min(n, sample_rows))} if n else set()):
            digest.update(np.ascontiguousarray(volumes[row]).tobytes())
    return {
        "path": str(cache.resolve()),
        "shape": meta["shape"],
        "signature": meta.get("signature"),
        "fingerprint": digest.hexdigest()[:32],
    }


def _read_table(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        return {}
    return {key: [row[key] for row in rows] for key in rows[0]}


def open_cache_split(cache: str | os.PathLike, split: str) -> CacheSplitArrays:
    """Memory-map one split of a cache and read its labels.

    Raises:
        ValueError: unknown split, table and array disagree, missing columns, bad ages.
        FileNotFoundError: missing files.
    """
    if split not in SPLITS:
        hint = difflib.get_close_matches(split, SPLITS, n=1)
        raise ValueError(f"unknown split {split!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; valid splits are: {', '.join(SPLITS)}")
    cache = Path(cache)
    meta = read_cache_meta(cache)
    array_path, table_path = cache / f"{split}.npy", cache / f"{split}.tsv"
    for path in (array_path, table_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the cache {cache} has no {split!r} split")
    try:
        volumes = np.load(array_path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{array_path}: not a readable numeric .npy array ({err})") from err
    table = _read_table(table_path)
    n = len(next(iter(table.values()))) if table else 0
    if volumes.ndim != 4 or volumes.shape != (n, *meta["shape"]):
        raise ValueError(
            f"{array_path}: shape {tuple(volumes.shape)} does not match {table_path} ({n} rows) and the cache "
            f"grid {tuple(meta['shape'])}"
        )
    if n == 0:
        empty = np.zeros(0, dtype=str)
        return CacheSplitArrays(split, volumes, np.zeros(0, np.float32), empty, empty)
    missing = [c for c in ("participant_id", "age") if c not in table]
    if missing or not ("siteXacq" in table or "site" in table):
        raise ValueError(f"{table_path}: missing column(s) {missing or ['site']}; columns are {list(table)}")
    try:
        ages = np.asarray(table["age"], dtype=np.float32)
    except ValueError as err:
        raise ValueError(f"{table_path}: non-numeric age ({err})") from err
    if not np.isfinite(ages).all():
        raise ValueError(f"{table_path}: {int((~np.isfinite(ages)).sum())} missing or non-finite age(s)")
    sites = np.asarray(table["siteXacq" if "siteXacq" in table else "site"], dtype=str)
    return CacheSplitArrays(split, volumes, ages, sites, np.asarray(table["participant_id"], dtype=str))


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


class VolumeStore:
    """Batches of volumes from a memory-mapped split, held whole on the device when it fits.

    Resident mode copies the float16 split once to ``device`` (chunk by chunk, checking that
    every value is finite) and indexes it there: no loader, no host-device copies per step.
    Streaming mode reads each batch from the memory map (sorted row order for locality),
    checks it and copies it through pinned memory.

    Args:
        volumes: ``(n, X, Y, Z)`` array (a memory map).
        device: where batches are returned.
        resident: ``True``, ``False`` or ``None`` (= when the float16 split fits in half of the
            free memory of ``device``).
        name: used in error messages.
        chunk: volumes copied at a time in resident mode.

    Raises:
        ValueError: a non-finite voxel (named by row).
    """

    def __init__(
        self,
        volumes: np.ndarray,
        device: torch.device | str = "cpu",
        resident: bool | None = None,
        name: str = "split",
        chunk: int = 256,
    ) -> None:
        self.device = torch.device(device)
        self.source = volumes
        self.name = name
        self.shape = tuple(int(s) for s in volumes.shape[1:])
        nbytes = int(np.prod(volumes.shape, dtype=np.int64)) * 2
        if resident is None:
            resident = nbytes <= _free_bytes(self.device) // 2
        self.resident = bool(resident)
        self.data: Tensor | None = None
        if self.resident:
            self.data = torch.empty(tuple(volumes.shape), dtype=torch.float16, device=self.device)
            for start in range(0, len(volumes), chunk):
                block = torch.from_numpy(np.array(volumes[start:start + chunk], dtype=np.float16))
                self._check_finite(block, start)
                self.data[start:start + len(block)].copy_(block)

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def _check_finite(self, block: Tensor, start: int) -> None:
        finite = torch.isfinite(block).flatten(1).all(dim=1)
        if not bool(finite.all()):
            rows = (torch.nonzero(~finite).flatten() + start).tolist()
            raise ValueError(f"{self.name}: non-finite voxel values (NaN or inf) in row(s) {rows[:10]}")

    def batch(self, indices: Tensor | Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Volumes of ``indices`` as a ``(b, 1, X, Y, Z)`` tensor of ``dtype`` on the device."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.data is not None:
            return self.data[index.to(self.device)].unsqueeze(1).to(dtype)
        order = torch.argsort(index)
        rows = index[order].numpy()
        block = torch.from_numpy(np.array(self.source[rows], dtype=np.float16))
        self._check_finite(block, 0)
        block = block[torch.argsort(order)]
        if self.device.type == "cuda":
            block = block.pin_memory().to(self.device, non_blocking=True)
        return block.unsqueeze(1).to(dtype)


def build_augmentation(specs: Sequence[dict[str, Any]]):
    """A MONAI ``Compose`` of array transforms from ``{"name": ..., **kwargs}`` specs, or ``None``.

    Each transform works on one ``(1, X, Y, Z)`` channel-first volume.

    Raises:
        ValueError: unknown transform name (close matches listed) or invalid arguments.
    """
    if not specs:
        return None
    import monai.transforms as mt

    transforms = []
    for spec in specs:
        name = spec["name"]
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        cls = getattr(mt, name, None)
        if not (isinstance(cls, type) and issubclass(cls, mt.Transform)) or issubclass(cls, mt.MapTransform):
            candidates = [n for n in dir(mt) if n.startswith("Rand") and not n.endswith("d")]
            hint = difflib.get_close_matches(name, candidates, n=3)
            raise ValueError(
                f"unknown augmentation {name!r}: expected the name of a MONAI array transform "
                f"(monai.transforms, not a dictionary 'd' transform)" + (f"; close matches: {hint}" if hint else "")
            )
        try:
            transforms.append(cls(**kwargs))
        except TypeError as err:
            raise ValueError(f"augmentation {name}: invalid arguments {kwargs} ({err})") from err
    return mt.Compose(transforms)


def make_views(x: Tensor, views: int, augment) -> Tensor:
    """Stack ``views`` independently augmented copies of a batch, view-major.

    Args:
        x: ``(B, 1, X, Y, Z)`` volumes.
        views: ``V``.
        augment: a MONAI transform applied to each ``(1, X, Y, Z)`` volume, or ``None``.

    Returns:
        ``(V * B, 1, X, Y, Z)``; row ``v * B + b`` is view ``v`` of subject ``b``.
    """
    from monai.utils import convert_to_tensor

    out = []
    for _ in range(views):
        if augment is None:
            out.append(x)
        else:
            out.append(torch.stack([convert_to_tensor(augment(volume), track_meta=False) for volume in x]).to(x.dtype))
    return torch.cat(out)
