"""RAMP-layout rows (the challenge kit's ``train.npy`` / ``test.npy``) from an OpenBHB folder.

Used to run a submission on the project's own subjects exactly as the server feeds it. Each
row is vbm voxels | quasiraw voxels | xhemi | vbm_roi | desikan_roi | destrieux_roi
(:func:`brainage.data.modalities.ramp_row_slices` for the folder's masks); only the blocks of the
requested modalities are filled, the others stay zero. The arrays are created sparse (zero
blocks take no disk space) and written one subject at a time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainage.data.layouts import OpenBHBDataset, open_dataset
from brainage.data.masks import mask_volumes
from brainage.data.modalities import MODALITIES, ramp_row_slices
from brainage.errors import BrainAgeError
from brainage.io import make_folders, save_table

__all__ = ["write_ramp_rows"]


def write_ramp_rows(
    data: str | os.PathLike | OpenBHBDataset,
    out: str | os.PathLike,
    modalities: Sequence[str] = ("vbm",),
    layout: str = "auto",
) -> dict[str, int]:
    """Write ``out/{train,test}.{npy,tsv}`` and ``out/resource/`` (both masks) for a data folder.

    ``train`` holds the ``train`` split in participants-table order; ``test`` the
    ``internal_test`` then the ``external_test`` subjects (the kit's order), with a ``split``
    column in ``test.tsv``. The folder appears by an atomic rename.

    Args:
        data: OpenBHB folder (either layout) or an opened dataset.
        out: folder to create (replaced if it exists).
        modalities: blocks to fill (``vbm``, ``quasiraw``); the rest of each row is zero.
        layout: ``auto``, ``per_subject`` or ``ramp`` when ``data`` is a path.

    Returns:
        ``{"train": n, "test": n, "row_length": L}``.

    Raises:
        FileNotFoundError: a mask image is missing (both are needed to lay out a row).
    """
    dataset = data if isinstance(data, OpenBHBDataset) else open_dataset(data, layout=layout)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise BrainAgeError(f"unknown modality {unknown}; expected a subset of {sorted(MODALITIES)}")
    masks = {m: dataset.mask(m) for m in MODALITIES}
    slices = ramp_row_slices(int(masks["vbm"].sum()), int(masks["quasiraw"].sum()))
    length = slices["destrieux_roi"].stop
    split = dataset.participants["split"].to_numpy()
    parts = {
        "train": np.flatnonzero(split == "train"),
        "test": np.r_[np.flatnonzero(split == "internal_test"), np.flatnonzero(split == "external_test")],
    }
    out = Path(out)
    make_folders(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        (tmp / "resource").mkdir()
        for m in MODALITIES:
            shutil.copyfile(dataset.mask_paths[m], tmp / "resource" / MODALITIES[m].mask_file)
        for part, indices in parts.items():
            array = np.lib.format.open_memmap(
                tmp / f"{part}.npy", mode="w+", dtype=np.float32, shape=(len(indices), length)
            )
            for row, index in enumerate(indices):
                for m in modalities:
                    array[row, slices[m]] = mask_volumes(dataset.volume(int(index), m), masks[m])
            array.flush()
            del array
            table = dataset.participants.iloc[indices].reset_index(drop=True)
            save_table(tmp / f"{part}.tsv", table.drop(columns=[c for c in ("ramp_part", "ramp_row") if c in table]))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"train": int(parts["train"].size), "test": int(parts["test"].size), "row_length": int(length)}
