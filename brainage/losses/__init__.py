"""Contrastive and debiasing losses of the EIDOS-lab papers, in PyTorch.

- :class:`KernelizedContrastiveLoss`: y-aware, L^thr and L^exp for age regression (ISBI 2023).
- :class:`SupConLoss`: supervised contrastive baseline (NeurIPS 2020).
- :class:`EpsilonSupInfoNCE` and :class:`FairKL`: unbiased supervised contrastive learning (ICLR 2023).
- :class:`EnDRegularizer`: entangling/disentangling regulariser (CVPR 2021).
- :func:`age_kernel`: the kernels on age used by the kernelized losses.
- :func:`trusted_inputs`: skips the value checks that synchronise a GPU (training loops).

Contrastive losses take ``features`` of shape ``(B, V, D)`` (B samples, V views, L2-normalised along
D) and stack the views view-major. See ``docs/losses.md`` for the equations, the ``paper`` and
``reference`` formulations and the DistributedDataParallel recipe.
"""

from ._common import trusted_inputs
from .end import EnDRegularizer
from .epsilon import EpsilonSupInfoNCE
from .fairkl import FairKL
from .kernelized import KernelizedContrastiveLoss
from .kernels import age_kernel
from .supcon import SupConLoss

__all__ = [
    "EnDRegularizer",
    "EpsilonSupInfoNCE",
    "FairKL",
    "KernelizedContrastiveLoss",
    "SupConLoss",
    "age_kernel",
    "trusted_inputs",
]
