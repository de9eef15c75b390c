"""CIFAR-10 / CIFAR-100 from the "python version" pickled batches (Krizhevsky 2009).

Layout: CIFAR-10 ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``;
CIFAR-100 ``cifar-100-python/{train, test, meta}``. Each batch is a Python-2 pickle of a dict
with bytes keys: ``b"data"`` (uint8 ``(n, 3072)``, channel-major 32 x 32 planes),
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100).

Security: unpickling can run arbitrary code. These readers only unpickle files that the user
supplied as the CIFAR data set, with an unpickler that refuses every global except the numpy
array reconstruction functions a CIFAR batch needs, and they validate keys and shapes.
Never point them at files from an untrusted source.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from brainage.errors import BrainAgeError, InputNotFoundError

__all__ = ["load_cifar10", "load_cifar100", "read_cifar_batch"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler restricted to plain containers and numpy arrays (the CIFAR batch format)."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(path: str | os.PathLike, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch.

    Args:
        path: the batch file (user-supplied CIFAR data only, see the module docstring).
        label_key: ``b"labels"``, ``b"fine_labels"`` or ``b"coarse_labels"``.

    Returns:
        ``(images uint8 (n, 3, 32, 32), labels int64 (n,))``.

    Raises:
        FileNotFoundError: the batch is missing.
        ValueError: not a CIFAR batch (wrong keys, shapes or dtype); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: CIFAR batch not found")
    with open(path, "rb") as fh:
        try:
            batch = _CifarUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as err:
            raise BrainAgeError(f"{path}: not a CIFAR python batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise BrainAgeError(f"{path}: expected a dict with keys b'data' and {label_key!r}, got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise BrainAgeError(f"{path}: b'data' must be uint8 (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise BrainAgeError(
            f"{path}: {label_key!r} must hold {data.shape[0]} integers, got {labels.dtype} {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _check_labels(labels: np.ndarray, n_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise BrainAgeError(f"{path}: labels outside [0, {n_classes})")


def load_cifar10(folder: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``train`` (``data_batch_1..5``) or ``test`` (``test_batch``).

    Returns:
        ``(images uint8 (n, 3, 32, 32), labels int64 (n,))``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: CIFAR-10 folder not found")
    if split == "train":
        names = [f"data_batch_{i}" for i in range(1, 6)]
    elif split == "test":
        names = ["test_batch"]
    else:
        raise BrainAgeError(f"split must be 'train' or 'test', got {split!r}")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise InputNotFoundError(f"{folder}: missing CIFAR-10 batch file(s) {missing}")
    parts = [read_cifar_batch(folder / name, b"labels") for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    _check_labels(labels, 10, folder)
    return images, labels


def load_cifar100(
    folder: str | os.PathLike, split: str = "train", label: str = "fine"
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 ``train`` or ``test``, with the 100 ``fine`` or 20 ``coarse`` labels."""
    folder = Path(folder)
    if split not in ("train", "test"):
        raise BrainAgeError(f"split must be 'train' or 'test', got {split!r}")
    if label not in ("fine", "coarse"):
        raise BrainAgeError(f"label must be 'fine' or 'coarse', got {label!r}")
    path = folder / split
    if not path.is_file():
        raise InputNotFoundError(f"{folder}: missing CIFAR-100 batch file {split!r}")
    images, labels = read_cifar_batch(path, f"{label}_labels".encode())
    _check_labels(labels, 100 if label == "fine" else 20, path)
    return images, labels
