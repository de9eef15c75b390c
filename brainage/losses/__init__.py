"""Contrastive and debiasing losses of the EIDOS-lab papers, in PyTorch.

- :class:`KernelizedContrastiveLoss`: y-aware, L^thr and L^exp for age regression (ISBI 2023).
- :class:`SupConLoss`: supervised contrastive baseline (NeurIPS 2020).
- :class:`EpsilonSupInfoNCE` and :class:`FairKL`: unbiased supervised contrastive learning (ICLR 2023).
- :class:`EnDRegularizer`: entangling/disentangling regulariser (CVPR 2021).
- :func:`age_kernel`: the kernels on age used by the kernelized losses.
- :func:`trusted_inputs`: skips the value checks that synchronise a GPU (training loops).

Contrastive losses take ``features`` of shape ``(B, V, D)`` (B samples, V views, L2-normalised along
D) and stack the views view-major. See ``docs/losses.md`` for the equations, the ``paper`` and
``reference`` formulations and the DistributedDataParallel recipe. The names the losses accept
(kernels, methods, formulations) are in :mod:`brainage.losses.names`, which needs no torch; the
classes are resolved on first use, so importing that module stays cheap.
"""

from __future__ import annotations

from brainage._lazy import lazy_exports

_EXPORTS = {
    "trusted_inputs": "_common",
    "EnDRegularizer": "end",
    "EpsilonSupInfoNCE": "epsilon",
    "FairKL": "fairkl",
    "KernelizedContrastiveLoss": "kernelized",
    "age_kernel": "kernels",
    "SupConLoss": "supcon",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
