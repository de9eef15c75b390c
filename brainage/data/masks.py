"""Masks of the OpenBHB grids: read and thresholded as the challenge does, and the (un)masking of volumes.

Voxels are ordered as nilearn's ``apply_mask`` orders them (C order over the 3-D mask) and
:func:`unmask_rows` restores the volume in the x, y, z orientation of the mask image.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from brainage.data.modalities import MODALITIES, OpenBHBError
from brainage.errors import InputNotFoundError

__all__ = ["load_mask", "mask_volumes", "unmask_rows"]


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
            raise OpenBHBError(f"mask array has dtype {mask.dtype}: pass a boolean array or give threshold=")
        return _above(mask, threshold)
    name = ""
    if isinstance(mask, (str, os.PathLike)):
        name = str(mask)
        if not Path(name).is_file():
            raise InputNotFoundError(f"mask image not found: {name}")
    else:
        name = mask.get_filename() or ""
    try:
        img = nib.load(name) if isinstance(mask, (str, os.PathLike)) else mask
        data = img.get_fdata(dtype=np.float64)
    except (ImageFileError, OSError, EOFError, zlib.error) as err:
        raise OpenBHBError(
            f"{name or '<in memory>'}: the mask image cannot be read, truncated or not NIfTI "
            f"({type(err).__name__}: {err})"
        ) from err
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
            f"rows of shape {rows.shape} do not match the mask: it selects {n_voxels} voxels, expected (n, n_voxels)"
        )
    volumes = np.zeros((rows.shape[0],) + mask.shape, dtype=rows.dtype if dtype is None else dtype)
    for i in range(rows.shape[0]):
        volumes[i][mask] = rows[i]
    return volumes[0] if single else volumes
