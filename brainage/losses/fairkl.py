"""FairKL: match the similarity distributions of bias-aligned and bias-conflicting samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from brainage.errors import BrainAgeError

from ._common import (
    check_choice,
    check_class_labels,
    check_features,
    check_positive,
    check_unit_norm,
    class_equality,
    class_similarities,
    full_precision,
)
from .names import FAIRKL_FORMULATIONS

__all__ = ["FAIRKL_FORMULATIONS", "FairKL"]


class FairKL(nn.Module):
    """FairKL debiasing regulariser.

    Barbano, Dufumier, Tartaglione, Grangetto, Gori, "Unbiased Supervised Contrastive Learning",
    ICLR 2023 (https://arxiv.org/abs/2211.05568); Eqs. 4-7 of the seed paper (Barbano et al.,
    Ital-IA 2023). The total objective of Eq. 7 is ``alpha * EpsilonSupInfoNCE + lambda * FairKL``;
    this module returns the regulariser only.

    ``formulation="paper"`` (Eq. 6): with ``N = V*B`` rows stacked view-major and
    ``s_ij = z_i.z_j / tau``, for each anchor ``i`` the rows ``j != i`` split into aligned positives
    (same class, same bias), conflicting positives (same class, other bias), aligned negatives and
    conflicting negatives. With mean ``mu`` and population variance ``sigma^2`` of ``s_ij`` in each group
    (``sigma^2`` plus ``variance_eps``),

    ``R_i = KL(N(mu_{+,b}, sigma^2_{+,b}) || N(mu_{+,b'}, sigma^2_{+,b'})) + KL(N(mu_{-,b}, sigma^2_{-,b}) || N(mu_{-,b'}, sigma^2_{-,b'}))``,
    ``KL = 1/2 [ (sigma^2_b + (mu_b - mu_b')^2) / sigma^2_b' - log(sigma^2_b / sigma^2_b') - 1 ]``,

    and ``R = (1/N) sum_i R_i``. A KL term whose aligned or conflicting group is empty for an anchor
    (e.g. no bias-conflicting positive in the batch) is 0.

    ``formulation="reference"`` reproduces the public reference code
    (github.com/EIDOSLAB/unbiased-contrastive-learning, ``fairkl``), which produced the published
    Biased-MNIST numbers: on the first view only (``features[:, 0]``), with ``s_ij = z_i.z_j``
    (``temperature`` 1 by default) over the whole ``B x B`` matrix, diagonal included, it matches moments:

    ``(mu_pc - mu_pa)^2 + (mu_na - mu_nc)^2 + kld [ (std_pa - std_pc)^2 + (std_na - std_nc)^2 ] - mu_pc + mu_na``

    where ``mu_g`` is the mean of ``s`` over group ``g`` (0 when empty) and ``std_g`` the unbiased std of
    the masked matrix ``s * mask_g`` over all its ``B^2`` entries, zeros included. For ``B = 1``, where
    the reference code's std is NaN, the std is taken as 0; the square root has zero gradient at 0.

    Args:
        formulation: ``"paper"`` or ``"reference"``.
        temperature: ``tau`` > 0; ``None`` means 0.1 for ``"paper"`` and 1.0 for ``"reference"``.
        kld: weight of the std term; reference only (``None`` means 1.0, the reference default).
        variance_eps: added to every variance of the paper form (numerical floor, > 0); a group with
            a single element has variance ``variance_eps``.

    Raises:
        ValueError: for an unknown formulation, non-positive temperature/variance_eps, a negative
            ``kld``, or ``kld`` given with ``formulation="paper"``.
    """

    def __init__(
        self,
        formulation: str = "paper",
        temperature: float | None = None,
        kld: float | None = None,
        variance_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        check_choice(formulation, FAIRKL_FORMULATIONS, "formulation")
        if temperature is None:
            temperature = 0.1 if formulation == "paper" else 1.0
        check_positive(temperature, "temperature")
        check_positive(variance_eps, "variance_eps")
        if kld is not None:
            if formulation == "paper":
                raise BrainAgeError("kld only applies to formulation='reference'; the paper form has no std weight")
            if isinstance(kld, bool) or not (isinstance(kld, (int, float)) and math.isfinite(kld) and kld >= 0):
                raise BrainAgeError(f"kld must be a finite number >= 0, got {kld!r}")
        self.formulation = formulation
        self.temperature = temperature
        self.kld = 1.0 if kld is None else float(kld)
        self.variance_eps = variance_eps

    def extra_repr(self) -> str:
        extra = f", kld={self.kld}" if self.formulation == "reference" else f", variance_eps={self.variance_eps}"
        return f"formulation={self.formulation!r}, temperature={self.temperature}{extra}"

    def forward(self, features: Tensor, labels: Tensor, bias: Tensor) -> Tensor:
        """Compute the regulariser.

        Args:
            features: ``(B, V, D)`` embeddings, L2-normalised along ``D``.
            labels: ``(B,)`` integer class labels.
            bias: ``(B,)`` integer bias attribute (known or predicted by a bias-capturing model).

        Returns:
            Scalar (float32, or float64 for float64 features).

        Raises:
            ValueError: for wrong shapes (printed) or features that are not unit norm.
            TypeError: for floating-point labels or bias.
        """
        check_features(features)
        batch = features.shape[0]
        if labels is None:
            raise BrainAgeError(f"FairKL needs class labels of shape ({batch},), got None")
        check_class_labels(labels, batch, "labels", features.shape)
        check_class_labels(bias, batch, "bias", features.shape)
        if self.formulation == "reference":
            check_unit_norm(features)  # every view, also those the reference formulation ignores
        used = features[:, :1] if self.formulation == "reference" else features
        # class_similarities checks that ``used`` is unit norm (all views for the paper form)
        s, off, same = class_similarities(used, labels, self.temperature)
        aligned = class_equality(bias, batch, used.shape[1], s.device)
        with full_precision(features.device):
            if self.formulation == "paper":
                return self._paper(s, off, same, aligned)
            return self._reference(s, same, aligned)

    def _paper(self, s: Tensor, off: Tensor, same: Tensor, aligned: Tensor) -> Tensor:
        pos_al, pos_conf = _row_moments(s, off & same & aligned), _row_moments(s, off & same & ~aligned)
        neg_al, neg_conf = _row_moments(s, off & ~same & aligned), _row_moments(s, off & ~same & ~aligned)
        per_anchor = _gaussian_kl(pos_al, pos_conf, self.variance_eps) + _gaussian_kl(
            neg_al, neg_conf, self.variance_eps
        )
        return per_anchor.mean()

    def _reference(self, s: Tensor, same: Tensor, aligned: Tensor) -> Tensor:
        groups = {
            "pa": same & aligned,
            "pc": same & ~aligned,
            "na": ~same & aligned,
            "nc": ~same & ~aligned,
        }
        mu = {k: (s * m).sum() / m.sum().clamp_min(1).to(s.dtype) for k, m in groups.items()}
        loss = (mu["pc"] - mu["pa"]) ** 2 + (mu["na"] - mu["nc"]) ** 2
        if self.kld != 0:
            std = {k: _safe_unbiased_std(s * m) for k, m in groups.items()}
            loss = loss + self.kld * ((std["pa"] - std["pc"]) ** 2 + (std["na"] - std["nc"]) ** 2)
        return loss - mu["pc"] + mu["na"]


def _row_moments(s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row count, mean and population variance of ``s`` over ``mask``."""
    count = mask.sum(dim=1)
    denom = count.clamp_min(1).to(s.dtype)
    zeros = torch.zeros_like(s)
    mean = torch.where(mask, s, zeros).sum(dim=1) / denom
    var = torch.where(mask, (s - mean[:, None]) ** 2, zeros).sum(dim=1) / denom
    return count, mean, var


def _gaussian_kl(
    aligned: tuple[Tensor, Tensor, Tensor], conflicting: tuple[Tensor, Tensor, Tensor], eps: float
) -> Tensor:
    """Per-row ``KL(N_aligned || N_conflicting)``; 0 where either group is empty."""
    n_a, mu_a, var_a = aligned
    n_c, mu_c, var_c = conflicting
    var_a = var_a + eps
    var_c = var_c + eps
    kl = 0.5 * ((var_a + (mu_a - mu_c) ** 2) / var_c - torch.log(var_a / var_c) - 1.0)
    return torch.where((n_a > 0) & (n_c > 0), kl, torch.zeros_like(kl))


def _safe_unbiased_std(x: Tensor) -> Tensor:
    """``torch.std`` (correction 1) over all entries; 0 for a single entry; zero gradient at std = 0."""
    n = x.numel()
    if n < 2:
        return (x * 0.0).sum()
    var = ((x - x.mean()) ** 2).sum() / (n - 1)
    positive = var > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, var, torch.ones_like(var))), torch.zeros_like(var))
