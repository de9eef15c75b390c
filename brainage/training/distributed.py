"""Multi-process training: torchrun environment, DistributedDataParallel and global batches.

Launch with ``torchrun --nproc_per_node G -m brainage train ...``; each process trains on
``batch_size / G`` subjects per step (a :class:`torch.utils.data.DistributedSampler` splits the
epoch's permutation) and the contrastive loss is computed on the batch gathered from all
processes, as if one device held it. :func:`brainage.device.resolve_device` picks each process's device. The gather keeps autograd: the backward of
``torch.distributed.nn.functional.all_gather`` sums the gradients every process computes for a
slice back onto its owner, so each process gets ``G`` times the gradient of the global loss
with respect to its own features, and DDP's gradient averaging divides by ``G`` again. The
parameter gradients are therefore those of the single-process global batch (with BatchNorm
statistics per process unless ``sync_batchnorm``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from brainage.device import resolve_device  # re-exported: its home before brainage.device
from brainage.errors import BrainAgeError

__all__ = [
    "DistContext",
    "any_process",
    "barrier",
    "cleanup",
    "gather",
    "gather_with_grad",
    "init_from_env",
    "resolve_device",
    "wrap_model",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Without those variables (or with a world of 1) nothing is initialised. The backend is NCCL
    when CUDA is available and gloo otherwise, unless given.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (no-op when not distributed)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_with_grad(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Concatenate every process's ``tensor`` along dim 0, keeping autograd to the local slice.

    Args:
        tensor: ``(b, ...)`` local tensor; every process must pass the same shape.

    Returns:
        ``(world_size * b, ...)``, rank-major.
    """
    if not ctx.enabled:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def gather(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Like :func:`gather_with_grad` without gradient (labels, ages)."""
    if not ctx.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_mean(value: float, ctx: DistContext, device: torch.device) -> float:
    """Mean of a Python number over processes (for logging)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def any_process(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Whether ``flag`` holds on any process (a collective: every process must call it)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when distributed (optionally with SyncBatchNorm).

    Raises:
        ValueError: ``sync_batchnorm`` on a non-CUDA device (PyTorch supports it on GPUs only).
    """
    if not ctx.enabled:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise BrainAgeError("sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
