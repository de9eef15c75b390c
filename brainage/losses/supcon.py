"""Supervised contrastive loss (SupCon), the classification baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import TemperatureScaledLoss, class_similarities, full_precision, masked_logsumexp

__all__ = ["SupConLoss"]


class SupConLoss(TemperatureScaledLoss):
    """Supervised contrastive loss, the "L_out" form.

    Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, "Supervised Contrastive
    Learning", NeurIPS 2020 (https://arxiv.org/abs/2004.11362), Eq. 2; the baseline of the seed paper
    (Barbano et al., Ital-IA 2023). With ``N = V*B`` rows stacked view-major, ``s_ij = z_i.z_j / tau``,
    ``A(i)`` all rows but ``i`` and ``P(i)`` the rows of ``A(i)`` with the label of ``i``:

    ``L = (1/N) sum_i -(1/|P(i)|) sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )``.

    An anchor with no positive contributes 0 and still counts in the mean over the ``N`` anchors.
    Reductions run in float32 for float16/bfloat16 inputs or under autocast (float64 stays float64).

    Args:
        temperature: ``tau`` > 0.
        base_temperature: if given, the loss is multiplied by ``temperature / base_temperature``, as
            the reference implementations do (0.07 there); ``None`` (default) applies no factor.

    Raises:
        ValueError: for a non-positive temperature.
    """

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            features: ``(B, V, D)`` embeddings, L2-normalised along ``D``.
            labels: ``(B,)`` integer class labels; ``None`` makes each sample its own class, so the
                positives are the other views only (the SimCLR / NT-Xent loss).

        Returns:
            Scalar loss (float32, or float64 for float64 features).

        Raises:
            ValueError: for wrong shapes (printed) or features that are not unit norm.
            TypeError: for floating-point labels.
        """
        s, off, same = class_similarities(features, labels, self.temperature)
        with full_precision(features.device):
            positive = off & same
            lse, nonempty = masked_logsumexp(s, off, dim=1)
            logprob = s - lse[:, None]
            n_pos = positive.sum(dim=1)
            total = torch.where(positive, logprob, torch.zeros_like(logprob)).sum(dim=1)
            per_anchor = -total / n_pos.clamp_min(1).to(s.dtype)
            return per_anchor.mean() * self.scale
