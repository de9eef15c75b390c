"""The training loop: kernel contrastive losses or L1 regression, resumable epoch by epoch.

One run writes into its output folder:

- ``checkpoint.pt``: after every epoch, atomically: weights, optimiser, scheduler and RNG
  states, the per-epoch metrics so far, the config and the cache it was trained on;
- ``metrics.csv`` (and ``tensorboard/`` when TensorBoard is installed): one row per epoch;
- ``model.pt`` and ``config.json`` when the last epoch is done.

Starting the same command again resumes from ``checkpoint.pt``. The batch order of epoch ``e``
is a function of ``(seed, e)`` only (DistributedSampler), augmentations are reseeded from
``(seed, e, rank)`` at each epoch and the RNG states are restored, so on CPU a resumed run ends
with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from brainage.data.cache import CacheSplit, cache_identity, open_split
from brainage.device import resolve_device
from brainage.errors import BrainAgeError
from brainage.io import atomic_open, make_folders, remove_stale_temporaries, save_json
from brainage.losses import trusted_inputs
from brainage.training.checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    VERSION,
    CheckpointError,
    build_model,
    config_of,
    load_file,
    load_state_strict,
    save_file,
)
from brainage.training.config import RUNTIME_FIELDS, TrainConfig
from brainage.training.data import VolumeStore, build_augmentation, make_views
from brainage.training.distributed import (
    DistContext,
    all_mean,
    any_process,
    barrier,
    gather,
    gather_with_grad,
    wrap_model,
)

__all__ = [
    "TrainingDivergedError",
    "autocast_context",
    "contrastive_loss",
    "make_criterion",
    "make_optimizer",
    "make_scheduler",
    "regression_loss",
    "train",
]

log = logging.getLogger(__name__)


class TrainingDivergedError(BrainAgeError):
    """The loss became NaN or infinite; the last checkpoint is left as it was."""


DIVERGENCE_CHECK_STEPS = 20
"""Steps between two reads of the epoch's losses on the host (the divergence check)."""


class _EpochLosses:
    """The per-step losses (and L1 absolute errors) of one epoch, kept on the training device.

    Recording a step costs no host-device synchronisation. The host reads them every
    :data:`DIVERGENCE_CHECK_STEPS` steps and at the epoch's end (:meth:`check`), always before the
    epoch's checkpoint is written: a non-finite loss raises :class:`TrainingDivergedError` and the
    last checkpoint stays the one of the previous epoch, whatever the weights became meanwhile.
    """

    def __init__(self, steps: int, device: torch.device) -> None:
        self.loss = torch.zeros(steps, dtype=torch.float32, device=device)
        self.abs_err = torch.zeros(steps, dtype=torch.float32, device=device)
        self.checked = 0

    def record(self, step: int, loss: Tensor, abs_err: Tensor | None = None) -> None:
        self.loss[step] = loss.detach()
        if abs_err is not None:
            self.abs_err[step] = abs_err.detach()

    def check(self, end: int, epoch: int, ckpt_path: Path, ctx: DistContext, device: torch.device) -> float:
        """Mean loss of steps ``[checked, end)`` on this process; raises if any process's was not finite."""
        values = self.loss[self.checked : end].tolist()
        bad = [self.checked + i for i, value in enumerate(values) if not math.isfinite(value)]
        if any_process(bool(bad), ctx, device):
            where = (
                f"loss is {values[bad[0] - self.checked]} at epoch {epoch + 1} step {bad[0] + 1}"
                if bad
                else f"another process's loss is not finite at epoch {epoch + 1} (steps {self.checked + 1}-{end})"
            )
            saved = f"the last checkpoint {ckpt_path} is intact" if ckpt_path.exists() else "nothing was saved"
            raise TrainingDivergedError(f"{where}; {saved} (try a lower lr)")
        self.checked = end
        return sum(values) / len(values)

    def totals(self) -> tuple[float, float]:
        """Sums of the losses and absolute errors in step order (the metrics of the epoch)."""
        return sum(self.loss.tolist()), sum(self.abs_err.tolist())


