"""Training data: cache splits held in (device) memory, and the views of a batch.

The cache is read by :mod:`brainage.data.cache` (numpy only, so training runs on machines that
have only torch, monai and numpy).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from brainage.errors import BrainAgeError, ConfigError
from brainage.training.config import check_augmentations

__all__ = [
    "VolumeStore",
    "build_augmentation",
    "make_views",
]


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


class VolumeStore:
    """Batches of volumes from a memory-mapped split, held whole on the device when it fits.

    Resident mode copies the float16 split once to ``device`` (chunk by chunk, checking that
    every value is finite) and indexes it there: no loader, no host-device copies per step.
    Streaming mode reads each batch from the memory map (sorted row order for locality),
    checks it and copies it through pinned memory.

    Args:
        volumes: ``(n, X, Y, Z)`` array (a memory map).
        device: where batches are returned.
        resident: ``True``, ``False`` or ``None`` (= when the float16 split fits in half of the
            free memory of ``device``).
        name: used in error messages.
        chunk: volumes copied at a time in resident mode.

    Raises:
        ValueError: a non-finite voxel (named by row).
    """

    def __init__(
        self,
        volumes: np.ndarray,
        device: torch.device | str = "cpu",
        resident: bool | None = None,
        name: str = "split",
        chunk: int = 256,
    ) -> None:
        self.device = torch.device(device)
        self.source = volumes
        self.name = name
        self.shape = tuple(int(s) for s in volumes.shape[1:])
        nbytes = int(np.prod(volumes.shape, dtype=np.int64)) * 2
        if resident is None:
            resident = nbytes <= _free_bytes(self.device) // 2
        self.resident = bool(resident)
        self.data: Tensor | None = None
        if self.resident:
            self.data = torch.empty(tuple(volumes.shape), dtype=torch.float16, device=self.device)
            for start in range(0, len(volumes), chunk):
                block = torch.from_numpy(np.array(volumes[start : start + chunk], dtype=np.float16))
                self._check_finite(block, np.arange(start, start + len(block)))
                self.data[start : start + len(block)].copy_(block)

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def _check_finite(self, block: Tensor, rows: np.ndarray) -> None:
        """Raise naming the split rows (``rows[i]`` is the row of ``block[i]``) that hold NaN or inf."""
        finite = torch.isfinite(block).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = rows[torch.nonzero(~finite).flatten().numpy()].tolist()
            raise BrainAgeError(f"{self.name}: non-finite voxel values (NaN or inf) in row(s) {bad[:10]}")

    def batch(self, indices: Tensor | Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Volumes of ``indices`` as a ``(b, 1, X, Y, Z)`` tensor of ``dtype`` on the device.

        In resident mode, ``indices`` already on the device are used there (no host round trip).
        In streaming mode they are read on the host; on CUDA the batch is gathered straight into
        pinned memory and copied without blocking the host.
        """
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.data is not None:
            return self.data[index.to(self.device)].unsqueeze(1).to(dtype)
        index = index.cpu()
        order = torch.argsort(index)
        rows = index[order].numpy()
        block = torch.from_numpy(np.asarray(self.source[rows], dtype=np.float16))
        self._check_finite(block, rows)
        inverse = torch.argsort(order)
        if self.device.type == "cuda":
            staged = torch.empty(block.shape, dtype=block.dtype, pin_memory=True)
            block = torch.index_select(block, 0, inverse, out=staged).to(self.device, non_blocking=True)
        else:
            block = block[inverse]
        return block.unsqueeze(1).to(dtype)


def build_augmentation(specs: Sequence[dict[str, Any]]):
    """A MONAI ``Compose`` of array transforms from ``{"name": ..., **kwargs}`` specs, or ``None``.

    Each transform works on one ``(1, X, Y, Z)`` channel-first volume. Only the transforms of
    :data:`brainage.training.config.AUGMENTATIONS` are built, and only with the arguments their
    constructor names.

    Raises:
        ConfigError: a transform outside the allow-list (named), an argument it does not take,
            or invalid argument values.
    """
    if not specs:
        return None
    import inspect

    import monai.transforms as mt

    check_augmentations(list(specs))
    transforms = []
    for i, spec in enumerate(specs):
        name = spec["name"]
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        cls = getattr(mt, name)
        params = inspect.signature(cls.__init__).parameters
        valid = [p for p, v in params.items() if p != "self" and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            raise ConfigError(f"augmentations[{i}] ({name}): unknown argument(s) {unknown}; {name} takes {valid}")
        try:
            transforms.append(cls(**kwargs))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"augmentations[{i}] ({name}): invalid arguments {kwargs} ({err})") from err
    return mt.Compose(transforms)


def make_views(x: Tensor, views: int, augment) -> Tensor:
    """Stack ``views`` independently augmented copies of a batch, view-major.

    Args:
        x: ``(B, 1, X, Y, Z)`` volumes.
        views: ``V``.
        augment: a MONAI transform applied to each ``(1, X, Y, Z)`` volume, or ``None``.

    Returns:
        ``(V * B, 1, X, Y, Z)``; row ``v * B + b`` is view ``v`` of subject ``b``.
    """
    from monai.utils import convert_to_tensor

    out = []
    for _ in range(views):
        if augment is None:
            out.append(x)
        else:
            out.append(torch.stack([convert_to_tensor(augment(volume), track_meta=False) for volume in x]).to(x.dtype))
    return torch.cat(out)
