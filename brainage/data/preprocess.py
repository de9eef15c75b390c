"""From an OpenBHB folder (either layout) to the training cache.

The cache of one modality is a folder holding, per split, ``<split>.npy`` (n, X, Y, Z)
float16 volumes and ``<split>.tsv`` (the participants of those rows, in row order, with a
``row`` column), plus ``mask.nii.gz`` (the mask on the cache grid, with its affine) and
``cache.json`` (how it was made). Volumes are masked, optionally block-averaged by an
integer factor, and normalised per image within the mask.

Writing streams ``chunk`` volumes at a time into a memory-mapped ``.partial`` file and
records progress after each chunk, so a killed run resumes where it stopped. A finished split
gets ``<split>.signature.json`` (written atomically after its ``.npy`` and ``.tsv``): the
signature of its inputs (participants rows, size and modification time of every source
array, the mask) and of the preprocessing parameters. A rerun skips a split whose signature
matches, so a run killed in a later split does not recompute the earlier ones.

A cache folder is finished when it has ``cache.json``: a run removes it before writing
anything and writes it last, with the signature of every split it describes;
:func:`brainage.data.cache.open_split` refuses a split whose signature file disagrees (a
folder mixing two runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from brainage import __version__
from brainage.data.cache import SPLITS
from brainage.data.layouts import OpenBHBDataset, open_dataset
from brainage.data.modalities import OpenBHBError
from brainage.errors import BrainAgeError
from brainage.io import atomic_path, make_folders, save_json, save_table

__all__ = ["block_mean", "downsample_mask", "downsampled_affine", "normalize_volume", "preprocess"]

log = logging.getLogger(__name__)

NORMALIZATIONS = ("zscore", "none")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
#: Bump when the same inputs and parameters would give different cache content.
CACHE_FORMAT = 2


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
        raise BrainAgeError(f"unknown normalisation {method!r}; expected one of {NORMALIZATIONS}")
    out[mask] = values
    return out


def _signature(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _source_files(dataset: OpenBHBDataset, indices: np.ndarray, modality: str) -> list[Path]:
    """The files a split's volumes are read from (per-subject arrays, or the RAMP arrays)."""
    if hasattr(dataset, "path"):  # per-subject layout
        return [Path(dataset.path(int(i), modality)) for i in indices]
    arrays = getattr(dataset, "arrays", {})
    parts = sorted(set(dataset.participants["ramp_part"].iloc[indices])) if "ramp_part" in dataset.participants else []
    return [Path(arrays[p].filename) for p in parts if getattr(arrays[p], "filename", None)]


def split_signature(
    dataset: OpenBHBDataset, split: str, indices: np.ndarray, modality: str, src_mask: np.ndarray, params: dict
) -> str:
    """Signature of one split's content: parameters, participants rows, source files, mask."""
    head = {**params, "split": split, "format": CACHE_FORMAT, "brainage_version": __version__}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    digest.update(dataset.participants.iloc[indices].to_csv(sep="\t", index=False).encode())
    for path in _source_files(dataset, indices, modality):
        st = path.stat()
        digest.update(f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    digest.update(str(src_mask.shape).encode())
    digest.update(np.packbits(src_mask).tobytes())
    return digest.hexdigest()[:16]


def _split_is_done(out: Path, split: str, signature: str, shape: tuple[int, ...]) -> bool:
    """The split's final files exist and its signature file records ``signature``."""
    sidecar, final, table = out / f"{split}.signature.json", out / f"{split}.npy", out / f"{split}.tsv"
    if not (sidecar.is_file() and final.is_file() and table.is_file()):
        return False
    try:
        recorded = json.loads(sidecar.read_text())
        found_shape = tuple(np.load(final, mmap_mode="r", allow_pickle=False).shape)
    except (ValueError, OSError):
        return False
    return recorded.get("signature") == signature and found_shape == tuple(shape)


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
    _check_options(normalize, downsample, chunk, splits)
    dataset = data if isinstance(data, OpenBHBDataset) else open_dataset(data, layout=layout)
    out = Path(out)

    src_mask, mask = _cache_masks(dataset, modality, downsample)
    make_folders(out)
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

    # A finished cache is recognised by cache.json: remove it before anything is rewritten,
    # so an interrupted rerun (other parameters) never leaves a folder that looks finished.
    (out / "cache.json").unlink(missing_ok=True)
    with atomic_path(out / "mask.nii.gz") as tmp:
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp)
    counts, split_signatures = _write_splits(
        dataset, out, splits, modality, src_mask, mask, downsample, normalize, chunk, params, progress
    )

    meta = {
        **params,
        "shape": list(mask.shape),
        "affine": affine.tolist(),
        "n_mask_voxels": int(mask.sum()),
        "source_shape": list(src_mask.shape),
        "dtype": "float16",
        "splits": counts,
        "split_signatures": split_signatures,
        "format": CACHE_FORMAT,
        "brainage_version": __version__,
        "signature": signature,
    }
    save_json(out / "cache.json", meta)
    return meta