def autocast_context(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA under ``precision="auto"`` or ``"bf16"``; fp32 on the CPU.

    Raises:
        ValueError: ``precision="bf16"`` on the CPU. With torch 2.13 the CPU backward of bf16
            3-D convolutions returns NaN weight gradients at random (same seed and inputs, about
            one step in ten in ``tests/test_training.py``'s tiny network): training would
            diverge by chance, so it is refused rather than silently run.
    """
    if config.precision == "bf16" and device.type != "cuda":
        raise BrainAgeError(
            f"precision='bf16' is not supported for training on {device.type}: the CPU backward of bf16 "
            "3-D convolutions gives random NaN gradients with this torch; use precision='auto' or 'fp32' "
            "(bf16 feature extraction, forward only, is fine)"
        )
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(config: TrainConfig, device: torch.device) -> bool:
    return config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")


def make_criterion(config: TrainConfig) -> nn.Module | None:
    """The kernel contrastive loss of a contrastive method; ``None`` for L1 methods."""
    if not config.is_contrastive:
        return None
    from brainage.losses import KernelizedContrastiveLoss

    return KernelizedContrastiveLoss(
        method=config.method,
        kernel=config.kernel,
        sigma=config.sigma,
        temperature=config.temperature,
        formulation=config.formulation,
    )


def make_optimizer(config: TrainConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: the reference step decay, cosine annealing to 0, or constant."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.step_gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def contrastive_loss(
    model: nn.Module,
    x: Tensor,
    ages: Tensor,
    criterion: nn.Module,
    views: int,
    augment: Callable | None = None,
    ctx: DistContext | None = None,
) -> Tensor:
    """Kernel contrastive loss of one local batch, on the batch gathered from all processes.

    Without augmentation the ``views`` views of a subject are identical, so the network runs
    once on ``x`` and its output is repeated: the same loss and gradients as running it on the
    ``V * B`` stacked copies (BatchNorm sees the same mean and biased variance), at ``1/V`` of
    the cost. Only BatchNorm's running variance differs: PyTorch updates it with the unbiased
    variance, ``n / (n - 1)`` with ``n = B`` here instead of ``V * B``.

    Args:
        model: maps ``(n, 1, X, Y, Z)`` to ``(n, D)`` unit-norm projections.
        x: ``(B, 1, X, Y, Z)`` local volumes.
        ages: ``(B,)`` local ages in years.
        criterion: called as ``criterion(features (B', V, D), ages (B',))`` on the global batch.
        views: ``V``.
        augment: per-volume MONAI transform, or ``None`` for identical views.
        ctx: distributed context (``None``: single process).

    Returns:
        Scalar loss.
    """
    ctx = ctx or DistContext()
    batch = x.shape[0]
    if augment is None:
        z = model(x).unsqueeze(1).expand(-1, views, -1)
    else:
        z = model(make_views(x, views, augment)).view(views, batch, -1).transpose(0, 1)
    z = gather_with_grad(z.contiguous(), ctx)
    return criterion(z, gather(ages, ctx))


def regression_loss(model: nn.Module, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """L1 loss on (standardised) age targets; returns the loss and the detached predictions ``(B,)``."""
    prediction = model(x).float()
    return F.l1_loss(prediction, targets), prediction.detach()


def _set_determinism(device: torch.device) -> Callable[[], None]:
    """Deterministic kernels on CPU (restored afterwards); cuDNN autotuning on CUDA."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = True

    def restore() -> None:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_benchmark

    return restore


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


METRIC_COLUMNS = ("epoch", "lr", "loss", "train_mae", "seconds", "samples_per_s")


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    with atomic_open(path, "w", newline="") as fh:
        fh.write(buffer.getvalue())


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        mininterval=0.5 if interactive else 10.0,
        dynamic_ncols=interactive,
    )


def _augment_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**32)


