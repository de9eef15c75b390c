"""Kernel-weighted contrastive losses for regression: y-aware, L^thr and L^exp."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from brainage.errors import BrainAgeError

from ._common import (
    check_choice,
    check_features,
    check_per_sample,
    check_positive,
    check_unit_norm,
    compute_dtype,
    contiguous_grad,
    full_precision,
    masked_logsumexp,
    stack_views,
    values_trusted,
)
from .kernels import AgeKernel, age_kernel
from .names import FORMULATIONS, KERNELS
from .names import KERNELIZED_METHODS as METHODS

__all__ = ["FORMULATIONS", "METHODS", "REFERENCE_BASE_TEMPERATURE", "THRESHOLD_REDUCTIONS", "KernelizedContrastiveLoss"]

THRESHOLD_REDUCTIONS: tuple[str, ...] = ("sum", "mean")
REFERENCE_BASE_TEMPERATURE = 0.07
"""``tau_base`` of the public reference code: its losses are multiplied by ``tau / 0.07``."""


class KernelizedContrastiveLoss(nn.Module):
    """Contrastive losses for regression where pairs are weighted by a kernel on age.

    Implements the three losses compared in Barbano, Dufumier, Duchesnay, Grangetto, Gori,
    "Contrastive learning for regression in multi-site brain age prediction", ISBI 2023
    (https://arxiv.org/abs/2211.08326), as numbered in the seed paper (Barbano, Duchesnay,
    Dufumier, Gori, Grangetto, "Fairness, Debiasing and Privacy in Computer Vision and Medical
    Imaging", Ital-IA 2023):

    - ``method="yaware"``: Eq. 9, the y-aware InfoNCE of Dufumier et al., "Contrastive Learning with
      Continuous Proxy Meta-data for 3D MRI Classification", MICCAI 2021.
    - ``method="thr"``: Eq. 10, L^thr: for anchor ``i`` and positive ``k`` only the rows less similar
      in age than ``k`` (``w_it < w_ik``, strictly) repel. The denominator keeps ``exp(s_ik)`` and the
      weights are normalised over all of ``A(i)`` (the well-defined reading; the printed form is
      undefined for the least similar ``k``). Computed in O(N^2) memory and O(N^2 log N) time by
      sorting each row by kernel weight and taking prefix log-sum-exps; ties are excluded from the
      threshold set, as the strict inequality requires.
    - ``method="exp"``: Eq. 11, L^exp: repulsion ``exp(s_it (1 - w_it))`` summed over ``A(i) \\ {k}``,
      computed with prefix/suffix log-sum-exps (exact leave-one-out, no cancellation).

    With ``N = V*B`` rows stacked view-major (row ``r`` is sample ``r mod B``), ``s_ij = z_i.z_j / tau``,
    ``A(i)`` all rows but ``i`` and ``w_ij`` the kernel between the rows' ages, every loss is
    ``(1/N) sum_i L_i`` with ``L_i = -sum_{k in A(i)} (w_ik / sum_{t in A(i)} w_it) log p_ik``.

    ``formulation="reference"`` instead reproduces the public reference code
    (github.com/EIDOSLAB/contrastive-brain-age-prediction, ``KernelizedSupCon``), which produced
    the published OpenBHB numbers: ``m_i = max_j s_ij`` (the diagonal included, no gradient), every
    loss times ``tau / base_temperature`` (``base_temperature`` 0.07 by default), and

    - yaware: the same value as the paper's (the shift cancels);
    - exp: one denominator per anchor, ``log sum_{j in A(i)} exp((s_ij - m_i)(1 - w_ij))``, and
      ``log p_ik = (s_ik - m_i) - log D_i``;
    - thr: ``D_i = sum_{j in A(i)} exp(s_ij - m_i) c_ij`` with ``c_ij = #{k in 1..N : w_ij > w_jk}``
      (the kernel between ``j`` and ``k``); ``threshold_reduction="mean"`` divides ``c_ij`` by ``N``,
      which only subtracts ``log N`` from every ``L_i``. Computed in O(N^2 log N) by sorting.

    Degenerate anchors contribute 0 to the mean instead of NaN/inf: an anchor with
    ``sum_{t in A(i)} w_it = 0`` (e.g. a single row), an L^exp anchor whose ``A(i) \\ {k}`` is empty
    (``N = 2``), and a reference-threshold anchor with ``D_i = 0`` (e.g. all ages equal, where the
    reference code returns inf).

    Under autocast or for float16/bfloat16 features everything is computed and returned in float32;
    float64 stays float64. For DistributedDataParallel, gather the features (with autograd) and the
    ages from all ranks and call the loss on the global batch; see ``docs/losses.md``.

    Args:
        method: ``"yaware"``, ``"thr"`` or ``"exp"``.
        kernel: ``"rbf"``, ``"gaussian"``, ``"cauchy"`` (see :func:`age_kernel`) or a callable mapping
            ages ``(B,)`` in years to non-negative finite weights ``(B, B)``.
        sigma: kernel bandwidth in years (named kernels only; for ``cauchy`` it is also the default
            ``gamma``, as in the reference code).
        temperature: ``tau`` > 0.
        formulation: ``"paper"`` or ``"reference"``.
        gamma: Cauchy scale in 1/years^2; ``None`` uses ``sigma``.
        base_temperature: multiply the loss by ``temperature / base_temperature``. ``None`` means
            0.07 for ``formulation="reference"`` and no rescaling for ``"paper"``.
        threshold_reduction: ``"sum"`` or ``"mean"`` reduction of the reference-threshold count
            ``c_ij``; only with ``method="thr"`` and ``formulation="reference"``.

    Raises:
        ValueError: for unknown names (the valid ones are listed), non-positive temperatures or
            bandwidths, ``threshold_reduction="mean"`` outside reference L^thr, or a custom kernel
            combined with ``gamma``.

    Example:
        >>> loss = KernelizedContrastiveLoss(method="exp", kernel="rbf", sigma=2.0, temperature=0.1)
        >>> z = torch.nn.functional.normalize(torch.randn(8, 2, 128), dim=-1)
        >>> value = loss(z, torch.linspace(20.0, 80.0, 8))
    """

    def __init__(
        self,
        method: str = "exp",
        kernel: str | AgeKernel = "rbf",
        sigma: float = 2.0,
        temperature: float = 0.1,
        formulation: str = "paper",
        *,
        gamma: float | None = None,
        base_temperature: float | None = None,
        threshold_reduction: str = "sum",
    ) -> None:
        super().__init__()
        check_choice(method, METHODS, "method")
        check_choice(formulation, FORMULATIONS, "formulation")
        check_choice(threshold_reduction, THRESHOLD_REDUCTIONS, "threshold_reduction")
        if threshold_reduction != "sum" and not (method == "thr" and formulation == "reference"):
            raise BrainAgeError("threshold_reduction='mean' only applies to method='thr' with formulation='reference'")
        if callable(kernel):
            if gamma is not None:
                raise BrainAgeError("gamma only applies to the named 'cauchy' kernel, not to a custom kernel callable")
        else:
            check_choice(kernel, KERNELS, "kernel")
            age_kernel(torch.zeros(1), kernel, sigma, gamma)
        check_positive(temperature, "temperature")
        if base_temperature is not None:
            check_positive(base_temperature, "base_temperature")
        self.method = method
        self.kernel = kernel
        self.sigma = sigma
        self.temperature = temperature
        self.formulation = formulation
        self.gamma = gamma
        self.base_temperature = base_temperature
        self.threshold_reduction = threshold_reduction

    @property
    def scale(self) -> float:
        """The factor ``tau / base_temperature`` applied to the loss (1 when there is none)."""
        base = self.base_temperature
        if base is None and self.formulation == "reference":
            base = REFERENCE_BASE_TEMPERATURE
        return 1.0 if base is None else self.temperature / base

    def extra_repr(self) -> str:
        kernel = self.kernel if isinstance(self.kernel, str) else getattr(self.kernel, "__name__", "callable")
        return (
            f"method={self.method!r}, kernel={kernel!r}, sigma={self.sigma}, temperature={self.temperature}, "
            f"formulation={self.formulation!r}, scale={self.scale:.4g}"
        )

    def kernel_weights(self, ages: Tensor) -> Tensor:
        """Kernel weights ``(B, B)`` between the ages ``(B,)`` (years), checked for a custom kernel.

        Raises:
            ValueError: if a custom kernel returns a wrong shape, negative or non-finite weights.
        """
        if isinstance(self.kernel, str):
            return age_kernel(ages, self.kernel, self.sigma, self.gamma)
        weights = self.kernel(ages)
        batch = ages.shape[0]
        if not isinstance(weights, Tensor) or tuple(weights.shape) != (batch, batch):
            shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights)
            raise BrainAgeError(f"custom kernel must map ages ({batch},) to weights ({batch}, {batch}), got {shape}")
        if not values_trusted() and (not bool(torch.isfinite(weights).all()) or bool((weights < 0).any())):
            raise BrainAgeError("custom kernel weights must be finite and non-negative")
        return weights

    def forward(self, features: Tensor, ages: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            features: ``(B, V, D)`` embeddings, L2-normalised along ``D``; views are stacked view-major.
            ages: ``(B,)`` ages in years.

        Returns:
            Scalar loss (float32, or float64 for float64 features).

        Raises:
            ValueError: for a wrong shape (the shapes are printed), features that are not unit norm,
                or non-finite ages.
        """
        check_features(features)
        batch, views, _ = features.shape
        check_per_sample(ages, batch, "ages", features.shape)
        check_unit_norm(features)
        dtype = compute_dtype(features)
        with full_precision(features.device):
            z = stack_views(contiguous_grad(features).to(dtype))
            ages_c = ages.to(device=features.device, dtype=dtype)
            if not values_trusted() and not bool(torch.isfinite(ages_c).all()):
                raise BrainAgeError("ages must be finite (years)")
            w = self.kernel_weights(ages_c).to(dtype).repeat(views, views)
            s = (z @ z.T) / self.temperature
            off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
            if self.formulation == "paper":
                logprob, valid = _PAPER[self.method](s, w, off)
            else:
                logprob, valid = _reference_terms(self.method, s, w, off, self.threshold_reduction)
            return _kernel_weighted_mean(w, off, logprob, valid) * self.scale


def _kernel_weighted_mean(w: Tensor, off: Tensor, logprob: Tensor, valid: Tensor) -> Tensor:
    """``(1/N) sum_i -sum_{k in A(i)} (w_ik / sum_t w_it) logprob_ik``; invalid entries and weightless anchors give 0."""
    w_pos = w.masked_fill(~off, 0.0)
    total = w_pos.sum(dim=1, keepdim=True)
    has_weight = total > 0
    coef = w_pos / torch.where(has_weight, total, torch.ones_like(total))
    terms = torch.where(valid & off, logprob, torch.zeros_like(logprob))
    per_anchor = -(coef * terms).sum(dim=1, keepdim=True)
    per_anchor = torch.where(has_weight, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.mean()


def _paper_yaware(s: Tensor, w: Tensor, off: Tensor) -> tuple[Tensor, Tensor]:
    lse, nonempty = masked_logsumexp(s, off, dim=1)
    return s - lse[:, None], off & nonempty[:, None]


def _paper_thr(s: Tensor, w: Tensor, off: Tensor) -> tuple[Tensor, Tensor]:
    # The anchor itself gets weight +inf so it sorts last and never falls below any threshold w_ik.
    key = w.detach().masked_fill(~off, math.inf).contiguous()
    key_sorted, order = torch.sort(key, dim=1)
    running = torch.logcumsumexp(s.gather(1, order), dim=1)
    below = torch.searchsorted(key_sorted, key, right=False)  # #{t : w_it < w_ik}, ties excluded
    prefix = running.gather(1, (below - 1).clamp_min(0))
    denom = torch.where(below > 0, torch.logaddexp(s, prefix), s)
    return s - denom, off


def _paper_exp(s: Tensor, w: Tensor, off: Tensor) -> tuple[Tensor, Tensor]:
    n = s.shape[0]
    fill = torch.finfo(s.dtype).min
    e = (s * (1.0 - w)).masked_fill(~off, fill)
    pad = torch.full((n, 1), fill, dtype=s.dtype, device=s.device)
    before = torch.cat([pad, torch.logcumsumexp(e, dim=1)[:, :-1]], dim=1)
    after = torch.cat([torch.logcumsumexp(e.flip(1), dim=1).flip(1)[:, 1:], pad], dim=1)
    leave_one_out = torch.logaddexp(before, after)
    return s - leave_one_out, off & (n >= 3)


_PAPER = {"yaware": _paper_yaware, "thr": _paper_thr, "exp": _paper_exp}


def threshold_counts(w: Tensor) -> Tensor:
    """``c_ij = #{k : w_jk < w_ij}`` over all ``N`` columns ``k`` (the reference code's count), in O(N^2 log N).

    Args:
        w: ``(N, N)`` kernel weights between rows, diagonal included.

    Returns:
        ``(N, N)`` int64 counts.
    """
    w = w.detach()
    rows_sorted = torch.sort(w, dim=1).values
    return torch.searchsorted(rows_sorted, w.T.contiguous(), right=False).T


def _reference_terms(method: str, s: Tensor, w: Tensor, off: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    shift = s.max(dim=1, keepdim=True).values.detach()
    logits = s - shift
    if method == "yaware":
        log_denom, nonempty = masked_logsumexp(logits, off, dim=1)
    elif method == "exp":
        log_denom, nonempty = masked_logsumexp(logits * (1.0 - w), off, dim=1)
    else:
        counts = threshold_counts(w)
        positive = counts > 0
        log_counts = torch.log(counts.clamp_min(1).to(s.dtype))
        if reduction == "mean":
            log_counts = log_counts - math.log(s.shape[0])
        log_denom, nonempty = masked_logsumexp(logits + log_counts, off & positive, dim=1)
    return logits - log_denom[:, None], off & nonempty[:, None]
