"""OpenBHB's voxel-wise modalities: their grids, mask files and the layout of a RAMP row.

Also :class:`OpenBHBError`, what every OpenBHB reader raises for input that does not follow
the format (:mod:`~brainage.data.participants`, :mod:`~brainage.data.masks`,
:mod:`~brainage.data.layouts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brainage.errors import BrainAgeError

__all__ = [
    "MODALITIES",
    "Modality",
    "OpenBHBError",
    "RAMP_BLOCKS",
    "RAMP_ROW_LENGTH",
    "get_modality",
    "grid",
    "grid_factor",
    "ramp_row_slices",
]


class OpenBHBError(BrainAgeError):
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


def get_modality(name: str) -> Modality:
    """The :class:`Modality` called ``name``; OpenBHBError naming the valid ones otherwise."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise OpenBHBError(f"unknown modality {name!r}; expected one of {sorted(MODALITIES)}") from None


def grid(modality: str, factor: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a modality's grid subsampled by an integer ``factor``.

    Voxel ``v`` of the subsampled grid sits at voxel ``factor * v`` of the full grid, so the
    shape is ``ceil(n / factor)`` per axis and the affine is ``A @ diag(f, f, f, 1)``.
    Factor 1 gives the real OpenBHB grids (121x145x121 at 1.5 mm, 182x218x182 at 1 mm).
    """
    mod = get_modality(modality)
    if int(factor) != factor or factor < 1:
        raise BrainAgeError(f"grid factor must be a positive integer, got {factor!r}")
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
    mod = get_modality(modality)
    raise OpenBHBError(
        f"grid {shape} is not the OpenBHB {modality} grid {mod.shape} "
        "or an integer subsampling of it (with the matching affine)"
    )


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