def train(
    config: TrainConfig,
    cache: str | os.PathLike,
    out: str | os.PathLike,
    ctx: DistContext | None = None,
    stop_after: int | None = None,
    restart_on_mismatch: bool = False,
) -> Path:
    """Train (or resume) one run and write its folder (see the module docstring).

    Args:
        config: the run's options.
        cache: training cache folder (its ``train`` split is used).
        out: output folder; an existing ``checkpoint.pt`` there is resumed.
        ctx: distributed context (from :func:`brainage.training.distributed.init_from_env`).
        stop_after: return after this many epochs of this call (the run stays resumable).
        restart_on_mismatch: a checkpoint of other options or another cache is set aside as
            ``checkpoint.pt.stale`` (with a warning) and training starts afresh, instead of
            raising. For workflows, where a changed config or cache must retrain.

    Returns:
        Path of ``model.pt`` (written when all epochs are done), or of ``checkpoint.pt``.

    Raises:
        ValueError: bad config or data, CUDA requested without CUDA, batch larger than the
            training split, a checkpoint of another config or cache (:class:`CheckpointError`),
            a diverging loss (:class:`TrainingDivergedError`).
    """
    ctx = ctx or DistContext()
    out = Path(out)
    device = resolve_device(config.device, ctx)
    amp = autocast_context(config, device)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    split, target = _open_training_split(config, cache, ctx)
    ckpt_path = out / "checkpoint.pt"

    restore_determinism = _set_determinism(device)
    writer = None
    try:
        run = _start_run(config, target, out, ckpt_path, device, restart_on_mismatch, ctx)
        loop = _make_loop(config, split, f"{cache}/train", run.model, device, amp, target, ctx)
        if ctx.is_main:
            make_folders(out)
            writer = _tensorboard(out)
        bar = _progress(
            loop.steps * config.epochs,
            loop.steps * run.start_epoch,
            config.progress and ctx.is_main,
            f"train {config.method} seed {config.seed}",
        )
        end_epoch = config.epochs if stop_after is None else min(config.epochs, run.start_epoch + stop_after)

        for epoch in range(run.start_epoch, end_epoch):
            row, seconds = _train_epoch(loop, run, epoch, ckpt_path, bar)
            run.metrics.append(row)
            if ctx.is_main:
                save_file(ckpt_path, _checkpoint_payload(run, config, target, epoch + 1, device))
                _write_metrics(out / "metrics.csv", run.metrics)
                _log_epoch(writer, row, config.epochs, seconds)
            barrier(ctx)
        if bar is not None:
            bar.close()

        done = len(run.metrics) >= config.epochs
        if done and ctx.is_main:
            _write_finished_run(out, run, config, target, device, ctx)
        barrier(ctx)
        return out / ("model.pt" if done else "checkpoint.pt")
    finally:
        if writer is not None:
            writer.close()
        restore_determinism()


@dataclass
class _Target:
    """What the run trains on: the cache's identity and the age scaling of the regression targets (years)."""

    identity: dict[str, Any]
    age_mean: float
    age_std: float


