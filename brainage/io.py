"""File input and output: atomic writes, output-folder locks, strict reading of user text files.

Every file the project writes appears whole or not at all: a writer produces a temporary
sibling (same directory, so the final ``os.replace`` is an atomic rename on POSIX) and renames
it only after it has been written and flushed. On error the temporary file is removed and any
previous version of the target is left untouched. :func:`output_lock` keeps two processes from
writing the same output at once; :func:`make_folders` and the writers refuse an output whose
path is taken by a file where a folder is needed, or the reverse, naming both. :func:`read_text`,
:func:`read_table` and :func:`read_json` read files users make (configs, participants tables,
scores) with errors that name the file and line; :func:`check_fields` checks a record's values.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import glob
import io
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage.errors import BrainAgeError, InputNotFoundError, OutputExistsError, OutputLockedError

__all__ = [
    "atomic_path",
    "atomic_open",
    "atomic_dir",
    "check_fields",
    "check_folder_path",
    "make_folders",
    "lock_path",
    "output_lock",
    "read_json",
    "read_table",
    "read_text",
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


def check_folder_path(folder: str | os.PathLike) -> Path:
    """Refuse a folder output on whose path a file stands (``folder`` or a parent); create nothing.

    Raises:
        OutputExistsError: ``folder`` or one of its parents is a file; the message names it.
    """
    folder = Path(folder)
    for existing in (folder, *folder.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "" if existing == folder else f" (needed as a parent folder of {folder})"
                raise OutputExistsError(
                    f"{existing} is a file, but a folder is needed there{where}; choose another output path"
                )
            break
    return folder


def make_folders(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder``, refusing a path on which a file stands where a folder is needed.

    Raises:
        OutputExistsError: ``folder`` or one of its parents is a file; the message names it.
    """
    folder = check_folder_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_output_file(path: Path) -> None:
    """Refuse a file output whose path is a folder, and create its parent folders."""
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder, but a file is to be written there; give a file name")
    make_folders(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``suffix`` defaults to the target's suffixes, so libraries that look at the extension
    (``np.save``, ``nibabel.save``, matplotlib) write the right format.
    """
    path = Path(path)
    _check_output_file(path)
    prefix, suffix = temporary_affixes(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise InputNotFoundError(f"nothing was written to the temporary file for {path}")
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
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, but a folder is to be written there; choose another output path")
    make_folders(path.parent)
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


# --------------------------------------------------------------------------- output locks

log = logging.getLogger(__name__)


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output (folder or file): ``.<name>.lock`` beside it."""
    output = Path(os.path.abspath(output))
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, command: str = "") -> Iterator[Path]:
    """Hold an exclusive lock on an output folder (or file) while this process writes it.

    The lock is an ``fcntl.flock`` on :func:`lock_path`, a file beside the output that holds the
    owner's pid, host, start time and ``command``; it is removed on exit. The kernel drops a
    flock when its process ends however it ends (SIGKILL included), so the file a killed
    process leaves behind never blocks the next run. Folders created only to hold the lock are
    removed again if they stay empty.

    Raises:
        OutputLockedError: another process holds the lock; the message names the output and
            the holder's pid and host.
    """
    import fcntl

    output = Path(os.path.abspath(output))
    path = lock_path(output)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    make_folders(path.parent)
    fd, locked = -1, False
    try:
        while not locked:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputLockedError(
                    f"{output} is being written by another process: {_lock_holder(fd)} (lock file {path}). "
                    "Wait for it to finish, or stop it; the lock of a process that has ended does not block"
                ) from None
            except OSError as err:  # a file system without flock (some network mounts)
                log.warning("cannot lock %s (%s): a concurrent writer of %s would not be detected", path, err, output)
                break
            # Its previous holder may have removed the file between our open and flock: retry on the new one.
            try:
                locked = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                locked = False
            if not locked:
                os.close(fd)
                fd = -1
        if locked:
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": command or " ".join(sys.argv),
                "since": datetime.datetime.now().isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
        yield path
    finally:
        if locked:
            path.unlink(missing_ok=True)  # before unlocking, so no process locks a file that is then removed
        if fd >= 0:
            os.close(fd)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break


