"""Input validation, view stacking and numerically safe reductions shared by the losses.

Private to :mod:`brainage.losses`; the public classes call these at the top of ``forward``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from brainage.errors import BrainAgeError

__all__ = [
    "check_choice",
    "check_class_labels",
    "check_features",
    "check_positive",
    "check_per_sample",
    "check_unit_norm",
    "class_equality",
    "class_similarities",
    "compute_dtype",
    "contiguous_grad",
    "full_precision",
    "masked_logsumexp",
    "stack_views",
    "trusted_inputs",
    "values_trusted",
]

NORM_ATOL = 1e-3
"""Smallest tolerance on ``| ||z|| - 1 |``; widened for low-precision inputs (see ``check_unit_norm``)."""


def check_choice(value: str, valid: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``valid``.

    Raises:
        ValueError: naming ``what`` and listing the valid choices.
    """
    valid = tuple(valid)
    if not isinstance(value, str) or value not in valid:
        raise BrainAgeError(f"unknown {what} {value!r}; valid choices are: {', '.join(map(repr, valid))}")
    return value


def check_features(features: Tensor, expected: str = "(B, V, D)") -> None:
    """Check that ``features`` is a floating tensor of shape ``(B, V, D)`` with ``B, V, D >= 1``.

    Raises:
        TypeError: if ``features`` is not a floating-point tensor.
        ValueError: if it is not 3-D or has an empty dimension; the message prints the shape.
    """
    if not isinstance(features, Tensor) or not features.is_floating_point():
        raise TypeError(
            f"features must be a floating-point torch.Tensor of shape {expected}, got {type(features)!r}"
            + (f" with dtype {features.dtype}" if isinstance(features, Tensor) else "")
        )
    if features.ndim != 3:
        raise BrainAgeError(f"features must have shape {expected} (batch, views, dim), got {tuple(features.shape)}")
    if min(features.shape) < 1:
        raise BrainAgeError(f"features must have non-empty dimensions {expected}, got {tuple(features.shape)}")


def check_per_sample(values: Tensor, batch_size: int, name: str, features_shape: tuple[int, ...]) -> Tensor:
    """Check that ``values`` holds one entry per sample, i.e. has shape ``(B,)``.

    Args:
        values: per-sample labels, ages or bias attributes.
        batch_size: ``B``.
        name: argument name used in the error message.
        features_shape: shape of the features, printed in the error message.

    Returns:
        ``values`` unchanged.

    Raises:
        TypeError: if ``values`` is not a tensor.
        ValueError: if its shape is not ``(B,)``.
    """
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({batch_size},), got {type(values)!r}")
    if values.ndim != 1 or values.shape[0] != batch_size:
        raise BrainAgeError(
            f"{name} must have shape (B,) = ({batch_size},) to match features of shape "
            f"{tuple(features_shape)}, got {tuple(values.shape)}"
        )
    return values


_TRUSTED = contextvars.ContextVar("brainage_losses_trusted_inputs", default=False)


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Skip the checks of input *values* (unit norm, finite ages, custom kernel weights) inside.

    Those checks read device tensors on the host, a synchronisation that stalls a GPU once per
    call. A training loop whose features come out of ``normalize`` and whose ages were checked
    when read runs its steps inside this context; shapes and types are still checked.
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def values_trusted() -> bool:
    """Whether the caller is inside :func:`trusted_inputs`."""
    return _TRUSTED.get()


