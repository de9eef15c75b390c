"""EnD: entangle samples of one class across bias groups, disentangle samples of one bias group."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainage.errors import BrainAgeError

from ._common import check_class_labels, compute_dtype, contiguous_grad, full_precision

__all__ = ["EnDRegularizer"]


class EnDRegularizer(nn.Module):
    """EnD regulariser ``alpha * R_perp + beta * R_par``.

    Tartaglione, Barbano, Grangetto, "EnD: Entangling and Disentangling Deep Representations for Bias
    Correction", CVPR 2021; its privacy reading is in Barbano,
    Tartaglione, Grangetto, "Bridging the Gap between Debiasing and Privacy for Deep Learning", ICCV
    Workshops 2021. The full objective is ``CE + alpha R_perp + beta R_par``; this module returns the
    regulariser only.

    On the L2-normalised features ``z`` (normalised here), with Gram matrix ``G = z z^T`` and pairs
    ``i > j`` only:

    - disentangle: ``R_perp = sum_b | sum_{i>j, b_i=b_j=b} G_ij | / M`` with ``M`` the number of
      same-bias pairs over all ``b`` (0 when ``M = 0``); pushes samples sharing a bias value to be
      orthogonal, whatever their class.
    - entangle: ``R_par = 1 - mean_{i>j, y_i=y_j, b_i!=b_j} (1 + G_ij) / 2`` (0 when there is no such pair).
      The public reference code visits only the pairs whose row has the smaller bias index (about half
      of them); this module uses every pair, as the method is defined.

    Computed with O(N^2) masks; float16/bfloat16 inputs and autocast are reduced in float32.

    Args:
        alpha: weight of ``R_perp`` (finite).
        beta: weight of ``R_par`` (finite).

    Raises:
        ValueError: for non-finite weights.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise BrainAgeError(f"{name} must be a finite number, got {value!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"

    def terms(self, features: Tensor, labels: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(R_perp, R_par)`` unweighted.

        Args:
            features: ``(N, D)`` pooled features (``(N, ...)`` is flattened to ``(N, D)``); not
                necessarily normalised.
            labels: ``(N,)`` integer class labels.
            bias: ``(N,)`` integer bias attribute.

        Raises:
            TypeError: for non-floating features or floating-point labels/bias.
            ValueError: for wrong shapes (printed).
        """
        if not isinstance(features, Tensor) or not features.is_floating_point():
            raise TypeError(f"features must be a floating-point torch.Tensor of shape (N, D), got {type(features)!r}")
        if features.ndim < 2 or features.shape[0] < 1:
            raise BrainAgeError(f"features must have shape (N, D), got {tuple(features.shape)}")
        n = features.shape[0]
        check_class_labels(labels, n, "labels", features.shape)
        check_class_labels(bias, n, "bias", features.shape)
        with full_precision(features.device):
            flat = contiguous_grad(features).reshape(n, -1).to(compute_dtype(features))
            z = F.normalize(flat, p=2, dim=1, eps=1e-12)
            gram = z @ z.T
            lower = torch.ones(n, n, dtype=torch.bool, device=gram.device).tril(diagonal=-1)
            bias = bias.to(gram.device)
            labels = labels.to(gram.device)
            same_bias = bias[:, None] == bias[None, :]
            same_class = labels[:, None] == labels[None, :]
            zeros = torch.zeros_like(gram)

            perp_pairs = lower & same_bias
            row_sums = torch.where(perp_pairs, gram, zeros).sum(dim=1)
            _, group = torch.unique(bias, return_inverse=True)
            per_bias = torch.zeros(int(group.max()) + 1, dtype=gram.dtype, device=gram.device)
            per_bias = per_bias.index_add(0, group, row_sums)
            n_perp = perp_pairs.sum()
            r_perp = torch.where(
                n_perp > 0, per_bias.abs().sum() / n_perp.clamp_min(1).to(gram.dtype), per_bias.sum() * 0.0
            )

            par_pairs = lower & same_class & ~same_bias
            n_par = par_pairs.sum()
            par_mean = torch.where(par_pairs, (1.0 + gram) / 2.0, zeros).sum() / n_par.clamp_min(1).to(gram.dtype)
            r_par = torch.where(n_par > 0, 1.0 - par_mean, par_mean * 0.0)
            return r_perp, r_par

    def forward(self, features: Tensor, labels: Tensor, bias: Tensor) -> Tensor:
        """Compute ``alpha * R_perp + beta * R_par``; arguments as in :meth:`terms`.

        Returns:
            Scalar (float32, or float64 for float64 features).
        """
        r_perp, r_par = self.terms(features, labels, bias)
        return self.alpha * r_perp + self.beta * r_par
