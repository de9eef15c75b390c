"""The preprocessing a model expects: a volume on its source grid -> the network's input.

The same steps, in the same order and precision, as the training cache
(:func:`brainage.data.preprocess.preprocess`): voxels outside the source mask are zeroed,
``factor``^3 blocks are averaged, the result is normalised within the model-grid mask and
rounded to float16. A bundle records these parameters and both masks, so that a new image
goes through exactly what the training images went through.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from brainage.data.modalities import MODALITIES
from brainage.data.preprocess import (
    FLOAT16_MAX,
    NORMALIZATIONS,
    block_mean,
    downsample_mask,
    downsampled_affine,
    normalize_volume,
)
from brainage.errors import BrainAgeError

__all__ = ["Preprocessing"]

#: Largest difference (mm) between two affines that still describe the same grid.
AFFINE_ATOL_MM = 1e-3
#: Most source-mask points used to measure how much of the mask an image's field of view holds.
MASK_POINTS = 100_000


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """Source grid, masks and intensity steps of a model's input.

    Attributes:
        modality: ``vbm`` or ``quasiraw``.
        source_shape: (X, Y, Z) grid the images are read on (the OpenBHB grid, or an integer
            subsampling of it).
        source_affine: 4x4 voxel-to-MNI affine of that grid (mm).
        source_mask: boolean (X, Y, Z) mask on the source grid (the OpenBHB mask thresholded).
        mask_threshold: a source-mask voxel is in when the mask image's value is above it.
        factor: block-average factor from the source grid to the model grid.
        mask: boolean mask on the model grid.
        normalize: ``zscore`` or ``none`` (:func:`brainage.data.preprocess.normalize_volume`).
    """

    modality: str
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    source_mask: np.ndarray
    mask_threshold: float
    factor: int
    mask: np.ndarray
    normalize: str

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise BrainAgeError(f"unknown modality {self.modality!r}; expected one of {sorted(MODALITIES)}")
        if self.normalize not in NORMALIZATIONS:
            raise BrainAgeError(f"unknown normalisation {self.normalize!r}; expected one of {NORMALIZATIONS}")
        if tuple(self.source_mask.shape) != tuple(self.source_shape):
            raise BrainAgeError(f"source mask of shape {self.source_mask.shape} on a {tuple(self.source_shape)} grid")
        expected = downsample_mask(self.source_mask, self.factor)
        if expected.shape != self.mask.shape or not np.array_equal(expected, self.mask):
            raise BrainAgeError(
                f"the model-grid mask {self.mask.shape} is not the source mask block-averaged by {self.factor} "
                f"({expected.shape}, {int(expected.sum())} voxels vs {int(self.mask.sum())})"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Model-grid shape (X', Y', Z') = ceil(source / factor)."""
        return tuple(int(s) for s in self.mask.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-MNI affine of the model grid (mm)."""
        return downsampled_affine(self.source_affine, self.factor)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Source-grid voxel size (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.source_affine[:3, :3], axis=0))  # type: ignore[return-value]

    @cached_property
    def mask_points(self) -> np.ndarray:
        """``(k, 3)`` world coordinates (mm) of the source-mask voxel centres, every ``step``-th of
        them in C order so that ``k <= MASK_POINTS`` (enough to measure a fraction to 1e-5)."""
        voxels = np.argwhere(self.source_mask)
        voxels = voxels[:: max(1, -(-len(voxels) // MASK_POINTS))]
        return voxels @ self.source_affine[:3, :3].T + self.source_affine[:3, 3]

    def on_source_grid(self, shape: tuple[int, ...], affine: np.ndarray) -> bool:
        """Whether an image of this shape and affine is already on the source grid."""
        return tuple(shape) == tuple(self.source_shape) and np.allclose(
            affine, self.source_affine, atol=AFFINE_ATOL_MM, rtol=0
        )

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """One source-grid volume (X, Y, Z) -> the network input (X', Y', Z') float16.

        Raises:
            ValueError: wrong shape, or (``normalize="none"``) a value too large for float16.
        """
        if tuple(volume.shape) != tuple(self.source_shape):
            raise BrainAgeError(f"volume of shape {volume.shape}, expected the source grid {tuple(self.source_shape)}")
        block = np.zeros(self.source_shape, dtype=np.float32)
        np.copyto(block, volume, where=self.source_mask, casting="unsafe")
        pooled = block_mean(block[None], self.factor)[0]
        normed = normalize_volume(pooled, self.mask, self.normalize)
        peak = float(np.abs(normed).max()) if normed.size else 0.0
        if peak > FLOAT16_MAX:
            raise BrainAgeError(
                f"a voxel value of magnitude {peak:.6g} after normalize={self.normalize!r} does not fit the "
                f"model's float16 input (largest finite value {FLOAT16_MAX:g})"
            )
        return normed.astype(np.float16)

    def to_spec(self) -> dict[str, Any]:
        """JSON description (the masks themselves are stored as images next to it)."""
        mod = MODALITIES[self.modality]
        return {
            "modality": self.modality,
            "space": "MNI152 (the OpenBHB grids: CAT12 VBM, or quasi-raw T1w affinely registered)",
            "source_grid": {
                "shape": [int(s) for s in self.source_shape],
                "affine": np.asarray(self.source_affine, dtype=float).tolist(),
                "voxel_size_mm": [round(v, 6) for v in self.voxel_size],
            },
            "source_mask": {
                "file": "source_mask.nii.gz",
                "openbhb_mask": mod.mask_file,
                "threshold": float(self.mask_threshold),
                "rule": f"a voxel is in the mask when the OpenBHB mask image value is > {self.mask_threshold:g}",
                "n_voxels": int(self.source_mask.sum()),
            },
            "downsample": {
                "factor": int(self.factor),
                "method": "mean of non-overlapping factor^3 blocks (edge blocks: mean of the voxels they hold); "
                "a model-grid voxel is in the mask when at least half of its block is",
            },
            "model_grid": {
                "shape": list(self.shape),
                "affine": self.affine.tolist(),
                "mask_file": "mask.nii.gz",
                "n_voxels": int(self.mask.sum()),
            },
            "normalize": {
                "method": self.normalize,
                "rule": "per image within the model-grid mask: (v - mean) / std, zero outside"
                if self.normalize == "zscore"
                else "none (zero outside the model-grid mask)",
            },
            "dtype": "float16",
            "resampling": "images on another grid of the same template space: linear interpolation "
            "(nilearn.image.resample_img) onto the source grid, then the steps above",
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], source_mask: np.ndarray, mask: np.ndarray) -> Preprocessing:
        """Inverse of :meth:`to_spec`; checks that the affines agree with the masks' grids."""
        try:
            grid = spec["source_grid"]
            prep = cls(
                modality=str(spec["modality"]),
                source_shape=tuple(int(s) for s in grid["shape"]),  # type: ignore[arg-type]
                source_affine=np.asarray(grid["affine"], dtype=float),
                source_mask=np.asarray(source_mask, dtype=bool),
                mask_threshold=float(spec["source_mask"]["threshold"]),
                factor=int(spec["downsample"]["factor"]),
                mask=np.asarray(mask, dtype=bool),
                normalize=str(spec["normalize"]["method"]),
            )
        except (KeyError, TypeError) as err:
            raise BrainAgeError(f"incomplete preprocessing description (missing {err})") from err
        if not np.allclose(prep.affine, np.asarray(spec["model_grid"]["affine"], dtype=float), atol=AFFINE_ATOL_MM):
            raise BrainAgeError("the model-grid affine does not follow from the source grid and the factor")
        return prep
