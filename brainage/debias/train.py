"""Training with model selection on a validation split.

The reference code of ReBias, EnD and FairKL reports the best *test* accuracy over epochs.
Here the epoch is chosen on a validation split that is not the test set (for Biased-MNIST a
recoloured held-out part of the training digits at rho = 0.1) and the test accuracy is read
at that epoch. A ``monitor`` set may be evaluated at every epoch too, only so that the
reference protocol's (optimistic) number can be reported next to it, clearly labelled.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from brainage.errors import BrainAgeError

from .data.arrays import ArraySet
from .methods import MethodConfig, build_objective
from .models import build_model

__all__ = ["TrainConfig", "TrainResult", "Normalizer", "augment_batch", "train_model", "predict", "build_from_config"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation and architecture settings.

    Attributes:
        model: ``"simpleconvnet"`` or ``"resnet18"``.
        width: channel multiplier (1.0 = the paper's network).
        cifar_stem: ResNet-18 stem for 32 x 32 inputs.
        epochs: training epochs.
        batch_size: samples per step.
        lr: Adam learning rate of the encoder (and of the classifier for the joint methods).
        weight_decay: Adam weight decay.
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: step-decay factor.
        probe_lr: Adam learning rate of the classifier of the contrastive methods.
        n_views: views per sample for the contrastive losses (1 without augmentation).
        augment: random crop (padding 4) + horizontal flip (CIFAR recipes).
        mean, std: per-channel normalisation of ``x / 255``.
        seed: seed of the initialisation, the batch order and the augmentation.
        threads: ``torch.set_num_threads``; 0 leaves torch's default.
        device: torch device.
    """

    model: str = "simpleconvnet"
    width: float = 1.0
    cifar_stem: bool = True
    epochs: int = 80
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [26, 53])
    gamma: float = 0.1
    probe_lr: float = 1e-3
    n_views: int = 1
    augment: bool = False
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    seed: int = 0
    threads: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise BrainAgeError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if self.n_views < 1:
            raise BrainAgeError(f"n_views must be >= 1, got {self.n_views}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    Attributes:
        model: the network loaded with the weights of the selected epoch.
        best_epoch: 1-based epoch with the highest validation accuracy (earliest on ties).
        history: one dict per epoch (loss parts, train/validation accuracy, monitor accuracy).
        seconds: wall time of the training loop.
    """

    model: nn.Module
    best_epoch: int
    history: list[dict]
    seconds: float


class Normalizer:
    """``uint8 BCHW -> float32 (x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: list[float], std: list[float], device: str = "cpu") -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def check(self, data: ArraySet) -> None:
        """Refuse images whose channel count differs from the normalisation's; names ``data.source``."""
        if len(data) and data.images.shape[1] != self.mean.shape[1]:
            raise BrainAgeError(
                f"{data.source or 'images'}: images have {data.images.shape[1]} channel(s), but the normalisation "
                f"(mean/std) has {self.mean.shape[1]}; the model takes {self.mean.shape[1]}-channel images"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.mean.shape[1]:
            raise BrainAgeError(f"images have {images.shape[1]} channels, the normalisation {self.mean.shape[1]}")
        return (images.float() / 255.0 - self.mean) / self.std


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, batched.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``
    per sample, done on the whole ``BCHW`` batch at once: MONAI's and torchvision's transforms
    act on one sample at a time, which on CPU costs more than the small networks here.
    """
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)
    out = padded[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(x.shape[1], device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def build_from_config(method: MethodConfig, config: TrainConfig, n_classes: int) -> nn.Module:
    """The network for ``method`` under ``config``."""
    return build_model(
        config.model,
        n_classes,
        width=config.width,
        feature_activation=method.feature_activation,
        cifar_stem=config.cifar_stem,
    )


@torch.no_grad()
def predict(
    model: nn.Module, data: ArraySet, normalizer: Normalizer, batch_size: int = 512, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(n, C)`` and features ``(n, D)`` of ``data`` in eval mode."""
    normalizer.check(data)
    was_training = model.training
    model.eval()
    logits, feats = [], []
    images = torch.from_numpy(data.images)
    for start in range(0, len(data), batch_size):
        x = normalizer(images[start : start + batch_size].to(device))
        f = model.features(x)
        feats.append(f.cpu())
        logits.append(model.fc(f).cpu())
    model.train(was_training)
    if not feats:
        return np.zeros((0, model.fc.out_features), np.float32), np.zeros((0, model.fc.in_features), np.float32)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def _accuracy(model: nn.Module, data: ArraySet, normalizer: Normalizer, device: str) -> float:
    logits, _ = predict(model, data, normalizer, device=device)
    return float(np.mean(logits.argmax(1) == data.labels)) if len(data) else float("nan")


def train_model(
    method: MethodConfig,
    config: TrainConfig,
    train_set: ArraySet,
    val_set: ArraySet,
    n_classes: int | None = None,
    monitor: ArraySet | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one model and return it at the epoch chosen on ``val_set``.

    Args:
        method: the objective.
        config: optimisation and architecture.
        train_set: ``uint8 (n, C, H, W)`` images with labels and bias (the bias labels are
            used by FairKL and EnD only).
        val_set: model-selection split (never the test set).
        n_classes: defaults to ``max(label) + 1`` over train and validation.
        monitor: optional split evaluated at every epoch for the reference protocol column.
        progress: show a tqdm bar over epochs.

    Raises:
        ValueError: FairKL/EnD with unknown (negative) bias labels, or empty splits.
    """
    from tqdm.auto import tqdm

    if len(train_set) == 0 or len(val_set) == 0:
        raise BrainAgeError("training and validation splits must not be empty")
    if method.name in ("eps-supinfonce-fairkl", "ce-end") and np.any(train_set.bias < 0):
        raise BrainAgeError(f"method {method.name} needs the bias label of every training sample")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if n_classes is None:
        n_classes = int(max(train_set.labels.max(), val_set.labels.max())) + 1
    torch.manual_seed(config.seed)
    loop = _make_loop(method, config, train_set, n_classes)
    model, normalizer, device = loop.model, loop.normalizer, config.device

    history: list[dict] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    start = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc=f"{method.name}", disable=not progress, leave=False)
    for epoch in bar:
        record = _train_epoch(loop, epoch)
        record["val_acc"] = _accuracy(model, val_set, normalizer, device)
        if monitor is not None:
            record["monitor_acc"] = _accuracy(model, monitor, normalizer, device)
        history.append(record)
        if record["val_acc"] > best_acc:
            best_acc, best_epoch = record["val_acc"], epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record['val_acc']:.3f}")
        log.debug("epoch %d %s", epoch, record)
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, history, seconds)


@dataclass
class _Loop:
    """What every epoch of :func:`train_model` uses: the network, its objective and optimisers, the training data."""

    method: MethodConfig
    config: TrainConfig
    model: nn.Module
    objective: nn.Module
    normalizer: Normalizer
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer | None  # the classifier's, for the contrastive methods
    scheduler: torch.optim.lr_scheduler.LRScheduler
    images: torch.Tensor  # uint8 (n, C, H, W)
    labels: torch.Tensor  # int64 (n,)
    bias: torch.Tensor  # int64 (n,)
    n: int  # training samples
    steps: int  # batches per epoch
    rng: np.random.Generator  # the batch order
    generator: torch.Generator  # the augmentation


def _make_loop(method: MethodConfig, config: TrainConfig, train_set: ArraySet, n_classes: int) -> _Loop:
    """The batch-order and augmentation generators (seeded), network, objective, optimisers and training tensors."""
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = config.device

    model = build_from_config(method, config, n_classes).to(device)
    objective = build_objective(method)
    normalizer = Normalizer(config.mean, config.std, device)
    normalizer.check(train_set)
    if method.contrastive:
        optimizer = torch.optim.Adam(model.encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        probe_optimizer = torch.optim.Adam(model.fc.parameters(), lr=config.probe_lr)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        probe_optimizer = None
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)

    images = torch.from_numpy(train_set.images)
    labels = torch.from_numpy(train_set.labels.astype(np.int64))
    bias = torch.from_numpy(train_set.bias.astype(np.int64))
    n = len(train_set)
    steps = n // config.batch_size if n >= config.batch_size else 1
    return _Loop(
        method,
        config,
        model,
        objective,
        normalizer,
        optimizer,
        probe_optimizer,
        scheduler,
        images,
        labels,
        bias,
        n,
        steps,
        rng,
        generator,
    )


def _train_epoch(loop: _Loop, epoch: int) -> dict:
    """One epoch (1-based ``epoch``); returns its record: mean loss parts, ``epoch``, ``lr``, ``train_acc``."""
    config, model = loop.config, loop.model
    model.train()
    order = torch.from_numpy(loop.rng.permutation(loop.n))
    sums: dict[str, float] = {}
    correct = seen = 0
    for step in range(loop.steps):
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        loss, parts, logits, y = _train_step(loop, idx)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        correct += int((logits.argmax(1) == y).sum())
        seen += int(y.shape[0])
    record = {k: v / loop.steps for k, v in sums.items()}
    record["epoch"] = epoch
    record["lr"] = loop.optimizer.param_groups[0]["lr"]
    loop.scheduler.step()
    record["train_acc"] = correct / max(seen, 1)
    return record


def _train_step(loop: _Loop, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """One optimisation step on the rows ``idx``: the loss, its parts, the logits ``(B, C)``, the labels ``(B,)``."""
    config, method, model, device = loop.config, loop.method, loop.model, loop.config.device
    x = loop.normalizer(loop.images[idx].to(device))
    y, b = loop.labels[idx].to(device), loop.bias[idx].to(device)
    views = [augment_batch(x, loop.generator) if config.augment else x for _ in range(config.n_views)]
    feats = model.features(torch.cat(views)) if len(views) > 1 else model.features(views[0])
    feats = feats.view(config.n_views, x.shape[0], -1).transpose(0, 1)
    first = feats[:, 0]
    logits = model.fc(first.detach() if method.contrastive else first)
    loss, probe_loss, parts = loop.objective(feats, logits, y, b)
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.probe_optimizer is not None:
        loop.probe_optimizer.zero_grad(set_to_none=True)
        (loss + probe_loss).backward()
        loop.probe_optimizer.step()
    else:
        loss.backward()
    loop.optimizer.step()
    return loss, parts, logits, y
