"""From an OpenBHB folder (either layout) to the training cache.

The cache of one modality is a folder holding, per split, ``<split>.npy`` (n, X, Y, Z)
float16 volumes and ``<split>.tsv`` (the participants of those rows, in row order, with a
``row`` column), plus ``mask.nii.gz`` (the mask on the cache grid, with its affine) and
``cache.json`` (how it was made). Volumes are masked, optionally block-averaged by an
integer factor, and normalised per image within the mask.

Writing streams ``chunk`` volumes at a time into a memory-mapped ``.partial`` file and
records progress after each chunk, so a killed run resumes where it stopped; each final
file appears by an atomic rename, ``cache.json`` last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from brainage import __version__
from brainage.data.openbhb import SPLITS, OpenBHBDataset, open_dataset
from brainage.io import atomic_path, save_json, save_table

__all__ = ["block_mean", "downsample_mask", "downsampled_affine", "normalize_volume", "preprocess"]

log = logging.getLogger(__name__)

NORMALIZATIONS = ("zscore", "none")


def block_mean(volumes: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping ``factor``^3 blocks of (n, X, Y, Z) volumes.

    The output has ``ceil(X / factor)`` voxels per axis; a block cut by the volume's edge is
    the mean of the voxels it holds. Returns float32.
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    if factor == 1:
        return volumes
    x = torch.from_numpy(np.ascontiguousarray(volumes))[:, None]
    pooled = F.avg_pool3d(x, kernel_size=factor, stride=factor, ceil_mode=True)
    return pooled[:, 0].numpy()


def downsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A block is in the downsampled mask when at least half of its voxels are in ``mask``."""
    if factor == 1:
        return mask.astype(bool)
    return block_mean(mask[None].astype(np.float32), factor)[0] >= 0.5


def downsampled_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of the block-mean grid: voxel size x factor, origin at the first block's centre."""
    affine = np.asarray(affine, dtype=float)
    scale = np.diag([factor, factor, factor, 1.0])
    shift = np.eye(4)
    shift[:3, 3] = (factor - 1) / 2.0
    return affine @ shift @ scale


def normalize_volume(volume: np.ndarray, mask: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Normalise one (X, Y, Z) volume within ``mask``; voxels outside are set to 0.

    ``zscore``: subtract the in-mask mean and divide by the in-mask standard deviation
    (a constant image gives zeros). ``none``: only zero the outside.
    """
    out = np.zeros(volume.shape, dtype=np.float32)
    values = volume[mask].astype(np.float64)
    if method == "zscore":
        std = values.std()
        values = (values - values.mean()) / std if std > 0 else np.zeros_like(values)
    elif method != "none":
        raise ValueError(f"unknown normalisation {method!r}; expected one of {NORMALIZATIONS}")
    out[mask] = values
    return out


def _signature(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def preprocess(
    data: str | os.PathLike | OpenBHBDataset,
    out: str | os.PathLike,
    modality: str = "vbm",
    downsample: int = 1,
    normalize: str = "zscore",
    chunk: int = 32,
    splits: Sequence[str] = SPLITS,
    layout: str = "auto",
    progress: bool = True,
) -> dict:
    """Build the training cache of one modality (see the module docstring).

    Args:
        data: OpenBHB folder (either layout) or an opened dataset.
        out: cache folder; created if needed.
        modality: ``vbm`` or ``quasiraw``.
        downsample: integer block-average factor (1 keeps the source grid).
        normalize: ``zscore`` or ``none`` (see :func:`normalize_volume`).
        chunk: volumes processed between progress checkpoints (bounds memory).
        splits: which splits to write; a split without participants gets an empty array.
        layout: ``auto``, ``per_subject`` or ``ramp`` when ``data`` is a path.

    Returns:
        The cache metadata also written to ``cache.json``.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {normalize!r}; expected one of {NORMALIZATIONS}")
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"downsample must be a positive integer, got {downsample!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected a subset of {list(SPLITS)}")
    dataset = data if isinstance(data, OpenBHBDataset) else open_dataset(data, layout=layout)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    dataset.validate(modality)
    src_mask = dataset.mask(modality)
    mask = downsample_mask(src_mask, downsample)
    affine = downsampled_affine(dataset.affine(modality), downsample)
    params = {
        "source": str(Path(dataset.root).resolve()),
        "layout": dataset.layout,
        "modality": modality,
        "downsample": int(downsample),
        "normalize": normalize,
        "n_participants": len(dataset),
    }
    signature = _signature(params)

    with atomic_path(out / "mask.nii.gz") as tmp:
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp)

    counts = {}
    for split in splits:
        indices = np.flatnonzero(dataset.participants["split"].to_numpy() == split)
        counts[split] = int(indices.size)
        _write_split(dataset, out, split, indices, modality, src_mask, mask, downsample, normalize,
                     chunk, signature, progress)

    meta = {
        **params,
        "shape": list(mask.shape),
        "affine": affine.tolist(),
        "n_mask_voxels": int(mask.sum()),
        "source_shape": list(src_mask.shape),
        "dtype": "float16",
        "splits": counts,
        "brainage_version": __version__,
        "signature": signature,
    }
    save_json(out / "cache.json", meta)
    return meta


def _write_split(
    dataset: OpenBHBDataset,
    out: Path,
    split: str,
    indices: np.ndarray,
    modality: str,
    src_mask: np.ndarray,
    mask: np.ndarray,
    factor: int,
    normalize: str,
    chunk: int,
    signature: str,
    progress: bool,
) -> None:
    final = out / f"{split}.npy"
    partial = out / f".{split}.npy.partial"
    state_file = out / f".{split}.progress.json"
    shape = (len(indices),) + mask.shape
    done = 0
    if partial.exists() and state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("signature") == signature and tuple(state.get("shape", ())) == shape:
            done = int(state["done"])
            log.info("%s: resuming at volume %d of %d", split, done, len(indices))
    if done == 0:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape).flush()
    array = np.lib.format.open_memmap(partial, mode="r+")
    bar = tqdm(total=len(indices), initial=done, desc=f"preprocess {split}", unit="vol", disable=not progress)
    try:
        for start in range(done, len(indices), chunk):
            stop = min(start + chunk, len(indices))
            block = np.stack([np.where(src_mask, dataset.volume(int(i), modality), 0.0) for i in indices[start:stop]])
            block = block_mean(block, factor)
            for j, vol in enumerate(block):
                array[start + j] = normalize_volume(vol, mask, normalize).astype(np.float16)
            array.flush()
            with atomic_path(state_file) as tmp:
                tmp.write_text(json.dumps({"signature": signature, "shape": list(shape), "done": stop}))
            bar.update(stop - start)
    finally:
        bar.close()
        del array
    table = dataset.participants.iloc[indices].reset_index(drop=True)
    table.insert(0, "row", np.arange(len(table)))
    save_table(out / f"{split}.tsv", table)
    os.replace(partial, final)
    state_file.unlink(missing_ok=True)