def _lock_holder(fd: int) -> str:
    """``pid N on host H since T (command)`` from a lock file's content, as far as it can be read."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}, running `{info['command']}`"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process whose pid the lock file does not record"


# --------------------------------------------------------------------------- reading user files


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of a file a user made (a leading byte-order mark is dropped).

    Raises:
        FileNotFoundError: no such file.
        BrainAgeError: not UTF-8; the message names the file, the line and the byte.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise BrainAgeError(
            f"{path}, line {line}: byte {err.object[err.start]:#04x} is not UTF-8 text; save the file as UTF-8"
        ) from None


def read_table(path: str | os.PathLike, sep: str | None = "\t") -> pd.DataFrame:
    """A delimited text table a user made, read strictly, every value a string.

    Unlike ``pandas.read_csv`` it never takes the first column as an index (which pandas does
    when a row has one field more than the header, e.g. from a trailing tab: every column then
    shifts) and refuses any row whose field count differs from the header's. Quoting follows
    the ``csv`` module (as pandas). Lines without any value are skipped.

    Args:
        path: the table.
        sep: field delimiter; ``None`` takes a tab when the header line has one, else a comma.

    Returns:
        DataFrame of ``str`` whose columns are the header's (stripped) names and whose index is
        each row's 1-based line number in the file.

    Raises:
        FileNotFoundError: no such file.
        BrainAgeError: empty file, not UTF-8, bad quoting, duplicate column names, or a row of
            another length than the header; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"table not found: {path}")
    text = read_text(path)
    if not text.strip():
        raise BrainAgeError(
            f"{path}: the file is empty; expected a header line naming the columns, then one line per row"
        )
    if sep is None:
        first = next(line for line in text.splitlines() if line.strip())
        sep = "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header: list[str] | None = None
    rows, lines = [], []
    try:
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if header is None:
                header, header_line = [name.strip() for name in row], reader.line_num
            elif len(row) != len(header):
                delimiter = "tab" if sep == "\t" else repr(sep)
                raise BrainAgeError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, but the header (line {header_line}) has "
                    f"{len(header)}; look for a missing, extra or trailing {delimiter} on that line"
                )
            else:
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as err:
        raise BrainAgeError(f"{path}, line {reader.line_num}: not a valid delimited table ({err})") from None
    if header is None:
        raise BrainAgeError(f"{path}: no line holds a value; expected a header line naming the columns")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise BrainAgeError(f"{path}, line {header_line}: column name(s) {duplicated} appear more than once")
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, name="line"), dtype=str)


def read_json(path: str | os.PathLike, what: str = "JSON file", allow_list: bool = False) -> Any:
    """The JSON object (``{...}``) of a file a user gave or a command wrote.

    Args:
        path: the file.
        what: what the file is, for the messages (``"scores.json"``, ``"bundle.json"``).
        allow_list: accept a JSON list (of anything) too.

    Raises:
        InputNotFoundError: no such file.
        BrainAgeError: a folder, not UTF-8, not JSON, or JSON other than an object; the message
            names the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise BrainAgeError(f"{path} is a folder; expected {what} (a JSON file)")
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise BrainAgeError(
            f"{path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg}); expected {what}"
        ) from None
    except OSError as err:
        raise BrainAgeError(f"{path}: cannot read {what} ({err.strerror or err})") from err
    if not isinstance(value, dict) and not (allow_list and isinstance(value, list)):
        expected = "a JSON object {...} or list [...]" if allow_list else "a JSON object {...}"
        raise BrainAgeError(f"{path}: expected {what} holding {expected}, found a JSON {_json_kind(value)}")
    return value


#: The kinds :func:`check_fields` accepts: the Python types and how a message names them.
_FIELD_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "number": ((int, float), "a number"),
    "integer": ((int,), "an integer"),
    "string": ((str,), "a string"),
    "object": ((dict,), "a JSON object {...}"),
    "list": ((list,), "a JSON list [...]"),
    "boolean": ((bool,), "true or false"),
}


def check_fields(record: dict[str, Any], kinds: dict[str, str], source: str | os.PathLike) -> dict[str, Any]:
    """Check that each field of a JSON record named in ``kinds`` is absent, null or of its kind.

    Args:
        record: the parsed JSON object.
        kinds: field name -> ``"number"``, ``"integer"``, ``"string"``, ``"object"``, ``"list"``
            or ``"boolean"`` (``true``/``false`` is not a number).
        source: the file (and place in it) the record comes from, for the message.

    Returns:
        ``record``, unchanged.

    Raises:
        BrainAgeError: names the source, the field, its value and the kind expected.
    """
    for key, kind in kinds.items():
        value = record.get(key)
        if value is None:
            continue
        types, text = _FIELD_KINDS[kind]
        if not isinstance(value, types) or (isinstance(value, bool) and kind != "boolean"):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise BrainAgeError(f"{source}: field {key!r} is {shown}; expected {text} (or null)")
    return record


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")
