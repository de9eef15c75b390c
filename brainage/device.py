"""The torch device a command runs on, from the ``device`` option every layer shares.

Needs torch only (not MONAI), so the debiasing track, inference and training all pick their
device here without reaching into the DistributedDataParallel helpers.
"""

from __future__ import annotations

import re
from typing import Protocol

import torch

from brainage.errors import BrainAgeError

__all__ = ["resolve_device"]

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class _Process(Protocol):
    """Where a process stands under torchrun (:class:`brainage.training.distributed.DistContext`)."""

    local_rank: int


def resolve_device(spec: str, ctx: _Process | None = None) -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a device.

    ``auto`` picks CUDA when available (the process's ``local_rank`` GPU under torchrun).

    Raises:
        BrainAgeError: an unknown device, CUDA requested but not available, or a GPU index out of range.
    """
    if not _DEVICE.fullmatch(spec):
        raise BrainAgeError(f"unknown device {spec!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")
    local_rank = 0 if ctx is None else ctx.local_rank
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BrainAgeError(
            f"device {spec!r} requested but CUDA is not available here (torch {torch.__version__}, "
            f"built with CUDA: {torch.version.cuda or 'no'}); use device 'cpu' or 'auto'"
        )
    index = int(spec.split(":")[1]) if ":" in spec else local_rank
    if index >= torch.cuda.device_count():
        raise BrainAgeError(f"device cuda:{index} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", index)
