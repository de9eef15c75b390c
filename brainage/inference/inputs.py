"""Which images to predict: files, a BIDS derivatives folder, or a table of paths.

Each item given to ``brainage predict --images`` is one of:

- a NIfTI (``.nii``, ``.nii.gz``) or OpenBHB ``.npy`` file; the participant and session come
  from its ``sub-``/``ses-`` entities, else the file name;
- a BIDS derivatives folder: ``sub-*/[ses-*/]anat/*.nii[.gz]``, one image per subject and
  session selected by ``select`` (entities ``key-value`` and/or a suffix, e.g.
  ``space-MNI152NLin2009cAsym label-GM probseg``); ages and sex from ``participants.tsv`` at
  its root when present;
- a table (``.csv``, ``.tsv``) with a ``path`` column (relative paths are relative to the
  table) and optional ``participant_id``, ``session_id``, ``age`` (years) and ``sex`` columns.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainage.data.participants import AGE_RANGE, SEX_VALUES
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.inference.spatial import NIFTI_SUFFIXES
from brainage.io import read_table

__all__ = ["Scan", "collect_scans", "scans_from_bids", "scans_from_table"]

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv")
TABLE_COLUMNS = ("path", "participant_id", "session_id", "age", "sex")
_ENTITY = re.compile(r"([A-Za-z0-9]+)-([A-Za-z0-9]+)")
_MISSING = ("", "n/a", "na", "nan")


@dataclass(frozen=True)
class Scan:
    """One image to predict.

    Attributes:
        path: the image file.
        participant_id: e.g. ``sub-01`` (BIDS) or the table's id.
        session_id: e.g. ``ses-1``; ``""`` when none.
        age: chronological age in years; NaN when unknown.
        sex: ``"male"``, ``"female"`` or ``""``.
    """

    path: Path
    participant_id: str
    session_id: str = ""
    age: float = math.nan
    sex: str = ""


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES + (".npy",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _entities(name: str) -> tuple[dict[str, str], str]:
    """BIDS entities and suffix of a file name: ``sub-01_ses-1_desc-gm_T1w`` -> ({sub, ses, desc}, "T1w")."""
    parts = name.split("_")
    entities = {}
    for part in parts:
        match = _ENTITY.fullmatch(part)
        if match:
            entities.setdefault(match[1], match[2])
    suffix = parts[-1] if parts and not _ENTITY.fullmatch(parts[-1]) else ""
    return entities, suffix


def scan_from_file(path: Path) -> Scan:
    """A single image; ids from its ``sub-``/``ses-`` entities, else the file name."""
    entities, _ = _entities(_stem(path))
    pid = f"sub-{entities['sub']}" if "sub" in entities else _stem(path)
    return Scan(path, pid, f"ses-{entities['ses']}" if "ses" in entities else "")


def _age(value: object, where: str) -> float:
    text = str(value).strip()
    if text.lower() in _MISSING:
        return math.nan
    try:
        age = float(text)
    except ValueError:
        raise BrainAgeError(f"{where}: age {text!r} is not a number (years)") from None
    if not math.isfinite(age) or not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise BrainAgeError(f"{where}: age {text} is outside [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}] years")
    return age


def _sex(value: object, where: str) -> str:
    text = str(value).strip()
    if text.lower() in _MISSING:
        return ""
    if text.lower() not in SEX_VALUES:
        raise BrainAgeError(f"{where}: sex {text!r} is not one of 'male', 'female' (or M/F), or empty")
    return SEX_VALUES[text.lower()]


def _read_table(path: Path) -> pd.DataFrame:
    """A user's CSV (``.csv``) or TSV table (index: line numbers), refused with the line at fault."""
    return read_table(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")


def scans_from_table(path: str | os.PathLike) -> list[Scan]:
    """The images a CSV/TSV table lists (see the module docstring).

    Raises:
        ValueError: no ``path`` column, an empty table, an empty path, a bad age or sex (the line
            is named).
    """
    path = Path(path)
    table = _read_table(path)
    if "path" not in table.columns:
        raise BrainAgeError(
            f"{path}: no 'path' column; columns are {list(table.columns)} "
            f"(expected 'path' and optionally {list(TABLE_COLUMNS[1:])})"
        )
    if len(table) == 0:
        raise BrainAgeError(f"{path}: the table lists no images")
    scans = []
    for i, row in table.iterrows():
        where = f"{path}, line {i}"
        if not row["path"].strip():
            raise BrainAgeError(f"{where}: empty path")
        image = Path(row["path"].strip())
        image = image if image.is_absolute() else path.parent / image
        default = scan_from_file(image)
        scans.append(
            Scan(
                image,
                row.get("participant_id", "").strip() or default.participant_id,
                row.get("session_id", "").strip() or default.session_id,
                _age(row.get("age", ""), where),
                _sex(row.get("sex", ""), where),
            )
        )
    return scans


def _bids_participants(root: Path) -> dict[str, tuple[float, str]]:
    table_path = root / "participants.tsv"
    if not table_path.is_file():
        return {}
    table = _read_table(table_path)
    if "participant_id" not in table.columns:
        raise BrainAgeError(f"{table_path}: no 'participant_id' column")
    out = {}
    for i, row in table.iterrows():
        where = f"{table_path}, line {i}"
        pid = row["participant_id"].strip()
        pid = pid if pid.startswith("sub-") else f"sub-{pid}"
        out[pid] = (_age(row.get("age", ""), where), _sex(row.get("sex", ""), where))
    return out


def scans_from_bids(root: str | os.PathLike, select: Sequence[str] = ()) -> list[Scan]:
    """One image per subject and session of a BIDS derivatives folder.

    Args:
        root: the folder holding ``sub-*``.
        select: ``key-value`` entities the file name must hold, and/or a suffix (``T1w``,
            ``probseg``...) it must end with.

    Raises:
        ValueError: no subject folder, no image matching ``select`` anywhere, or several images
            for one subject and session (they are listed: add an entity to ``select``).
    """
    root = Path(root)
    wanted = {}
    suffix = ""
    for item in select:
        match = _ENTITY.fullmatch(item)
        if match:
            wanted[match[1]] = match[2]
        elif re.fullmatch(r"[A-Za-z0-9]+", item):
            suffix = item
        else:
            raise BrainAgeError(
                f"BIDS selector {item!r}: expected an entity key-value (e.g. desc-gm) or a suffix (T1w)"
            )
    subjects = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if not subjects:
        raise BrainAgeError(f"{root}: no sub-* folder; not a BIDS (derivatives) folder")
    participants = _bids_participants(root)
    scans, unmatched = [], []
    for subject in subjects:
        sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir()) or [subject]
        for folder in sessions:
            found = []
            for image in sorted((folder / "anat").glob("*.nii*")):
                if not image.name.lower().endswith(NIFTI_SUFFIXES):
                    continue
                entities, image_suffix = _entities(_stem(image))
                if all(entities.get(k) == v for k, v in wanted.items()) and (not suffix or image_suffix == suffix):
                    found.append(image)
            label = subject.name + (f"/{folder.name}" if folder is not subject else "")
            if not found:
                unmatched.append(label)
                continue
            if len(found) > 1:
                raise BrainAgeError(
                    f"{root}: {label} has {len(found)} images matching {list(select) or 'no selector'}: "
                    f"{[f.name for f in found[:4]]}; add an entity that selects one (--bids-select)"
                )
            age, sex = participants.get(subject.name, (math.nan, ""))
            scans.append(Scan(found[0], subject.name, folder.name if folder is not subject else "", age, sex))
    if not scans:
        raise BrainAgeError(f"{root}: no image under sub-*/[ses-*/]anat/ matches {list(select) or 'no selector'}")
    if unmatched:
        log.warning(
            "%s: %d subject/session folder(s) without a matching image, e.g. %s", root, len(unmatched), unmatched[:3]
        )
    return scans


def collect_scans(items: Sequence[str | os.PathLike], select: Sequence[str] = ()) -> list[Scan]:
    """Every image named by ``items`` (files, BIDS folders, tables), in order.

    Raises:
        FileNotFoundError: an item that does not exist.
        ValueError: nothing to predict, or a bad table / BIDS folder.
    """
    scans: list[Scan] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            scans += scans_from_bids(path, select)
        elif not path.exists():
            raise InputNotFoundError(f"{path}: no such file or folder")
        elif path.suffix.lower() in TABLE_SUFFIXES:
            scans += scans_from_table(path)
        else:
            scans.append(scan_from_file(path))
    if not scans:
        raise BrainAgeError("no images to predict")
    keys = pd.Series([(s.participant_id, s.session_id) for s in scans])
    if keys.duplicated().any():
        log.warning(
            "%d image(s) share a participant and session id with another (e.g. %s); the path column tells them apart",
            int(keys.duplicated().sum()),
            keys[keys.duplicated()].iloc[0],
        )
    return scans
