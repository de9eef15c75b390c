"""The OpenBHB participants table: read, validated, and typed (``participants.tsv``, RAMP ``*.tsv``)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.data.cache import SPLITS
from brainage.data.modalities import OpenBHBError
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.io import read_table

__all__ = [
    "AGE_RANGE",
    "NUMERIC_COLUMNS",
    "PARTICIPANT_COLUMNS",
    "REQUIRED_COLUMNS",
    "SEX_VALUES",
    "load_participants",
]

#: Columns of the OpenBHB participants table, in the release's order.
PARTICIPANT_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "study",
    "sex",
    "age",
    "site",
    "diagnosis",
    "tiv",
    "csfv",
    "gmv",
    "wmv",
    "magnetic_field_strength",
    "acquisition_setting",
    "siteXacq",
    "split",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("participant_id", "sex", "age", "site", "split")
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "tiv", "csfv", "gmv", "wmv", "magnetic_field_strength")
AGE_RANGE: tuple[float, float] = (0.0, 120.0)
"""Ages (years) a participants table may hold."""
SEX_VALUES: dict[str, str] = {"male": "male", "m": "male", "female": "female", "f": "female"}


def load_participants(
    path: str | os.PathLike,
    *,
    require_split: bool = True,
    default_split: str | None = None,
) -> pd.DataFrame:
    """Read and validate an OpenBHB participants table (TSV).

    Args:
        path: ``participants.tsv`` (or a RAMP ``train.tsv`` / ``test.tsv``).
        require_split: raise when the ``split`` column is missing (unless ``default_split``).
        default_split: value to fill when the table has no ``split`` column.

    Returns:
        A DataFrame in file order: ``participant_id`` (str), ``sex`` ("male"/"female"),
        ``age`` (float64, years), ``site`` (str), ``split`` (one of :data:`SPLITS`) and
        every other column of the file (numeric OpenBHB columns as float64, ``siteXacq``
        as str).

    Raises:
        FileNotFoundError: the file does not exist.
        OpenBHBError: an empty or non-UTF-8 file, a row with another number of fields than
            the header, missing or misnamed columns, unknown split values, duplicate ids,
            missing or non-numeric values, ages outside [0, 120] years, unknown sex codes.
    """
    path = Path(path)
    table = _read_columns(path, require_split, default_split)
    _check_ids(table, path)
    _convert_numeric_columns(table, path)
    _normalise_sex(table, path)
    _check_sites_and_splits(table, path)
    return table.reset_index(drop=True)


def _line(index) -> int:
    """The 1-based file line of a row (:func:`brainage.io.read_table` indexes rows by it)."""
    return int(index)


def _where(table: pd.DataFrame, path: Path, index) -> str:
    """``<path>, line <n> (participant <id>)``: the start of a message about one row."""
    return f"{path}, line {_line(index)} (participant {table.at[index, 'participant_id']!r})"


def _read_columns(path: Path, require_split: bool, default_split: str | None) -> pd.DataFrame:
    """The table as stripped strings, indexed by file line, with its required columns (``split`` filled)."""
    if not path.is_file():
        raise InputNotFoundError(f"participants table not found: {path}")
    try:
        table = read_table(path, sep="\t")  # indexed by file line
    except BrainAgeError as err:
        raise OpenBHBError(str(err)) from None
    if "split" not in table.columns and default_split is not None:
        if default_split not in SPLITS:
            raise OpenBHBError(f"default_split must be one of {SPLITS}, got {default_split!r}")
        table["split"] = default_split
    required = [c for c in REQUIRED_COLUMNS if c != "split" or require_split or "split" in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        hints = []
        for col in missing:
            close = difflib.get_close_matches(col, table.columns, n=1, cutoff=0.6)
            close = close or [c for c in table.columns if c.lower() == col.lower()]
            hints.append(f"{col!r}" + (f" (found {close[0]!r}: misnamed?)" if close else ""))
        raise OpenBHBError(
            f"{path}: missing required column(s) {', '.join(hints)}; "
            f"expected the OpenBHB columns {list(PARTICIPANT_COLUMNS)}"
        )
    if len(table) == 0:
        raise OpenBHBError(f"{path}: the table has a header but no participant rows")
    for col in table.columns:
        table[col] = table[col].str.strip()
    return table


def _check_ids(table: pd.DataFrame, path: Path) -> None:
    """Every ``participant_id`` present and unique."""
    empty_id = table.index[table["participant_id"] == ""]
    if len(empty_id):
        raise OpenBHBError(f"{path}: empty participant_id on line {_line(empty_id[0])}")
    dup = table["participant_id"][table["participant_id"].duplicated(keep=False)]
    if len(dup):
        first = dup.index[0]
        others = [_line(i) for i in dup.index[dup == dup.iloc[0]]]
        raise OpenBHBError(
            f"{path}: duplicate participant_id {dup.loc[first]!r} on lines {others} "
            f"({dup.nunique()} duplicated id(s) in all); ids must be unique"
        )


def _convert_numeric_columns(table: pd.DataFrame, path: Path) -> None:
    """:data:`NUMERIC_COLUMNS` to float64 in place (age required, the others may be empty); ages in range."""
    for col in NUMERIC_COLUMNS:
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col].replace({"": np.nan, "n/a": np.nan, "NA": np.nan}), errors="coerce")
        bad = values.isna() & (table[col] != "") if col != "age" else values.isna()
        if col == "age" or bad.any():
            if bad.any():
                i = bad.idxmax()
                raise OpenBHBError(
                    f"{_where(table, path, i)}: column {col!r} must be a number, got {table.at[i, col]!r}"
                )
        table[col] = values.astype("float64")
    age = table["age"]
    out = (age < AGE_RANGE[0]) | (age > AGE_RANGE[1]) | ~np.isfinite(age)
    if out.any():
        i = out.idxmax()
        raise OpenBHBError(
            f"{_where(table, path, i)}: age {age[i]} is outside [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}] years"
        )


def _normalise_sex(table: pd.DataFrame, path: Path) -> None:
    """``sex`` as ``"male"`` / ``"female"`` in place (:data:`SEX_VALUES`, any case)."""
    sex = table["sex"].str.lower().map(SEX_VALUES)
    if sex.isna().any():
        i = sex.isna().idxmax()
        raise OpenBHBError(
            f"{_where(table, path, i)}: sex {table.at[i, 'sex']!r} is not one of 'male', 'female' (or M/F)"
        )
    table["sex"] = sex


def _check_sites_and_splits(table: pd.DataFrame, path: Path) -> None:
    """Every row with a site and, when the table has a ``split`` column, one of :data:`SPLITS`."""
    empty_site = table.index[table["site"] == ""]
    if len(empty_site):
        i = empty_site[0]
        raise OpenBHBError(f"{path}, line {_line(i)}: empty site for participant {table.at[i, 'participant_id']!r}")
    if "split" in table.columns:
        bad_split = ~table["split"].isin(SPLITS)
        if bad_split.any():
            i = bad_split.idxmax()
            unknown = sorted(set(table.loc[bad_split, "split"]))
            raise OpenBHBError(
                f"{_where(table, path, i)}: "
                f"unknown split value {table.at[i, 'split']!r} (unknown values: {unknown}); "
                f"expected one of {list(SPLITS)}"
            )
