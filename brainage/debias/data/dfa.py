"""Folder-layout data sets of the debiasing literature: the DFA layout and image folders.

The DFA layout (Lee et al., "Learning Debiased Representation via Disentangled Feature
Augmentation", NeurIPS 2021, https://github.com/kakaoenterprise/Learning-Debiased-Disentangled)
is how Corrupted-CIFAR10, Colored-MNIST and bFFHQ are distributed::

    <root>/{0.5pct,1pct,2pct,5pct}/align/<class>/<name>_<label>_<bias>.png
    <root>/{0.5pct,1pct,2pct,5pct}/conflict/<class>/<name>_<label>_<bias>.png
    <root>/valid/...            (or <root>/<pct>/valid/...)
    <root>/test/...

The target and the bias label of each image are the last two ``_``-separated fields of its
file name; class sub-folders are optional (bFFHQ's valid/test folders are flat).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainage.errors import BrainAgeError, InputNotFoundError

__all__ = [
    "ImageRecord",
    "ImageList",
    "parse_dfa_name",
    "read_dfa",
    "read_bffhq",
    "load_images",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DFA_PERCENTS = ("0.5pct", "1pct", "2pct", "5pct")


@dataclass(frozen=True)
class ImageRecord:
    """One image on disk with its target label and bias label (-1 when unknown)."""

    path: Path
    label: int
    bias: int = -1


@dataclass
class ImageList:
    """A list of images on disk, the common result of the folder readers."""

    records: list[ImageRecord] = field(default_factory=list)
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def bias(self) -> np.ndarray:
        return np.array([r.bias for r in self.records], dtype=np.int64)

    def to_table(self):
        """A ``pandas.DataFrame`` with columns path, label, bias (the manifest format)."""
        import pandas as pd

        return pd.DataFrame({"path": [str(p) for p in self.paths], "label": self.labels, "bias": self.bias})


def parse_dfa_name(path: str | os.PathLike) -> tuple[int, int]:
    """``(label, bias)`` from a DFA file name ``<anything>_<label>_<bias>.<ext>``.

    Raises:
        ValueError: the name does not end in two integer fields; the message names the file.
    """
    path = Path(path)
    fields = path.stem.rsplit("_", 2)
    if len(fields) < 3:
        raise BrainAgeError(f"{path}: DFA file names must end in _<label>_<bias>{path.suffix}")
    try:
        return int(fields[1]), int(fields[2])
    except ValueError:
        raise BrainAgeError(
            f"{path}: DFA file names must end in _<label>_<bias>{path.suffix} with integer fields, "
            f"got {fields[1]!r} and {fields[2]!r}"
        ) from None


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _records(folder: Path, n_classes: int | None) -> list[ImageRecord]:
    out = []
    for path in _images_under(folder):
        label, bias = parse_dfa_name(path)
        if n_classes is not None and not (0 <= label < n_classes):
            raise BrainAgeError(f"{path}: label {label} outside [0, {n_classes})")
        out.append(ImageRecord(path, label, bias))
    return out


def read_dfa(
    root: str | os.PathLike,
    split: str = "train",
    percent: str = "0.5pct",
    n_classes: int | None = None,
    conflicting_only: bool = False,
) -> ImageList:
    """Read one split of a DFA-layout data set (Corrupted-CIFAR10, Colored-MNIST, bFFHQ).

    Args:
        root: the data set folder that holds the ``<pct>`` folders.
        split: ``"train"`` (``<pct>/align`` + ``<pct>/conflict``), ``"valid"`` or ``"test"``
            (looked up in ``<root>/<pct>/<split>`` first, then ``<root>/<split>``).
        percent: the bias-conflicting percentage folder, e.g. ``"0.5pct"``.
        n_classes: when given, labels outside ``[0, n_classes)`` raise.
        conflicting_only: keep only images whose label differs from their bias (bFFHQ's test).

    Raises:
        FileNotFoundError: a required folder is missing or holds no image.
        ValueError: a file name that does not parse.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: DFA data folder not found")
    if split == "train":
        folders = [root / percent / "align", root / percent / "conflict"]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise InputNotFoundError(f"{root}: missing DFA training folder(s) {missing}")
    elif split in ("valid", "test"):
        candidates = [root / percent / split, root / split]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            raise InputNotFoundError(f"{root}: no {split}/ folder (looked in {[str(c) for c in candidates]})")
        folders = found[:1]
    else:
        raise BrainAgeError(f"split must be train, valid or test, got {split!r}")
    records: list[ImageRecord] = []
    for folder in folders:
        records.extend(_records(folder, n_classes))
    if not records:
        raise InputNotFoundError(f"{root}: no image under {[str(f) for f in folders]}")
    if conflicting_only:
        records = [r for r in records if r.label != r.bias]
    return ImageList(records, root)


def read_bffhq(root: str | os.PathLike, split: str = "train", percent: str = "0.5pct") -> ImageList:
    """bFFHQ (Kim et al., "BiaSwap", WACV 2022) in the DFA layout.

    Target = age group (0 young, 1 old), bias = gender; 0.5 % of the training images are
    bias-conflicting. As in DFA and FairKL, the test split keeps only the bias-conflicting
    images.
    """
    return read_dfa(root, split, percent, n_classes=2, conflicting_only=(split == "test"))


def load_images(paths: Sequence[str | os.PathLike], size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Load RGB images with Pillow into ``uint8 (n, 3, H, W)``.

    Args:
        paths: image files.
        size: resize every image to ``size`` (``int`` = square, else ``(H, W)``) with bilinear
            filtering; ``None`` requires all images to have the same size.
    """
    from PIL import Image

    target = (size, size) if isinstance(size, int) else size
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img = img.convert("RGB")
                if target is not None and img.size != (target[1], target[0]):
                    img = img.resize((target[1], target[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except OSError as err:
            raise BrainAgeError(f"{p}: cannot read image ({err})") from err
        if arrays and arr.shape != arrays[0].shape:
            raise BrainAgeError(
                f"{p}: image size {arr.shape[:2]} differs from {arrays[0].shape[:2]}; pass a size to resize"
            )
        arrays.append(arr)
    if not arrays:
        return np.zeros((0, 3) + (target or (0, 0)), dtype=np.uint8)
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()
