"""New images onto a model's source grid: what can be resampled, what must be refused.

A model is trained on one grid of MNI152 space (an OpenBHB grid, or an integer subsampling of
it). An image on another grid *of the same space* is resampled onto it with nilearn (linear
interpolation, in world coordinates, so any voxel size, field of view or axis order/flip is
handled exactly). An image is refused, with the file and the reason named, when it cannot be
put there faithfully:

- no spatial orientation in its header (NIfTI ``sform_code`` and ``qform_code`` both 0), or
  the header declares Talairach space;
- voxel axes rotated or sheared relative to the MNI axes by more than
  :data:`MAX_OBLIQUE_DEG` (an image in scanner space, or a corrupted affine): the MNI grids
  are axis-aligned, so such an image has not been resliced into the template space;
- a field of view that misses more than ``1 - MIN_MASK_COVERAGE`` of the model's mask (another
  origin convention, a cropped image);
- more than one volume (a 4-D series), fewer than three dimensions;
- non-finite values that reach the mask, or no signal inside the mask (an empty image).

OpenBHB ``.npy`` arrays carry no affine: their shape must be the OpenBHB grid of the model's
modality or an integer subsampling of it (:func:`brainage.data.modalities.grid_factor`), whose
affine is then known.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.data.layouts import open_npy
from brainage.data.modalities import MODALITIES, OpenBHBError, grid, grid_factor
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.inference.preprocessing import Preprocessing

__all__ = [
    "MAX_OBLIQUE_DEG",
    "MIN_MASK_COVERAGE",
    "NIFTI_SUFFIXES",
    "ImageHeader",
    "ImageRefused",
    "inspect_image",
    "load_on_source_grid",
]

#: Largest angle (degrees) between a voxel axis and the nearest MNI axis that is still "axis-aligned".
MAX_OBLIQUE_DEG = 1.0
#: Smallest fraction of the model's source mask that must lie inside the image's field of view.
MIN_MASK_COVERAGE = 0.95
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_TALAIRACH = 3  # NIfTI xform code


class ImageRefused(BrainAgeError):
    """An image that cannot be brought onto the model's grid; the message names the file and why."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header of one input says, after the header-level checks.

    Attributes:
        path: the file.
        kind: ``"nifti"`` or ``"npy"``.
        shape: its 3-D grid.
        affine: 4x4 voxel-to-world affine (mm).
        on_grid: already on the model's source grid (no resampling).
        mask_coverage: fraction of the source mask inside the image's field of view.
    """

    path: Path
    kind: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    on_grid: bool
    mask_coverage: float

    def describe_grid(self) -> str:
        zooms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (
            f"{'x'.join(f'{z:g}' for z in np.round(zooms, 3))} mm {'x'.join(map(str, self.shape))} "
            f"({''.join(nib.aff2axcodes(self.affine))})"
        )


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    raise ImageRefused(f"{path}: not a NIfTI (.nii, .nii.gz) or OpenBHB .npy file")


def _oblique_degrees(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and its nearest world axis; 90 for a singular affine.

    Axes that are permutations or flips of the world axes give 0; a shear makes some column
    leave its axis, so it counts too.
    """
    columns = np.asarray(affine, dtype=float)[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    if not np.all(np.isfinite(columns)) or np.any(norms == 0) or abs(np.linalg.det(columns)) < 1e-12:
        return 90.0
    cosines = np.abs(columns / norms).max(axis=0)
    nearest = np.abs(columns / norms).argmax(axis=0)
    if len(set(nearest.tolist())) < 3:  # two voxel axes along the same world axis
        return 90.0
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def mask_coverage(affine: np.ndarray, shape: tuple[int, ...], prep: Preprocessing) -> float:
    """Fraction of the source-mask voxels whose centres fall inside the image's field of view."""
    world = prep.mask_points
    if world.size == 0:
        return 0.0
    inverse = np.linalg.inv(affine)
    index = world @ inverse[:3, :3].T + inverse[:3, 3]
    inside = np.all((index >= -0.5) & (index <= np.asarray(shape[:3]) - 0.5), axis=1)
    return float(inside.mean())


def _check_geometry(path: Path, affine: np.ndarray, shape: tuple[int, int, int], prep: Preprocessing) -> float:
    angle = _oblique_degrees(affine)
    if angle > MAX_OBLIQUE_DEG:
        raise ImageRefused(
            f"{path}: its voxel axes are rotated or sheared by {angle:.1f} degrees relative to the MNI axes "
            f"(more than {MAX_OBLIQUE_DEG:g}): it is not resliced in the template space the model expects "
            f"(MNI152, axis-aligned). Register and reslice it to MNI152 first (e.g. CAT12 for VBM)"
        )
    coverage = mask_coverage(affine, shape, prep)
    if coverage < MIN_MASK_COVERAGE:
        raise ImageRefused(
            f"{path}: its field of view holds only {100 * coverage:.1f} % of the model's mask (at least "
            f"{100 * MIN_MASK_COVERAGE:g} % needed): another origin convention or a cropped image, not the "
            f"model's MNI152 space"
        )
    return coverage


def _nifti_header(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, OSError, ... for bad files
        raise ImageRefused(f"{path}: not a readable NIfTI image ({type(err).__name__}: {err})") from err
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise ImageRefused(f"{path}: a 4-D series of {shape[3]} volumes {shape}; give one 3-D image per scan")
    if len(shape) != 3:
        raise ImageRefused(f"{path}: a {len(shape)}-D image {shape}; expected a 3-D volume")
    header = img.header
    codes = (int(header["sform_code"]), int(header["qform_code"])) if "sform_code" in header else (0, 0)
    if codes == (0, 0):
        raise ImageRefused(
            f"{path}: the header holds no spatial orientation (sform and qform codes 0), so left and right and "
            "the origin are unknown; write the image with its MNI152 affine"
        )
    used = codes[0] if codes[0] > 0 else codes[1]
    if used == _TALAIRACH:
        raise ImageRefused(f"{path}: the header says Talairach space; the model expects MNI152")
    return shape, np.asarray(img.affine, dtype=float)


def _npy_header(path: Path, prep: Preprocessing) -> tuple[tuple[int, int, int], np.ndarray]:
    for name, mod in MODALITIES.items():
        suffix = mod.file_pattern.split("{id}")[1]
        if name != prep.modality and path.name.endswith(suffix):
            raise ImageRefused(f"{path}: an OpenBHB {name} array (by its name); the model expects {prep.modality}")
    try:
        array = open_npy(path)
    except (OpenBHBError, ValueError) as err:
        raise ImageRefused(str(err)) from err
    shape = tuple(int(s) for s in array.shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise ImageRefused(f"{path}: array of shape {tuple(array.shape)}; expected (1, X, Y, Z) or (X, Y, Z)")
    try:
        factor = grid_factor(prep.modality, shape)
    except OpenBHBError:
        others = [m for m in MODALITIES if m != prep.modality]
        for other in others:
            try:
                grid_factor(other, shape)
            except OpenBHBError:
                continue
            raise ImageRefused(
                f"{path}: shape {shape} is an OpenBHB {other} grid; the model expects {prep.modality}"
            ) from None
        raise ImageRefused(
            f"{path}: shape {shape} is not the OpenBHB {prep.modality} grid {MODALITIES[prep.modality].shape} "
            "or an integer subsampling of it; a .npy array carries no affine, so give a NIfTI image instead"
        ) from None
    return shape, grid(prep.modality, factor)[1]  # type: ignore[return-value]


def inspect_image(path: str | os.PathLike, prep: Preprocessing) -> ImageHeader:
    """Header-level checks of one input (cheap: no voxel is read).

    Raises:
        FileNotFoundError: no such file.
        ImageRefused: an unknown format, or a header that fails a check of the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"image not found: {path}")
    kind = _kind(path)
    shape, affine = _nifti_header(path) if kind == "nifti" else _npy_header(path, prep)
    coverage = _check_geometry(path, affine, shape, prep)
    return ImageHeader(path, kind, shape, affine, prep.on_source_grid(shape, affine), coverage)


def _read(header: ImageHeader) -> np.ndarray:
    """The voxels (a writable copy): float32 for OpenBHB arrays, float64 for NIfTI (scaled, resampled in float64)."""
    if header.kind == "npy":
        return np.array(open_npy(header.path), dtype=np.float32).reshape(header.shape)
    try:
        return nib.load(header.path).get_fdata(dtype=np.float64).reshape(header.shape)
    except (OSError, EOFError, ValueError, zlib.error) as err:  # a truncated or damaged file (header intact)
        raise ImageRefused(f"{header.path}: the voxel data cannot be read ({type(err).__name__}: {err})") from err


def _first_voxel(bad: np.ndarray) -> str:
    x, y, z = (int(v) for v in np.argwhere(bad)[0])
    return f"({x}, {y}, {z})"


def load_on_source_grid(header: ImageHeader, prep: Preprocessing) -> tuple[np.ndarray, str]:
    """The image's voxels on the model's source grid, and how they got there.

    Returns:
        ``(volume (X, Y, Z) float32, resampling)`` (resampled in float64, then rounded): ``resampling`` is ``""`` for an image already
        on the grid, else a description such as ``"1x1x1 mm 197x233x189 (RAS) -> 1.5x1.5x1.5 mm
        121x145x121 (LAS), linear"``.

    Raises:
        ImageRefused: unreadable voxel data, non-finite values reaching the mask, or an empty image.
    """
    from nilearn.image import resample_img

    path = header.path
    data = _read(header)
    finite = np.isfinite(data)
    resampling = ""
    data[~finite] = 0.0
    if header.on_grid:
        volume = data
        bad = ~finite & prep.source_mask
    else:
        image = nib.Nifti1Image(data, header.affine)
        volume = resample_img(
            image,
            target_affine=prep.source_affine,
            target_shape=prep.source_shape,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        ).get_fdata()
        bad = np.zeros(prep.source_shape, dtype=bool)
        if not finite.all():
            hits = resample_img(
                nib.Nifti1Image((~finite).astype(np.uint8), header.affine),
                target_affine=prep.source_affine,
                target_shape=prep.source_shape,
                interpolation="nearest",
                force_resample=True,
                copy_header=True,
            )
            bad = (np.asarray(hits.dataobj) > 0) & prep.source_mask
        target = ImageHeader(path, header.kind, prep.source_shape, prep.source_affine, True, 1.0)
        resampling = f"{header.describe_grid()} -> {target.describe_grid()}, linear"
    if bad.any():
        raise ImageRefused(
            f"{path}: {int(bad.sum())} non-finite value(s) (NaN or inf) inside the model's mask, first at "
            f"source-grid voxel (x, y, z) = {_first_voxel(bad)}"
        )
    inside = volume[prep.source_mask]
    if inside.size == 0 or not np.any(inside) or float(np.ptp(inside)) == 0.0:
        value = float(inside[0]) if inside.size else math.nan
        raise ImageRefused(f"{path}: empty image: every voxel inside the model's mask has the value {value:g}")
    return volume.astype(np.float32, copy=False), resampling
