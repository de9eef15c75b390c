"""Atomic file output: every file the project writes appears whole or not at all.

A writer produces a temporary sibling (same directory, so the final ``os.replace`` is an
atomic rename on POSIX) and renames it only after it has been written and flushed. On error
the temporary file is removed and any previous version of the target is left untouched.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

__all__ = [
    "atomic_path",
    "atomic_open",
    "atomic_dir",
    "temporary_affixes",
    "remove_stale_temporaries",
    "save_npy",
    "save_npz",
    "save_table",
    "save_json",
    "save_torch",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


_TMP_MARK = ".tmp"


def temporary_affixes(path: str | os.PathLike, suffix: str | None = None) -> tuple[str, str]:
    """``(prefix, suffix)`` of the temporary sibling :func:`atomic_path` creates for ``path``.

    The temporary file is ``<prefix><random><suffix>`` in ``path``'s folder:
    ``.<name>.<random>.tmp<suffix>``, ``suffix`` defaulting to the target's suffixes.
    """
    path = Path(path)
    if suffix is None:
        suffix = "".join(path.suffixes)
    return f".{path.name}.", f"{_TMP_MARK}{suffix}"


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left in ``folder`` for the files ``names``.

    A killed process cannot remove its temporary file; call this before writing those files
    again. Returns the paths removed.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        prefix, _ = temporary_affixes(folder / name)
        for stale in folder.glob(f"{glob.escape(prefix)}*{_TMP_MARK}*"):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``suffix`` defaults to the target's suffixes, so libraries that look at the extension
    (``np.save``, ``nibabel.save``, matplotlib) write the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temporary_affixes(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """``open`` that writes to a temporary sibling and renames it on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; it replaces ``path`` on success.

    Every file written into it is flushed to disk before the rename. An existing ``path`` is
    moved aside first and deleted after the swap, so a crash leaves either the old folder or
    the new one (plus a hidden leftover), never a mixture. On error the temporary folder is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, _ = temporary_affixes(path, suffix="")
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=_TMP_MARK, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write one array in ``.npy`` format atomically."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)
    return Path(path)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write named arrays in ``.npz`` format atomically (no pickled objects allowed)."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def save_table(path: str | os.PathLike, table: pd.DataFrame, index: bool = False) -> Path:
    """Write a DataFrame atomically; ``.tsv`` is tab-separated, ``.md`` Markdown, else CSV."""
    path = Path(path)
    with atomic_open(path, "w", newline="") as fh:
        if path.suffix == ".md":
            fh.write(table.to_markdown(index=index) + "\n")
        else:
            sep = "\t" if path.suffix == ".tsv" else ","
            table.to_csv(fh, sep=sep, index=index)
    return path


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (sorted keys, two-space indent)."""
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
        fh.write("\n")
    return Path(path)


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically; load it back with ``torch.load(path, weights_only=True)``."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")
