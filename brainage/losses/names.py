"""The names the losses accept, in a module without torch.

Their one home: the losses check their arguments against them, and the training options, the
command line's help and the workflow read them from here without importing torch.
"""

from __future__ import annotations

__all__ = ["FAIRKL_FORMULATIONS", "FORMULATIONS", "KERNELIZED_METHODS", "KERNELS"]

KERNELS: tuple[str, ...] = ("rbf", "gaussian", "cauchy")
"""Names accepted by :func:`~brainage.losses.age_kernel` and by ``KernelizedContrastiveLoss(kernel=...)``."""

KERNELIZED_METHODS: tuple[str, ...] = ("yaware", "thr", "exp")
"""The losses of :class:`~brainage.losses.KernelizedContrastiveLoss` (``method=``)."""

FORMULATIONS: tuple[str, ...] = ("paper", "reference")
"""``KernelizedContrastiveLoss(formulation=...)``: the equations as printed, or the public code's."""

FAIRKL_FORMULATIONS: tuple[str, ...] = ("paper", "reference")
"""``FairKL(formulation=...)``."""