@dataclass
class _Run:
    """The state carried from epoch to epoch and saved in ``checkpoint.pt`` (restored on resume)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    metrics: list[dict[str, Any]]
    start_epoch: int
    threads_used: list[int]


@dataclass
class _Loop:
    """What every epoch uses unchanged: the data on its device, the loss, the sampler and the batch sizes."""

    config: TrainConfig
    ctx: DistContext
    device: torch.device
    amp: contextlib.AbstractContextManager
    target: _Target
    store: VolumeStore
    ages_all: Tensor
    criterion: nn.Module | None
    augment: Callable | None
    ddp_model: nn.Module
    sampler: DistributedSampler
    local_batch: int
    steps: int
    channels_last: bool


def _open_training_split(config: TrainConfig, cache: str | os.PathLike, ctx: DistContext) -> tuple[CacheSplit, _Target]:
    """The cache's ``train`` split and its :class:`_Target`; raises when the batch does not fit it."""
    if config.batch_size % ctx.world_size:
        raise BrainAgeError(f"batch_size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    if config.batch_size // ctx.world_size < 2:
        raise BrainAgeError(
            f"batch_size {config.batch_size} gives {config.batch_size // ctx.world_size} subject per process and step; "
            "BatchNorm's batch statistics and the contrastive losses need at least 2"
        )
    split = open_split(cache, "train")
    n_train = len(split)
    if n_train < config.batch_size:
        raise BrainAgeError(
            f"batch_size {config.batch_size} is larger than the training split of {cache} ({n_train} subjects)"
        )
    identity = cache_identity(cache)
    if config.standardize_ages:
        age_mean, age_std = float(split.ages.mean()), float(split.ages.std()) or 1.0
    else:
        age_mean, age_std = 0.0, 1.0
    return split, _Target(identity, age_mean, age_std)


def _start_run(
    config: TrainConfig,
    target: _Target,
    out: Path,
    ckpt_path: Path,
    device: torch.device,
    restart_on_mismatch: bool,
    ctx: DistContext,
) -> _Run:
    """Model, optimiser and scheduler seeded from ``config.seed``, then restored from ``ckpt_path`` if resumable."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if use_channels_last(config, device):
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = make_scheduler(config, optimizer)
    run = _Run(model, optimizer, scheduler, metrics=[], start_epoch=0, threads_used=[torch.get_num_threads()])
    if ctx.is_main:
        remove_stale_temporaries(out, _RUN_FILES)  # left by a killed run
    payload = _resumable_checkpoint(ckpt_path, config, target.identity, restart_on_mismatch, ctx)
    if payload is not None:
        _resume(run, payload, ckpt_path, config, device, ctx)
    return run


def _resume(
    run: _Run, payload: dict[str, Any], ckpt_path: Path, config: TrainConfig, device: torch.device, ctx: DistContext
) -> None:
    """Load weights, optimiser, scheduler and RNG states, epoch and metrics of a checkpoint into ``run``."""
    load_state_strict(run.model, payload["model"], ckpt_path)
    try:
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{ckpt_path}: optimiser or scheduler state does not match ({err})") from err
    _set_rng_state(payload["rng"], device)
    run.start_epoch = int(payload["epoch"])
    run.metrics = list(payload["metrics"])
    if ctx.is_main:
        log.info("resuming %s from epoch %d of %d", ckpt_path, run.start_epoch, config.epochs)
    run.threads_used = _threads_on_resume(payload, ckpt_path, ctx)


def _make_loop(
    config: TrainConfig,
    split: CacheSplit,
    name: str,
    model: nn.Module,
    device: torch.device,
    amp: contextlib.AbstractContextManager,
    target: _Target,
    ctx: DistContext,
) -> _Loop:
    """The training split on ``device``, the loss and augmentation, the wrapped model and the sampler."""
    store = VolumeStore(split.volumes, device, resident=_resident(config.data_on_device), name=name)
    ages_all = torch.as_tensor(split.ages, dtype=torch.float32, device=device)
    criterion = make_criterion(config)
    augment = build_augmentation(config.augmentations) if config.is_contrastive else None
    ddp_model = wrap_model(model, ctx, device, config.sync_batchnorm)
    sampler = DistributedSampler(
        range(len(split)), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    local_batch = config.batch_size // ctx.world_size
    return _Loop(
        config,
        ctx,
        device,
        amp,
        target,
        store,
        ages_all,
        criterion,
        augment,
        ddp_model,
        sampler,
        local_batch,
        steps=len(sampler) // local_batch,
        channels_last=use_channels_last(config, device),
    )


def _train_epoch(loop: _Loop, run: _Run, epoch: int, ckpt_path: Path, bar) -> tuple[dict[str, Any], float]:
    """One epoch (0-based ``epoch``): its metrics row (see :data:`METRIC_COLUMNS`) and its duration in seconds.

    Raises:
        TrainingDivergedError: a non-finite loss, before anything of this epoch is saved.
    """
    config, ctx, device = loop.config, loop.ctx, loop.device
    loop.ddp_model.train()
    loop.sampler.set_epoch(epoch)
    order = torch.as_tensor(list(iter(loop.sampler)), dtype=torch.long)
    if loop.augment is not None:
        loop.augment.set_random_state(seed=_augment_seed(config.seed, epoch, ctx.rank))
    lr = run.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    order_on_device = order.to(device)
    losses = _EpochLosses(loop.steps, device)
    seen = 0
    for step in range(loop.steps):
        rows = slice(step * loop.local_batch, (step + 1) * loop.local_batch)
        x = loop.store.batch(order_on_device[rows] if loop.store.resident else order[rows])
        if loop.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        loss, abs_err = _batch_loss(loop, x, loop.ages_all[order_on_device[rows]])
        losses.record(step, loss, abs_err)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        seen += loop.local_batch
        if bar is not None:
            bar.update(1)
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step + 1 == loop.steps:
            window_loss = losses.check(step + 1, epoch, ckpt_path, ctx, device)
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{window_loss:.4f}", refresh=False)
    loss_sum, abs_err_sum = losses.totals()
    run.scheduler.step()
    seconds = time.perf_counter() - start
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "loss": all_mean(loss_sum / loop.steps, ctx, device),
        "train_mae": all_mean(abs_err_sum / seen, ctx, device) if loop.criterion is None else None,
        "seconds": round(seconds, 3),
        "samples_per_s": round(seen * ctx.world_size / seconds, 2),
    }
    return row, seconds


def _batch_loss(loop: _Loop, x: Tensor, ages: Tensor) -> tuple[Tensor, Tensor | None]:
    """Loss of one local batch: ``x`` ``(B, 1, X, Y, Z)``, ``ages`` ``(B,)`` in years.

    Returns:
        The scalar loss and, for L1 runs, the batch's summed absolute age error in years (else ``None``).
    """
    target = loop.target
    with loop.amp, trusted_inputs():
        if loop.criterion is not None:
            loss = contrastive_loss(
                loop.ddp_model, x, ages, loop.criterion, loop.config.n_views, loop.augment, loop.ctx
            )
        else:
            loss, prediction = regression_loss(loop.ddp_model, x, (ages - target.age_mean) / target.age_std)
    abs_err = None if loop.criterion is not None else (prediction * target.age_std + target.age_mean - ages).abs().sum()
    return loss, abs_err


def _model_payload(
    fmt: str, epoch: int, run: _Run, config: TrainConfig, target: _Target, **extra: Any
) -> dict[str, Any]:
    """The entries ``checkpoint.pt`` and ``model.pt`` share (format to weights), then ``extra`` in order."""
    return {
        "format": fmt,
        "version": VERSION,
        "epoch": epoch,
        "config": config.to_dict(),
        "cache": target.identity,
        "age_mean": target.age_mean,
        "age_std": target.age_std,
        "model": run.model.state_dict(),
        **extra,
    }


def _checkpoint_payload(
    run: _Run, config: TrainConfig, target: _Target, epoch: int, device: torch.device
) -> dict[str, Any]:
    """``checkpoint.pt`` after ``epoch`` epochs: the model payload plus what resuming needs."""
    return _model_payload(
        CHECKPOINT_FORMAT,
        epoch,
        run,
        config,
        target,
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        rng=_rng_state(device),
        metrics=run.metrics,
        num_threads=run.threads_used[-1],
        num_threads_used=run.threads_used,
    )


def _log_epoch(writer, row: dict[str, Any], epochs: int, seconds: float) -> None:
    """The epoch's row to TensorBoard (when installed) and one log line."""
    if writer is not None:
        for key in ("loss", "train_mae", "lr", "samples_per_s"):
            if row[key] is not None:
                writer.add_scalar(key, row[key], row["epoch"])
        writer.flush()
    log.info(
        "epoch %d/%d loss %.4f%s (%.1f s)",
        row["epoch"],
        epochs,
        row["loss"],
        f" train MAE {row['train_mae']:.2f} y" if row["train_mae"] is not None else "",
        seconds,
    )


def _write_finished_run(
    out: Path, run: _Run, config: TrainConfig, target: _Target, device: torch.device, ctx: DistContext
) -> None:
    """``metrics.csv``, ``model.pt`` and ``config.json`` of a run whose epochs are all done."""
    # again here: a rerun that resumes a finished checkpoint (a workflow manager removed the
    # incomplete outputs of a killed job, metrics.csv among them) runs no epoch
    _write_metrics(out / "metrics.csv", run.metrics)
    save_file(
        out / "model.pt",
        _model_payload(MODEL_FORMAT, config.epochs, run, config, target, num_threads_used=run.threads_used),
    )
    save_json(
        out / "config.json",
        {
            "config": config.to_dict(),
            "cache": target.identity,
            "epochs_done": len(run.metrics),
            "world_size": ctx.world_size,
            "device": str(device),
            "num_threads_used": run.threads_used,
        },
    )


def _threads_on_resume(payload: dict[str, Any], path: Path, ctx: DistContext) -> list[int]:
    """The CPU thread counts the run has used, this process's last; warns when it is not the checkpoint's.

    A resume with another count is allowed (``num_threads`` is a runtime option: a job resubmitted
    to a node of another size must not lose its training), but on the CPU the thread count sets
    the order of floating-point sums, so the run's numerics then match neither count's
    uninterrupted run. The warning says so, and ``num_threads_used`` in the checkpoint,
    ``model.pt`` and ``config.json`` records it.
    """
    now = torch.get_num_threads()
    before = payload.get("num_threads")  # absent from checkpoints of older versions
    used = [int(n) for n in payload.get("num_threads_used", [before] if before is not None else [])]
    if before is not None and before != now and ctx.is_main:
        log.warning(
            "%s was written with %d CPU thread(s) and this process uses %d: on the CPU the resumed run is not "
            "bitwise equal to an uninterrupted run with either count (floating-point sums are split by thread); "
            "resume with --num-threads %d for bitwise reproducibility",
            path,
            before,
            now,
            before,
        )
    return used + [now] if not used or used[-1] != now else used


def _resident(option: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[option]


# The files a run writes atomically into its folder.
_RUN_FILES = ("checkpoint.pt", "model.pt", "metrics.csv", "config.json")


def _resumable_checkpoint(
    path: Path, config: TrainConfig, identity: dict[str, Any], restart_on_mismatch: bool, ctx: DistContext
) -> dict[str, Any] | None:
    """The checkpoint to resume from, ``None`` to start afresh; raises on a mismatch unless told to restart."""
    if not path.exists():
        return None
    try:
        payload = load_file(path, CHECKPOINT_FORMAT)
        _check_resumable(payload, path, config, identity)
        return payload
    except CheckpointError as err:
        if not restart_on_mismatch:
            raise
        barrier(ctx)
        if ctx.is_main:
            log.warning("%s; starting afresh (the old checkpoint is kept as %s.stale)", err, path.name)
            os.replace(path, path.with_name(path.name + ".stale"))
        barrier(ctx)
        return None


def _check_resumable(payload: dict[str, Any], path: Path, config: TrainConfig, identity: dict[str, Any]) -> None:
    for key in ("epoch", "optimizer", "scheduler", "rng", "metrics", "cache"):
        if key not in payload:
            raise CheckpointError(f"{path}: incomplete checkpoint, no {key!r} entry")
    stored = config_of(payload, path)
    diff = stored.differences(config, ignore=RUNTIME_FIELDS)
    if diff:
        described = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{path}: was written by a run with other options ({described}); use the same options to resume, "
            "or another --out folder (or delete the checkpoint) to start afresh"
        )
    cached = payload["cache"]
    if any(cached.get(k) != identity[k] for k in ("shape", "signature", "fingerprint")):
        raise CheckpointError(
            f"{path}: was trained on another cache ({cached.get('path')}: grid {cached.get('shape')}, fingerprint "
            f"{cached.get('fingerprint')}) than {identity['path']} (grid {identity['shape']}, fingerprint "
            f"{identity['fingerprint']}); use another --out folder (or delete the checkpoint) to start afresh"
        )
