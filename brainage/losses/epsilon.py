"""epsilon-SupInfoNCE: supervised InfoNCE with a margin epsilon between positives and negatives."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from brainage.errors import BrainAgeError

from ._common import TemperatureScaledLoss, class_similarities, full_precision, masked_logsumexp

__all__ = ["EpsilonSupInfoNCE"]


class EpsilonSupInfoNCE(TemperatureScaledLoss):
    """epsilon-SupInfoNCE.

    Barbano, Dufumier, Tartaglione, Grangetto, Gori, "Unbiased Supervised Contrastive Learning",
    ICLR 2023 (https://arxiv.org/abs/2211.05568), Eq. 2 of the seed paper (Barbano et al., Ital-IA
    2023). With ``N = V*B`` rows stacked view-major, ``s_ij = z_i.z_j / tau``, ``P(i)`` the other rows
    of the class of ``i`` and ``Ng(i)`` the rows of the other classes:

    ``L = (1/N) sum_i -(1/|P(i)|) sum_{p in P(i)} log( exp(s_ip) / (exp(s_ip - eps) + sum_{n in Ng(i)} exp(s_in)) )``.

    ``eps`` is a margin in logit units (cosine / tau). ``eps = 0`` is a supervised InfoNCE (unlike
    SupCon, the other positives are not in the denominator); as ``eps`` grows the loss tends to the
    InfoL1O bound (Poole et al., "On Variational Bounds of Mutual Information", ICML 2019),
    ``-log(exp(s_ip) / sum_n exp(s_in))``. An anchor with no positive contributes 0; an anchor
    with positives but no negative contributes exactly ``eps``. Reductions run in float32 for
    float16/bfloat16 inputs or under autocast.

    Args:
        epsilon: margin ``eps`` >= 0, finite.
        temperature: ``tau`` > 0.
        base_temperature: if given, multiply by ``temperature / base_temperature`` as the reference
            code does (0.07 there); ``None`` (default) applies no factor.

    Raises:
        ValueError: for a negative or non-finite ``epsilon`` or a non-positive temperature.
    """

    def __init__(self, epsilon: float = 0.25, temperature: float = 0.1, base_temperature: float | None = None) -> None:
        super().__init__(temperature, base_temperature)
        if isinstance(epsilon, bool) or not (
            isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0
        ):
            raise BrainAgeError(f"epsilon must be a finite number >= 0 (logit units), got {epsilon!r}")
        self.epsilon = float(epsilon)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, temperature={self.temperature}, scale={self.scale:.4g}"

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            features: ``(B, V, D)`` embeddings, L2-normalised along ``D``.
            labels: ``(B,)`` integer class labels; ``None`` makes each sample its own class.

        Returns:
            Scalar loss (float32, or float64 for float64 features).

        Raises:
            ValueError: for wrong shapes (printed) or features that are not unit norm.
            TypeError: for floating-point labels.
        """
        s, off, same = class_similarities(features, labels, self.temperature)
        with full_precision(features.device):
            positive = off & same
            negative = off & ~same
            lse_neg, has_neg = masked_logsumexp(s, negative, dim=1)
            shifted = s - self.epsilon
            denom = torch.where(has_neg[:, None], torch.logaddexp(shifted, lse_neg[:, None]), shifted)
            logprob = s - denom
            n_pos = positive.sum(dim=1)
            total = torch.where(positive, logprob, torch.zeros_like(logprob)).sum(dim=1)
            per_anchor = -total / n_pos.clamp_min(1).to(s.dtype)
            return per_anchor.mean() * self.scale
