"""The on-disk exchange format between the debiasing steps: one ``.npz`` per split.

Keys: ``images`` ``uint8 (n, C, H, W)``, ``labels`` ``int64 (n,)``, ``bias`` ``int64 (n,)``
(-1 where unknown). Written atomically with :func:`brainage.io.save_npz`; read without
pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainage.data.npfiles import read_npz
from brainage.errors import BrainAgeError, InputNotFoundError

__all__ = ["ArraySet", "save_array_set", "load_array_set"]


@dataclass
class ArraySet:
    """Images with target and bias labels.

    Attributes:
        images: ``uint8 (n, C, H, W)``.
        labels: ``int64 (n,)``.
        bias: ``int64 (n,)``, -1 where the bias attribute is unknown.
        source: the file it was read from (named in messages), or ``""``.
    """

    images: np.ndarray
    labels: np.ndarray
    bias: np.ndarray
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def validate(self, source: str = "array set") -> None:
        """Raise ``ValueError`` (naming ``source``) unless shapes and dtypes are consistent."""
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise BrainAgeError(
                f"{source}: images must be uint8 (n, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        n = self.images.shape[0]
        for name in ("labels", "bias"):
            arr = getattr(self, name)
            if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
                raise BrainAgeError(f"{source}: {name} must be {n} integers, got {arr.dtype} {arr.shape}")
        if n and self.labels.min() < 0:
            raise BrainAgeError(f"{source}: negative target labels")

    def subset(self, index: np.ndarray) -> ArraySet:
        return ArraySet(self.images[index], self.labels[index], self.bias[index], self.source)

    @property
    def n_conflicting(self) -> int:
        """Samples whose bias label differs from their target label (bias known)."""
        known = self.bias >= 0
        return int(np.sum(known & (self.bias != self.labels)))


def save_array_set(path: str | os.PathLike, data: ArraySet) -> Path:
    """Write an :class:`ArraySet` as ``.npz`` atomically."""
    from brainage.io import save_npz

    data.validate(str(path))
    return save_npz(path, images=data.images, labels=data.labels.astype(np.int64), bias=data.bias.astype(np.int64))


def load_array_set(path: str | os.PathLike) -> ArraySet:
    """Read an :class:`ArraySet` written by :func:`save_array_set`.

    Raises:
        FileNotFoundError: missing file.
        ValueError: missing keys, wrong shapes or dtypes; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: data file not found")
    arrays = read_npz(path, "uint8 images (n, C, H, W), int labels and bias (n,)")
    missing = {"images", "labels", "bias"} - set(arrays)
    if missing:
        raise BrainAgeError(f"{path}: missing arrays {sorted(missing)}")
    data = ArraySet.__new__(ArraySet)
    data.images, data.labels, data.bias = arrays["images"], arrays["labels"], arrays["bias"]
    data.source = str(path)
    data.validate(str(path))
    return data
