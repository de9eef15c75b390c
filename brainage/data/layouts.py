"""OpenBHB on disk in both public layouts, read one volume at a time.

Two layouts are read (see ``docs/data.md``):

* **per-subject** (the public release): ``participants.tsv``, ``resource/`` (masks,
  ``resources.json``) and one ``.npy`` per subject and modality under
  ``{train,val}/derivatives/sub-<id>/ses-1/``;
* **RAMP** (the challenge kit): ``train.npy`` / ``test.npy`` of shape (n, 3,659,572), one
  row per subject holding the masked voxels of each modality
  (:func:`~brainage.data.modalities.ramp_row_slices`), plus ``train.tsv`` / ``test.tsv``.

Arrays are opened as memory maps; reading one subject's volume costs one volume of RAM
(the volume itself, plus a few hundred KB of working memory).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.data.cache import _site_column
from brainage.data.masks import load_mask, unmask_rows
from brainage.data.modalities import (
    MODALITIES,
    RAMP_ROW_LENGTH,
    OpenBHBError,
    get_modality,
    grid_factor,
    ramp_row_slices,
)
from brainage.data.participants import load_participants
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.io import read_json

__all__ = [
    "SPLIT_FOLDER",
    "OpenBHBDataset",
    "PerSubjectLayout",
    "RampLayout",
    "detect_layout",
    "open_dataset",
    "open_npy",
    "read_resources",
]

#: The folder of each split in the per-subject layout.
SPLIT_FOLDER: dict[str, str] = {"train": "train", "internal_test": "val", "external_test": "val"}


def open_npy(path: str | os.PathLike, mode: str = "r") -> np.memmap:
    """Memory-map a ``.npy`` file after checking its header against its size.

    Raises:
        FileNotFoundError: no such file.
        OpenBHBError: not a ``.npy`` file, an object array, or truncated (the header
            promises more bytes than the file holds).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"array file not found: {path}")
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
            mod = get_modality(modality)
            path = self.mask_paths.get(modality)
            if path is None or not Path(path).is_file():
                raise InputNotFoundError(f"{modality} mask not found: expected {path or mod.mask_file}")
            data = load_mask(path, threshold=mod.threshold)
            if not data.any():
                raise OpenBHBError(
                    f"{path}: empty {modality} mask: no voxel is above the mask threshold "
                    f"{mod.threshold:g}; expected the OpenBHB mask {mod.mask_file}"
                )
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
        name = get_modality(modality).file_pattern.format(id=pid)
        return self.root / SPLIT_FOLDER[row["split"]] / "derivatives" / f"sub-{pid}" / "ses-1" / name

    def validate(self, modality: str = "vbm") -> None:
        mod = get_modality(modality)
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
            raise BrainAgeError(f"part must be 'train', 'test' or 'both', got {part!r}")
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
            table = load_participants(
                table_path, default_split="train" if name == "train" else None, require_split=name == "train"
            )
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
                    + (
                        "a participant without an array"
                        if array.ndim == 2 and array.shape[0] < len(table)
                        else "an array row without a participant"
                        if array.ndim == 2
                        else ""
                    )
                )
            _check_float(array, str(root / f"{name}.npy"))
            table["ramp_part"] = name
            table["ramp_row"] = np.arange(len(table))
            tables.append(table)
            arrays.append(array)
        participants = pd.concat(tables, ignore_index=True)
        super().__init__(root, participants, masks)
        self.arrays = dict(zip(parts, arrays, strict=True))
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
        _check_finite_volume(
            vol, mask, f"{self.root / (rec['ramp_part'] + '.npy')}, row {int(rec['ramp_row'])} ({modality})"
        )
        return vol

    def validate(self, modality: str = "vbm") -> None:
        self.row_slices()


def detect_layout(root: str | os.PathLike) -> str:
    """``"per_subject"`` or ``"ramp"`` from the files present in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"OpenBHB folder not found: {root}")
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
    raise BrainAgeError(f"unknown layout {layout!r}; expected 'auto', 'per_subject' or 'ramp'")


def read_resources(root: str | os.PathLike) -> dict:
    """``resource/resources.json`` as a dict (empty when absent)."""
    path = Path(root) / "resource" / "resources.json"
    if not path.exists():
        return {}
    return read_json(path, "the data folder's resources.json")
