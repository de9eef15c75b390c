"""Kernels on age (years) that weight the pairs of the kernelized contrastive losses."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from brainage.errors import BrainAgeError

from ._common import check_choice, values_trusted
from .names import KERNELS

__all__ = ["KERNELS", "AgeKernel", "age_kernel"]

AgeKernel = Callable[[Tensor], Tensor]
"""A user kernel: ages ``(B,)`` in years -> non-negative weights ``(B, B)``."""


def age_kernel(ages: Tensor, kind: str = "rbf", sigma: float = 2.0, gamma: float | None = None) -> Tensor:
    """Pairwise kernel weights ``w_ij = K(y_i - y_j)`` between ages.

    The kernels of Barbano, Dufumier, Duchesnay, Grangetto, Gori, "Contrastive learning for
    regression in multi-site brain age prediction", ISBI 2023 (https://arxiv.org/abs/2211.08326),
    with ``d = y_i - y_j`` in years:

    - ``"rbf"``: ``K(d) = exp(-d^2 / (2 sigma^2))``; ``K(0) = 1`` (the published best uses sigma = 2).
    - ``"gaussian"``: the normal density, ``rbf / (sqrt(2 pi) sigma)``; its maximum is below 1
      when ``sigma > 1 / sqrt(2 pi)``, which changes the ``(1 - w)`` factor of L^exp.
    - ``"cauchy"``: ``K(d) = 1 / (1 + gamma d^2)``. ``gamma`` defaults to ``sigma`` (in 1/years^2),
      as in the public reference code, where one ``--sigma`` option sets both.

    Args:
        ages: ``(B,)`` ages in years (any real dtype; computed in float32, or float64 if given).
        kind: one of ``"rbf"``, ``"gaussian"``, ``"cauchy"``.
        sigma: kernel bandwidth in years for ``rbf`` and ``gaussian`` (must be > 0).
        gamma: Cauchy scale in 1/years^2 (must be > 0); ``None`` uses ``sigma``. Only for ``cauchy``.

    Returns:
        ``(B, B)`` symmetric weights, float32 (float64 for float64 ages).

    Raises:
        ValueError: for an unknown ``kind`` (the valid ones are listed), a non-1-D or non-finite
            ``ages``, a non-positive ``sigma``/``gamma``, or ``gamma`` given with another kind.
    """
    check_choice(kind, KERNELS, "kernel")
    if not isinstance(ages, Tensor):
        ages = torch.as_tensor(ages)
    if ages.ndim != 1:
        raise BrainAgeError(f"ages must have shape (B,), got {tuple(ages.shape)}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise BrainAgeError(f"sigma must be a finite number > 0 (years), got {sigma!r}")
    if gamma is not None:
        if kind != "cauchy":
            raise BrainAgeError(f"gamma only applies to kind='cauchy', got kind={kind!r}")
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise BrainAgeError(f"gamma must be a finite number > 0 (1/years^2), got {gamma!r}")
    dtype = torch.float64 if ages.dtype == torch.float64 else torch.float32
    y = ages.to(dtype)
    if not values_trusted() and not bool(torch.isfinite(y).all()):
        raise BrainAgeError("ages must be finite")
    diff2 = (y[:, None] - y[None, :]) ** 2
    if kind == "rbf":
        return torch.exp(-diff2 / (2.0 * sigma**2))
    if kind == "gaussian":
        return torch.exp(-diff2 / (2.0 * sigma**2)) / (math.sqrt(2.0 * math.pi) * sigma)
    scale = sigma if gamma is None else gamma
    return 1.0 / (1.0 + scale * diff2)
