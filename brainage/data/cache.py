"""Read the training cache written by :func:`brainage.data.preprocess.preprocess`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.data.openbhb import SPLITS, OpenBHBError, open_npy

__all__ = ["CacheSplit", "TrainingCache", "site_labels"]


@dataclass
class CacheSplit:
    """One split of the cache.

    Attributes:
        volumes: memory-mapped (n, X, Y, Z) float16 array.
        table: participants of the rows, in row order (``age`` in years, ``site``, ...).
    """

    name: str
    volumes: np.ndarray
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ages(self) -> np.ndarray:
        """(n,) float32 ages in years."""
        return self.table["age"].to_numpy(dtype=np.float32)

    @property
    def sites(self) -> np.ndarray:
        """(n,) site labels as strings (``siteXacq`` when present, the challenge's classes)."""
        return site_labels(self.table)


def site_labels(table: pd.DataFrame) -> np.ndarray:
    """Site labels the OpenBHB site probe classifies: ``siteXacq`` if present, else ``site``."""
    column = "siteXacq" if "siteXacq" in table.columns else "site"
    return table[column].astype(str).to_numpy()


class TrainingCache:
    """A preprocessed cache folder: ``cache.json``, ``mask.nii.gz`` and per-split arrays."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / "cache.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: {self.path} is not a finished training cache "
                "(run `brainage preprocess` first)"
            )
        self.meta: dict = json.loads(meta_path.read_text())
        self.shape: tuple[int, int, int] = tuple(self.meta["shape"])  # type: ignore[assignment]
        self._splits: dict[str, CacheSplit] = {}

    @property
    def mask(self) -> np.ndarray:
        """Boolean (X, Y, Z) mask on the cache grid."""
        return np.asarray(nib.load(self.path / "mask.nii.gz").dataobj) > 0

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.meta["affine"], dtype=float)

    def split(self, name: str) -> CacheSplit:
        """Open one split (memory-mapped); checks the array against its index table."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        if name not in self._splits:
            array_path = self.path / f"{name}.npy"
            table_path = self.path / f"{name}.tsv"
            volumes = open_npy(array_path)
            table = pd.read_csv(table_path, sep="\t", dtype={"participant_id": str, "site": str, "siteXacq": str})
            if volumes.shape != (len(table),) + self.shape:
                raise OpenBHBError(
                    f"{array_path}: shape {volumes.shape} does not match {table_path} ({len(table)} rows) "
                    f"and the cache grid {self.shape}"
                )
            self._splits[name] = CacheSplit(name, volumes, table)
        return self._splits[name]