def check_unit_norm(features: Tensor) -> None:
    """Check that every embedding (last dimension) has unit L2 norm (skipped in :func:`trusted_inputs`).

    The tolerance is ``max(1e-3, 2 * eps)`` where ``eps`` is the machine epsilon of the input dtype,
    so float16 and bfloat16 embeddings normalised in their own precision pass.

    Raises:
        ValueError: if some norm is off by more than the tolerance, or is not finite.
    """
    if values_trusted():
        return
    tol = max(NORM_ATOL, 2.0 * torch.finfo(features.dtype).eps)
    with torch.no_grad():
        norms = torch.linalg.vector_norm(features.detach().to(torch.float32), dim=-1)
        deviation = (norms - 1.0).abs()
        bad = ~(deviation <= tol)
        if bool(bad.any()):
            worst = float(deviation[bad].max()) if bool(torch.isfinite(deviation[bad]).all()) else float("nan")
            raise BrainAgeError(
                f"features must be L2-normalised along the last dimension (unit norm, tolerance {tol:.1e}); "
                f"{int(bad.sum())} of {norms.numel()} embeddings are not (largest deviation {worst:.3g}). "
                "Apply torch.nn.functional.normalize(features, dim=-1) first."
            )


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """Float64 stays float64 (for ``gradcheck``); every other floating dtype is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so that matmuls and reductions run in the dtype we chose."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        ctx = contextlib.nullcontext()
    with ctx:
        yield


class _ContiguousGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def contiguous_grad(features: Tensor) -> Tensor:
    """Identity whose backward makes the incoming gradient contiguous.

    Stacking the views view-major transposes ``(B, V, D)``, so the gradient reaching the caller's
    tensor would otherwise be a non-contiguous view. The backward of
    ``torch.distributed.nn.functional.all_gather`` on gloo (an all-to-all in torch 2.13) reads such a
    gradient in the wrong order, which silently corrupts DDP training with gathered features.
    """
    return _ContiguousGrad.apply(features) if features.requires_grad else features


def stack_views(features: Tensor) -> Tensor:
    """Stack ``(B, V, D)`` view-major into ``(V*B, D)``: row ``r`` belongs to sample ``r mod B``."""
    batch, views, dim = features.shape
    return features.transpose(0, 1).reshape(views * batch, dim)


def class_equality(labels: Tensor | None, batch_size: int, views: int, device: torch.device) -> Tensor:
    """Boolean ``(N, N)`` matrix, ``N = V*B``: rows ``i`` and ``j`` share a class.

    ``labels=None`` makes every sample its own class (positives are the other views only).
    """
    if labels is None:
        labels = torch.arange(batch_size, device=device)
    row_labels = labels.to(device).repeat(views)
    return row_labels[:, None] == row_labels[None, :]


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Log-sum-exp of the entries of ``x`` where ``mask`` is true, along ``dim``.

    Masked-out entries are replaced by the most negative finite number, so they contribute exactly
    zero when at least one entry is kept and every value and gradient stays finite otherwise.

    Returns:
        ``(lse, nonempty)``: ``lse`` is only meaningful where ``nonempty`` is true; callers select
        it with ``torch.where``.
    """
    filled = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    return torch.logsumexp(filled, dim=dim), mask.any(dim=dim)


def check_positive(value: float, name: str) -> None:
    """Raise ValueError unless ``value`` is a finite real number > 0."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise BrainAgeError(f"{name} must be a finite number > 0, got {value!r}")


def check_class_labels(labels: Tensor, batch_size: int, name: str, features_shape: tuple[int, ...]) -> Tensor:
    """Check discrete per-sample labels: shape ``(B,)``, integer or bool dtype.

    Raises:
        TypeError: for floating-point labels (continuous targets such as ages must be binned first).
        ValueError: for a wrong shape.
    """
    check_per_sample(labels, batch_size, name, features_shape)
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(
            f"{name} must be integer class labels (got dtype {labels.dtype}); "
            "bin continuous values first, e.g. labels.round().long()"
        )
    return labels


def class_similarities(features: Tensor, labels: Tensor | None, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a classification batch and return its similarity matrix and masks.

    Args:
        features: ``(B, V, D)`` unit-norm embeddings.
        labels: ``(B,)`` integer labels or ``None`` (each sample its own class).
        temperature: ``tau``.

    Returns:
        ``(s, off, same)``: ``s = z z^T / tau`` ``(N, N)`` in float32 (float64 for float64 input);
        ``off`` true off the diagonal; ``same`` true where the rows share a label.
    """
    check_features(features)
    batch, views, _ = features.shape
    if labels is not None:
        check_class_labels(labels, batch, "labels", features.shape)
    check_unit_norm(features)
    with full_precision(features.device):
        z = stack_views(contiguous_grad(features).to(compute_dtype(features)))
        s = (z @ z.T) / temperature
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return s, off, class_equality(labels, batch, views, s.device)


class TemperatureScaledLoss(nn.Module):
    """Base of the classification contrastive losses: a temperature and an optional
    ``temperature / base_temperature`` factor (the reference implementations' 0.07)."""

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        if base_temperature is not None:
            check_positive(base_temperature, "base_temperature")
        self.temperature = temperature
        self.base_temperature = base_temperature

    @property
    def scale(self) -> float:
        """``temperature / base_temperature``, or 1 without a base temperature."""
        return 1.0 if self.base_temperature is None else self.temperature / self.base_temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, scale={self.scale:.4g}"
