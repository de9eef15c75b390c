"""Reading the ``.npy`` and ``.npz`` files a user gives: numpy's errors become a :class:`BrainAgeError`.

numpy reports a damaged file with whatever its reader met first: ``EOFError`` (an empty file),
``ValueError`` (random bytes, "pickled data"), ``zipfile.BadZipFile`` (a truncated ``.npz``),
``OSError``, or, for an ``.npz`` member that is not an ``.npy`` array, raw ``bytes`` where an
array was expected. These helpers turn each into one message naming the file and what was
expected. Needs numpy only, so the training cache reader can use them.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from brainage.errors import BrainAgeError, InputNotFoundError

__all__ = ["load_npy", "read_npz"]

#: What numpy raises for a file that is not a readable array (see the module docstring).
_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def load_npy(path: str | os.PathLike, what: str, mmap_mode: str | None = "r") -> np.ndarray:
    """The array of a numeric ``.npy`` file (memory-mapped by default), read without pickle.

    Args:
        path: the file.
        what: what the file should hold (ends the message), e.g. ``"the cache's volumes"``.
        mmap_mode: as :func:`numpy.load`.

    Raises:
        InputNotFoundError: no such file.
        BrainAgeError: empty, truncated or not an ``.npy`` array.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found; expected {what}")
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except _UNREADABLE as err:
        raise BrainAgeError(f"{path}: not a readable numeric .npy array ({err}); expected {what}") from err
    if not isinstance(array, np.ndarray):
        array.close()
        raise BrainAgeError(f"{path}: an .npz archive, not an .npy array; expected {what}")
    return array


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read into memory without pickle.

    Args:
        path: the file.
        what: what the file should hold (ends the message), e.g. ``"images, labels and bias"``.

    Returns:
        member name (without ``.npy``) -> array.

    Raises:
        InputNotFoundError: no such file.
        BrainAgeError: empty, truncated, not a zip archive, or a member that is not an ``.npy``
            array; the message names the file (and the member).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found; expected an .npz file of {what}")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                arrays = {key: data[key] for key in data.files}
    except _UNREADABLE as err:
        raise BrainAgeError(
            f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); expected {what}"
        ) from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise BrainAgeError(f"{path}: a single .npy array, not an .npz archive of {what}")
    foreign = sorted(key for key, value in arrays.items() if not isinstance(value, np.ndarray))
    if foreign:
        raise BrainAgeError(f"{path}: member(s) {foreign} are not .npy arrays; expected an .npz archive of {what}")
    return arrays
