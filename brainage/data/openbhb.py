"""OpenBHB on disk: the participants table, the masks, and both public layouts.

Two layouts are read (see ``docs/data.md``):

* **per-subject** (the public release): ``participants.tsv``, ``resource/`` (masks,
  ``resources.json``) and one ``.npy`` per subject and modality under
  ``{train,val}/derivatives/sub-<id>/ses-1/``;
* **RAMP** (the challenge kit): ``train.npy`` / ``test.npy`` of shape (n, 3,659,572), one
  row per subject holding the masked voxels of each modality (:func:`ramp_row_slices`),
  plus ``train.tsv`` / ``test.tsv``.

Arrays are opened as memory maps; reading one subject's volume costs one volume of RAM
(the volume itself, plus a few hundred KB of working memory).
Voxels are ordered as nilearn's ``apply_mask`` orders them (C order over the 3-D mask) and
:func:`unmask_rows` restores the volume in the x, y, z orientation of the mask image.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.filebasedimages import ImageFileError

from brainage.data.cache import SPLITS, _site_column
from brainage.errors import BrainAgeError
from brainage.io import read_table

__all__ = [
    "MODALITIES",
    "Modality",
    "PARTICIPANT_COLUMNS",
    "SPLITS",
    "RAMP_BLOCKS",
    "RAMP_ROW_LENGTH",
    "OpenBHBError",
    "load_participants",
    "load_mask",
    "mask_volumes",
    "unmask_rows",
    "ramp_row_slices",
    "grid",
    "open_npy",
    "OpenBHBDataset",
    "PerSubjectLayout",
    "RampLayout",
    "open_dataset",
]


class OpenBHBError(ValueError):
    """Input that does not follow the OpenBHB format; the message names file, row or field."""


@dataclass(frozen=True)
class Modality:
    """One voxel-wise OpenBHB modality and the grid it lives on.

    Attributes:
        name: short name used throughout the project (``vbm`` or ``quasiraw``).
        shape: volume shape (X, Y, Z) of the full-resolution grid.
        affine: 4x4 voxel-to-MNI affine of that grid (mm).
        mask_file: file name of the mask image in ``resource/``.
        threshold: a voxel is in the mask when the mask image value is > threshold.
        n_voxels: voxel count of the official mask (the length of its block in a RAMP row).
        file_pattern: per-subject file name, formatted with ``id``.
    """

    name: str
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    mask_file: str
    threshold: float
    n_voxels: int
    file_pattern: str


MODALITIES: dict[str, Modality] = {
    "vbm": Modality(
        name="vbm",
        shape=(121, 145, 121),
        affine=((-1.5, 0.0, 0.0, 90.0), (0.0, 1.5, 0.0, -126.0), (0.0, 0.0, 1.5, -72.0), (0.0, 0.0, 0.0, 1.0)),
        mask_file="cat12vbm_space-MNI152_desc-gm_TPM.nii.gz",
        threshold=0.05,
        n_voxels=519_945,
        file_pattern="sub-{id}_preproc-cat12vbm_desc-gm_T1w.npy",
    ),
    "quasiraw": Modality(
        name="quasiraw",
        shape=(182, 218, 182),
        affine=((-1.0, 0.0, 0.0, 90.0), (0.0, 1.0, 0.0, -126.0), (0.0, 0.0, 1.0, -72.0), (0.0, 0.0, 0.0, 1.0)),
        mask_file="quasiraw_space-MNI152_desc-brain_T1w.nii.gz",
        threshold=0.0,
        n_voxels=1_827_095,
        file_pattern="sub-{id}_preproc-quasiraw_T1w.npy",
    ),
}

#: Blocks of a RAMP row, in order, with their lengths for the official masks.
RAMP_BLOCKS: tuple[tuple[str, int], ...] = (
    ("vbm", MODALITIES["vbm"].n_voxels),
    ("quasiraw", MODALITIES["quasiraw"].n_voxels),
    ("xhemi", 8 * 163_842),
    ("vbm_roi", 284),
    ("desikan_roi", 7 * 68),
    ("destrieux_roi", 7 * 148),
)
RAMP_ROW_LENGTH: int = sum(n for _, n in RAMP_BLOCKS)

#: Columns of the OpenBHB participants table, in the release's order.
PARTICIPANT_COLUMNS: tuple[str, ...] = (
    "participant_id", "study", "sex", "age", "site", "diagnosis", "tiv", "csfv", "gmv",
    "wmv", "magnetic_field_strength", "acquisition_setting", "siteXacq", "split",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("participant_id", "sex", "age", "site", "split")
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "tiv", "csfv", "gmv", "wmv", "magnetic_field_strength")
SPLIT_FOLDER = {"train": "train", "internal_test": "val", "external_test": "val"}
AGE_RANGE = (0.0, 120.0)
_SEX_VALUES = {"male": "male", "m": "male", "female": "female", "f": "female"}


# --------------------------------------------------------------------------- participants


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
    if not path.is_file():
        raise FileNotFoundError(f"participants table not found: {path}")
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

    def line(idx: int) -> int:  # 1-based file line of a row
        return int(idx)

    empty_id = table.index[table["participant_id"] == ""]
    if len(empty_id):
        raise OpenBHBError(f"{path}: empty participant_id on line {line(empty_id[0])}")
    dup = table["participant_id"][table["participant_id"].duplicated(keep=False)]
    if len(dup):
        first = dup.index[0]
        others = [line(i) for i in dup.index[dup == dup.iloc[0]]]
        raise OpenBHBError(
            f"{path}: duplicate participant_id {dup.loc[first]!r} on lines {others} "
            f"({dup.nunique()} duplicated id(s) in all); ids must be unique"
        )

    for col in NUMERIC_COLUMNS:
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col].replace({"": np.nan, "n/a": np.nan, "NA": np.nan}), errors="coerce")
        bad = values.isna() & (table[col] != "") if col != "age" else values.isna()
        if col == "age" or bad.any():
            if bad.any():
                i = bad.idxmax()
                raise OpenBHBError(
                    f"{path}, line {line(i)} (participant {table.at[i, 'participant_id']!r}): "
                    f"column {col!r} must be a number, got {table.at[i, col]!r}"
                )
        table[col] = values.astype("float64")
    age = table["age"]
    out = (age < AGE_RANGE[0]) | (age > AGE_RANGE[1]) | ~np.isfinite(age)
    if out.any():
        i = out.idxmax()
        raise OpenBHBError(
            f"{path}, line {line(i)} (participant {table.at[i, 'participant_id']!r}): "
            f"age {age[i]} is outside [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}] years"
        )

    sex = table["sex"].str.lower().map(_SEX_VALUES)
    if sex.isna().any():
        i = sex.isna().idxmax()
        raise OpenBHBError(
            f"{path}, line {line(i)} (participant {table.at[i, 'participant_id']!r}): "
            f"sex {table.at[i, 'sex']!r} is not one of 'male', 'female' (or M/F)"
        )
    table["sex"] = sex

    empty_site = table.index[table["site"] == ""]
    if len(empty_site):
        i = empty_site[0]
        raise OpenBHBError(f"{path}, line {line(i)}: empty site for participant {table.at[i, 'participant_id']!r}")

    if "split" in table.columns:
        bad_split = ~table["split"].isin(SPLITS)
        if bad_split.any():
            i = bad_split.idxmax()
            unknown = sorted(set(table.loc[bad_split, "split"]))
            raise OpenBHBError(
                f"{path}, line {line(i)} (participant {table.at[i, 'participant_id']!r}): "
                f"unknown split value {table.at[i, 'split']!r} (unknown values: {unknown}); "
                f"expected one of {list(SPLITS)}"
            )
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- masks and grids


def grid(modality: str, factor: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a modality's grid subsampled by an integer ``factor``.

    Voxel ``v`` of the subsampled grid sits at voxel ``factor * v`` of the full grid, so the
    shape is ``ceil(n / factor)`` per axis and the affine is ``A @ diag(f, f, f, 1)``.
    Factor 1 gives the real OpenBHB grids (121x145x121 at 1.5 mm, 182x218x182 at 1 mm).
    """
    mod = _modality(modality)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"grid factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    shape = tuple(-(-n // factor) for n in mod.shape)
    affine = np.asarray(mod.affine, dtype=float) @ np.diag([factor, factor, factor, 1.0])
    return shape, affine  # type: ignore[return-value]