def _check_options(normalize: str, downsample: int, chunk: int, splits: Sequence[str]) -> None:
    """Raise on an unknown normalisation or split, a non-integer factor or a chunk below 1."""
    if normalize not in NORMALIZATIONS:
        raise BrainAgeError(f"unknown normalisation {normalize!r}; expected one of {NORMALIZATIONS}")
    if int(downsample) != downsample or downsample < 1:
        raise BrainAgeError(f"downsample must be a positive integer, got {downsample!r}")
    if chunk < 1:
        raise BrainAgeError(f"chunk must be >= 1, got {chunk}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise BrainAgeError(f"unknown split(s) {unknown}; expected a subset of {list(SPLITS)}")


def _cache_masks(dataset: OpenBHBDataset, modality: str, downsample: int) -> tuple[np.ndarray, np.ndarray]:
    """The validated data set's source-grid mask and the cache-grid mask, ``(X, Y, Z)`` bool each.

    Raises:
        OpenBHBError: a bad data set, or no block of the cache grid inside the mask.
    """
    dataset.validate(modality)
    src_mask = dataset.mask(modality)
    if downsample > min(src_mask.shape):
        raise OpenBHBError(
            f"downsample (--downsample) {downsample} exceeds the {modality} grid {src_mask.shape} of "
            f"{dataset.mask_paths.get(modality)}: a block must fit in the image; expected at most {min(src_mask.shape)}"
        )
    mask = downsample_mask(src_mask, downsample)
    if not mask.any():
        raise OpenBHBError(
            f"{dataset.mask_paths.get(modality)}: no {downsample}x{downsample}x{downsample} block is at least half "
            f"inside the {modality} mask ({int(src_mask.sum())} voxels), so the cache would hold no voxel; "
            "use a smaller downsample"
        )
    return src_mask, mask


def _write_splits(
    dataset: OpenBHBDataset,
    out: Path,
    splits: Sequence[str],
    modality: str,
    src_mask: np.ndarray,
    mask: np.ndarray,
    downsample: int,
    normalize: str,
    chunk: int,
    params: dict,
    progress: bool,
) -> tuple[dict[str, int], dict[str, str]]:
    """Write (or keep, when up to date) each asked split; returns subject counts and signatures of the cache's splits.

    A split not asked for is described only when the folder holds an up-to-date copy of it.
    """
    counts, split_signatures = {}, {}
    split_of = dataset.participants["split"].to_numpy()
    for split in SPLITS:
        indices = np.flatnonzero(split_of == split)
        sig = split_signature(dataset, split, indices, modality, src_mask, params)
        if split in splits:
            _write_split(
                dataset, out, split, indices, modality, src_mask, mask, downsample, normalize, chunk, sig, progress
            )
        elif not _split_is_done(out, split, sig, (len(indices),) + mask.shape):
            continue  # not asked for, and no up-to-date copy in the folder
        counts[split] = int(indices.size)
        split_signatures[split] = sig
    return counts, split_signatures


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
    split_sig: str,
    progress: bool,
) -> None:
    final = out / f"{split}.npy"
    partial = out / f".{split}.npy.partial"
    state_file = out / f".{split}.progress.json"
    sidecar = out / f"{split}.signature.json"
    shape = (len(indices),) + mask.shape
    if _split_is_done(out, split, split_sig, shape):
        log.info("%s: up to date (signature %s), not recomputed", split, split_sig)
        return
    # The split's files are about to be replaced: its signature must not outlive them.
    sidecar.unlink(missing_ok=True)
    done = 0
    if partial.exists() and state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("signature") == split_sig and tuple(state.get("shape", ())) == shape:
            done = int(state["done"])
            log.info("%s: resuming at volume %d of %d", split, done, len(indices))
    if done == 0:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape).flush()
    array = np.lib.format.open_memmap(partial, mode="r+")
    # One float32 block of `chunk` source volumes, reused for every chunk.
    block = np.empty((min(chunk, max(len(indices), 1)),) + src_mask.shape, dtype=np.float32)
    ids = dataset.participants["participant_id"].to_numpy()
    bar = tqdm(total=len(indices), initial=done, desc=f"preprocess {split}", unit="vol", disable=not progress)
    try:
        for start in range(done, len(indices), chunk):
            stop = min(start + chunk, len(indices))
            for j, i in enumerate(indices[start:stop]):
                block[j].fill(0.0)
                np.copyto(block[j], dataset.volume(int(i), modality), where=src_mask)
            pooled = block_mean(block[: stop - start], factor)
            for j, vol in enumerate(pooled):
                normed = normalize_volume(vol, mask, normalize)
                peak = max(float(normed.max()), -float(normed.min())) if normed.size else 0.0
                if peak > FLOAT16_MAX:
                    raise OpenBHBError(
                        f"participant {ids[indices[start + j]]!r} ({split}): a voxel value of magnitude "
                        f"{peak:.6g} after normalize={normalize!r} does not fit the cache's float16 "
                        f"(largest finite value {FLOAT16_MAX:g}); use normalize='zscore' or rescale the input"
                    )
                array[start + j] = normed
            del pooled
            array.flush()
            with atomic_path(state_file) as tmp:
                tmp.write_text(json.dumps({"signature": split_sig, "shape": list(shape), "done": stop}))
            bar.update(stop - start)
    finally:
        bar.close()
        del array, block
    table = dataset.participants.iloc[indices].reset_index(drop=True)
    table.insert(0, "row", np.arange(len(table)))
    save_table(out / f"{split}.tsv", table)
    os.replace(partial, final)
    state_file.unlink(missing_ok=True)
    save_json(sidecar, {"signature": split_sig})