def grid_factor(modality: str, shape: Sequence[int], affine: np.ndarray | None = None) -> int:
    """The integer factor whose :func:`grid` has this shape (and affine); else OpenBHBError."""
    shape = tuple(int(s) for s in shape)
    for factor in range(1, 17):
        g_shape, g_affine = grid(modality, factor)
        if g_shape == shape and (affine is None or np.allclose(g_affine, affine, atol=1e-3)):
            return factor
    mod = _modality(modality)
    raise OpenBHBError(
        f"grid {shape} is not the OpenBHB {modality} grid {mod.shape} "
        "or an integer subsampling of it (with the matching affine)"
    )


def load_mask(
    mask: np.ndarray | str | os.PathLike | nib.spatialimages.SpatialImage,
    threshold: float | None = None,
) -> np.ndarray:
    """A boolean 3-D mask from an array or a NIfTI path/image.

    Args:
        mask: boolean array (used as is), or a NIfTI image / path to one.
        threshold: voxels with value > threshold are in the mask. ``None`` infers the
            challenge's rule from the file name: > 0.05 for the VBM grey-matter TPM
            (``*desc-gm_TPM*``), > 0 otherwise (the quasi-raw brain mask). The inference
            cannot see a TPM held in memory or saved under another name, so it warns when
            it thresholds a non-binary image at 0; pass ``threshold`` to be explicit.

    Returns:
        Boolean array (X, Y, Z) in the image's voxel order.

    Raises:
        OpenBHBError: an unreadable (truncated, not NIfTI) image, named; not 3-D; or a
            non-boolean array without ``threshold``.
    """
    if isinstance(mask, np.ndarray):
        if mask.ndim != 3:
            raise OpenBHBError(f"mask array must be 3-D (X, Y, Z), got shape {mask.shape}")
        if mask.dtype == bool:
            return mask
        if threshold is None:
            raise OpenBHBError(
                f"mask array has dtype {mask.dtype}: pass a boolean array or give threshold="
            )
        return _above(mask, threshold)
    name = ""
    if isinstance(mask, (str, os.PathLike)):
        name = str(mask)
        if not Path(name).is_file():
            raise FileNotFoundError(f"mask image not found: {name}")
    else:
        name = mask.get_filename() or ""
    try:
        img = nib.load(name) if isinstance(mask, (str, os.PathLike)) else mask
        data = img.get_fdata(dtype=np.float64)
    except (ImageFileError, OSError, EOFError, zlib.error) as err:
        raise OpenBHBError(f"{name or '<in memory>'}: the mask image cannot be read, truncated or not NIfTI "
                           f"({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise OpenBHBError(f"mask image {name or '<in memory>'} must be 3-D, got shape {data.shape}")
    if threshold is None:
        if "gm_TPM" in Path(name).name:
            threshold = MODALITIES["vbm"].threshold
        else:
            threshold = 0.0
            if np.any((data != 0) & (data != 1)):
                warnings.warn(
                    f"mask image {name or '<in memory, no file name>'} is not binary (values other than "
                    "0 and 1, e.g. a probability map) and its name does not say it is the VBM grey-matter "
                    "TPM: thresholding it at > 0. Pass threshold= (0.05 for the TPM) to choose.",
                    UserWarning,
                    stacklevel=2,
                )
    return _above(data, threshold)


def _above(values: np.ndarray, threshold: float) -> np.ndarray:
    """``values > threshold`` compared in float64, as the challenge kit does (``get_fdata() > 0.05``).

    Comparing in the stored dtype differs: float32(0.05) is 0.0500000007, above 0.05 in float64
    but not above float32(0.05).
    """
    return np.asarray(values, dtype=np.float64) > float(threshold)


def mask_volumes(
    volumes: np.ndarray,
    mask: np.ndarray | str | os.PathLike | nib.spatialimages.SpatialImage,
    threshold: float | None = None,
) -> np.ndarray:
    """Masked voxels of each volume, in nilearn's ``apply_mask`` order.

    Args:
        volumes: (n, X, Y, Z) array (a single (X, Y, Z) volume gives a 1-D row).
        mask: boolean (X, Y, Z) array or NIfTI path/image (see :func:`load_mask`).
        threshold: mask threshold (see :func:`load_mask`; ``None`` infers it).

    Returns:
        rows (n, n_voxels), same dtype as ``volumes``. Filled one volume at a time: beyond
        the output, the memory used is one row.
    """
    mask = load_mask(mask, threshold)
    volumes = np.asanyarray(volumes)
    single = volumes.ndim == 3
    if single:
        volumes = volumes[None]
    if volumes.ndim != 4 or volumes.shape[1:] != mask.shape:
        raise OpenBHBError(
            f"volumes of shape {volumes.shape} do not match the mask grid {mask.shape}; "
            "expected (n, X, Y, Z) with (X, Y, Z) the mask's shape"
        )
    # Indexing the 4-D array with the 3-D mask would build int64 index arrays (24 bytes per
    # masked voxel); a 3-D boolean index per volume does not.
    rows = np.empty((volumes.shape[0], int(mask.sum())), dtype=volumes.dtype)
    for i in range(volumes.shape[0]):
        rows[i] = volumes[i][mask]
    return rows[0] if single else rows


def unmask_rows(
    rows: np.ndarray,
    mask: np.ndarray | str | os.PathLike | nib.spatialimages.SpatialImage,
    threshold: float | None = None,
    *,
    dtype: np.typing.DTypeLike | None = None,
) -> np.ndarray:
    """Inverse of :func:`mask_volumes`: put masked voxels back on the mask grid (zeros outside).

    Args:
        rows: (n, n_voxels) array (or a single (n_voxels,) row); a memory map is read row by row.
        mask: boolean (X, Y, Z) array or NIfTI path/image (see :func:`load_mask`).
        threshold: mask threshold (see :func:`load_mask`; ``None`` infers it).
        dtype: dtype of the output (default: that of ``rows``); values are cast while copied.

    Returns:
        volumes (n, X, Y, Z) (or (X, Y, Z) for a single row), in the voxel orientation of
        the mask image. Filled one row at a time into the preallocated output, so no memory
        beyond the output is used.
    """
    mask = load_mask(mask, threshold)
    rows = np.asanyarray(rows)
    single = rows.ndim == 1
    if single:
        rows = rows[None]
    n_voxels = int(mask.sum())
    if rows.ndim != 2 or rows.shape[1] != n_voxels:
        raise OpenBHBError(
            f"rows of shape {rows.shape} do not match the mask: it selects {n_voxels} voxels, "
            "expected (n, n_voxels)"
        )
    volumes = np.zeros((rows.shape[0],) + mask.shape, dtype=rows.dtype if dtype is None else dtype)
    for i in range(rows.shape[0]):
        volumes[i][mask] = rows[i]
    return volumes[0] if single else volumes


def ramp_row_slices(vbm_voxels: int | None = None, quasiraw_voxels: int | None = None) -> dict[str, slice]:
    """Slice of each block in a RAMP row: vbm | quasiraw | xhemi | vbm_roi | desikan_roi | destrieux_roi.

    The defaults are the official masks' voxel counts (row length 3,659,572); pass the
    counts of other masks (a subsampled synthetic data set) to get their layout.
    """
    sizes = dict(RAMP_BLOCKS)
    if vbm_voxels is not None:
        sizes["vbm"] = int(vbm_voxels)
    if quasiraw_voxels is not None:
        sizes["quasiraw"] = int(quasiraw_voxels)
    slices: dict[str, slice] = {}
    start = 0
    for name, _ in RAMP_BLOCKS:
        slices[name] = slice(start, start + sizes[name])
        start += sizes[name]
    return slices


# --------------------------------------------------------------------------- arrays


def open_npy(path: str | os.PathLike, mode: str = "r") -> np.memmap:
    """Memory-map a ``.npy`` file after checking its header against its size.

    Raises:
        FileNotFoundError: no such file.
        OpenBHBError: not a ``.npy`` file, an object array, or truncated (the header
            promises more bytes than the file holds).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file not found: {path}")
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(fh)
        except ValueError as err:
            raise OpenBHBError(f"{path}: not a valid .npy file ({err})") from err
        offset = fh.tell()
    if dtype.hasobject:
        raise OpenBHBError(f"{path}: holds Python objects; only numeric arrays are read (no pickle)")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise OpenBHBError(
            f"{path}: truncated .npy file: header says shape {shape} {dtype} "
            f"({expected} bytes with header) but the file holds {actual} bytes"
        )
    return np.load(path, mmap_mode=mode, allow_pickle=False)


_CHECK_CHUNK = 1 << 18  # values tested for finiteness at a time (256 KB of booleans)


def _nonfinite_error(where: str, count: int, voxel: Sequence[int]) -> OpenBHBError:
    x, y, z = (int(v) for v in voxel)
    return OpenBHBError(
        f"{where}: {count} non-finite voxel value(s) (NaN or inf) inside the mask, "
        f"first at voxel (x, y, z) = ({x}, {y}, {z})"
    )


def _check_finite_volume(volume: np.ndarray, mask: np.ndarray, where: str) -> None:
    """Raise when a voxel inside ``mask`` is NaN or inf; works in x slabs (no masked copy)."""
    step = max(1, _CHECK_CHUNK // max(1, int(np.prod(mask.shape[1:]))))
    count, first = 0, None
    for x in range(0, mask.shape[0], step):
        bad = np.isfinite(volume[x : x + step])
        np.invert(bad, out=bad)
        bad &= mask[x : x + step]
        n_bad = int(np.count_nonzero(bad))
        if n_bad and first is None:
            first = np.argwhere(bad)[0] + (x, 0, 0)
        count += n_bad
    if count:
        raise _nonfinite_error(where, count, first)


def _check_float(array: np.ndarray, where: str) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        raise OpenBHBError(f"{where}: dtype {array.dtype}, expected a floating-point array (float32)")


def _modality(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise OpenBHBError(f"unknown modality {name!r}; expected one of {sorted(MODALITIES)}") from None


# --------------------------------------------------------------------------- data sets


class OpenBHBDataset:
    """Common interface of both layouts: participants, masks, and one volume at a time.

    Attributes:
        root: the data folder.
        participants: validated table (see :func:`load_participants`) in the order volumes
            are indexed by :meth:`volume`.
    """

    layout: str = ""

    def __init__(self, root: Path, participants: pd.DataFrame, mask_paths: dict[str, Path]) -> None:
        self.root = root
        self.participants = participants
        self.mask_paths = mask_paths
        self._masks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.participants)

    def mask(self, modality: str) -> np.ndarray:
        """Boolean (X, Y, Z) mask of a modality, thresholded as the challenge does.

        Raises:
            FileNotFoundError: no mask image.
            OpenBHBError: an unreadable (truncated) image, an empty mask, or a grid or affine
                that is not the modality's OpenBHB grid; the message names the mask's path.
        """
        if modality not in self._masks:
            mod = _modality(modality)
            path = self.mask_paths.get(modality)
            if path is None or not Path(path).is_file():
                raise FileNotFoundError(f"{modality} mask not found: expected {path or mod.mask_file}")
            data = load_mask(path, threshold=mod.threshold)
            if not data.any():
                raise OpenBHBError(f"{path}: empty {modality} mask: no voxel is above the mask threshold "
                                   f"{mod.threshold:g}; expected the OpenBHB mask {mod.mask_file}")
            try:
                grid_factor(modality, data.shape, nib.load(path).affine)
            except OpenBHBError as err:
                raise OpenBHBError(f"{path}: {err}") from None
            self._masks[modality] = data
        return self._masks[modality]

    def mask_image(self, modality: str) -> nib.Nifti1Image:
        """The thresholded mask as a uint8 NIfTI image with its grid's affine."""
        mask = self.mask(modality)
        return nib.Nifti1Image(mask.astype(np.uint8), nib.load(self.mask_paths[modality]).affine)

    def affine(self, modality: str) -> np.ndarray:
        return nib.load(self.mask_paths[modality]).affine

    def volume(self, index: int, modality: str = "vbm") -> np.ndarray:
        """Volume (X, Y, Z) float32 of the participant at row ``index``."""
        raise NotImplementedError

    def iter_volumes(self, indices: Sequence[int] | None = None, modality: str = "vbm") -> Iterator[np.ndarray]:
        """Yield volumes one at a time (bounded memory)."""
        for i in range(len(self)) if indices is None else indices:
            yield self.volume(int(i), modality)

    def validate(self, modality: str = "vbm") -> None:
        """Check that every participant has an array and every array a participant."""


class PerSubjectLayout(OpenBHBDataset):
    """The public release: ``<root>/{train,val}/derivatives/sub-<id>/ses-1/<file>.npy``."""

    layout = "per_subject"

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        table = root / "participants.tsv"
        participants = load_participants(table)
        masks = {name: root / "resource" / mod.mask_file for name, mod in MODALITIES.items()}
        super().__init__(root, participants, masks)

    def path(self, index: int, modality: str = "vbm") -> Path:
        row = self.participants.iloc[index]
        pid = row["participant_id"]
        name = _modality(modality).file_pattern.format(id=pid)
        return self.root / SPLIT_FOLDER[row["split"]] / "derivatives" / f"sub-{pid}" / "ses-1" / name

    def validate(self, modality: str = "vbm") -> None:
        mod = _modality(modality)
        missing = [self.path(i, modality) for i in range(len(self)) if not self.path(i, modality).is_file()]
        if missing:
            raise OpenBHBError(
                f"{len(missing)} participant(s) of {self.root / 'participants.tsv'} have no {modality} "
                f"array; first expected at {missing[0]}"
            )
        known = {self.path(i, modality) for i in range(len(self))}
        suffix = mod.file_pattern.split("{id}")[1]
        for folder in ("train", "val"):
            base = self.root / folder / "derivatives"
            if not base.is_dir():
                continue
            for found in base.glob(f"sub-*/ses-*/sub-*{suffix}"):
                if found not in known:
                    raise OpenBHBError(
                        f"array {found} has no participant in {self.root / 'participants.tsv'} "
                        "(or sits in the folder of another split)"
                    )

    def volume(self, index: int, modality: str = "vbm") -> np.ndarray:
        path = self.path(index, modality)
        mask = self.mask(modality)
        array = open_npy(path)
        _check_float(array, str(path))
        shape = tuple(array.shape)
        if shape not in ((1,) + mask.shape, mask.shape):
            raise OpenBHBError(
                f"{path}: array shape {shape} does not match the {modality} mask grid "
                f"{mask.shape}; expected (1, {', '.join(map(str, mask.shape))})"
            )
        vol = np.array(array.reshape(mask.shape), dtype=np.float32)
        _check_finite_volume(vol, mask, str(path))
        return vol


class RampLayout(OpenBHBDataset):
    """The challenge kit: ``train.npy``/``test.npy`` rows (n, 3,659,572) and ``.tsv`` tables.

    Args:
        root: folder holding ``<part>.npy`` and ``<part>.tsv``.
        part: ``"train"``, ``"test"`` or ``"both"`` (train rows, then test rows).
        vbm_mask, quasiraw_mask: mask images; default: the ``VBM_MASK`` / ``QUASIRAW_MASK``
            environment variables (as on the challenge server), else ``<root>/resource/``.

    ``test.tsv`` without a ``split`` column is split as the kit orders it: rows whose
    ``siteXacq`` (else ``site``) occurs in ``train.tsv`` are ``internal_test``, the others
    ``external_test``.
    """

    layout = "ramp"

    def __init__(
        self,
        root: str | os.PathLike,
        part: str = "both",
        vbm_mask: str | os.PathLike | None = None,
        quasiraw_mask: str | os.PathLike | None = None,
    ) -> None:
        root = Path(root)
        if part not in ("train", "test", "both"):
            raise ValueError(f"part must be 'train', 'test' or 'both', got {part!r}")
        parts = ["train", "test"] if part == "both" else [part]
        masks = {
            "vbm": Path(vbm_mask or os.environ.get("VBM_MASK") or root / "resource" / MODALITIES["vbm"].mask_file),
            "quasiraw": Path(
                quasiraw_mask or os.environ.get("QUASIRAW_MASK") or root / "resource" / MODALITIES["quasiraw"].mask_file
            ),
        }
        tables, arrays = [], []
        train_sites: set[str] | None = None
        for name in parts:
            table_path = root / f"{name}.tsv"
            table = load_participants(table_path, default_split="train" if name == "train" else None,
                                      require_split=name == "train")
            if "split" not in table.columns:
                if train_sites is None:
                    ref = load_participants(root / "train.tsv", default_split="train")
                    train_sites = set(ref[_site_column(ref.columns)])
                seen = table[_site_column(table.columns)].isin(train_sites)
                table["split"] = np.where(seen, "internal_test", "external_test")
            array = open_npy(root / f"{name}.npy")
            if array.ndim != 2 or array.shape[0] != len(table):
                raise OpenBHBError(
                    f"{root / (name + '.npy')}: shape {array.shape} does not match {table_path} "
                    f"({len(table)} rows): expected ({len(table)}, row_length); "
                    + ("a participant without an array" if array.ndim == 2 and array.shape[0] < len(table)
                       else "an array row without a participant" if array.ndim == 2 else "")
                )
            _check_float(array, str(root / f"{name}.npy"))
            table["ramp_part"] = name
            table["ramp_row"] = np.arange(len(table))
            tables.append(table)
            arrays.append(array)
        participants = pd.concat(tables, ignore_index=True)
        super().__init__(root, participants, masks)
        self.arrays = dict(zip(parts, arrays))
        self._slices: dict[str, slice] | None = None

    def row_slices(self) -> dict[str, slice]:
        """Block slices for the masks in use; checks the row length they imply."""
        if self._slices is None:
            counts = {m: int(self.mask(m).sum()) for m in ("vbm", "quasiraw")}
            slices = ramp_row_slices(counts["vbm"], counts["quasiraw"])
            length = slices["destrieux_roi"].stop
            for name, array in self.arrays.items():
                if array.shape[1] != length:
                    raise OpenBHBError(
                        f"{self.root / (name + '.npy')}: rows hold {array.shape[1]} values but the masks "
                        f"select {counts['vbm']} vbm + {counts['quasiraw']} quasiraw voxels, i.e. rows of "
                        f"{length} values (the official masks give {RAMP_ROW_LENGTH})"
                    )
            self._slices = slices
        return self._slices

    def row(self, index: int) -> np.ndarray:
        """The raw RAMP row (memory-mapped view) of participant ``index``."""
        rec = self.participants.iloc[index]
        return self.arrays[rec["ramp_part"]][int(rec["ramp_row"])]

    def volume(self, index: int, modality: str = "vbm") -> np.ndarray:
        block = self.row_slices()[modality]
        rec = self.participants.iloc[index]
        values = self.row(index)[block]  # a memory-mapped view: nothing is read yet
        mask = self.mask(modality)
        vol = unmask_rows(values, mask, dtype=np.float32)
        _check_finite_volume(vol, mask, f"{self.root / (rec['ramp_part'] + '.npy')}, row {int(rec['ramp_row'])} ({modality})")
        return vol

    def validate(self, modality: str = "vbm") -> None:
        self.row_slices()


def detect_layout(root: str | os.PathLike) -> str:
    """``"per_subject"`` or ``"ramp"`` from the files present in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"OpenBHB folder not found: {root}")
    if (root / "participants.tsv").is_file():
        return "per_subject"
    if (root / "train.npy").is_file() or (root / "test.npy").is_file():
        return "ramp"
    raise OpenBHBError(
        f"{root}: neither layout found: expected participants.tsv (per-subject release) "
        "or train.npy/train.tsv (RAMP kit)"
    )


def open_dataset(root: str | os.PathLike, layout: str = "auto", **kwargs) -> OpenBHBDataset:
    """Open an OpenBHB folder in either layout (``auto`` detects it)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "per_subject":
        return PerSubjectLayout(root, **kwargs)
    if layout == "ramp":
        return RampLayout(root, **kwargs)
    raise ValueError(f"unknown layout {layout!r}; expected 'auto', 'per_subject' or 'ramp'")


def read_resources(root: str | os.PathLike) -> dict:
    """``resource/resources.json`` as a dict (empty when absent)."""
    path = Path(root) / "resource" / "resources.json"
    if not path.is_file():
        return {}
    with open(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise OpenBHBError(f"{path}: invalid JSON ({err})") from err
