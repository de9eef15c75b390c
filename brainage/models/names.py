"""The names the brain-age network accepts, in a module without torch or MONAI.

Their one home: :class:`~brainage.models.BrainAgeNet` checks its arguments against them, and
the training options and the command line's help read them from here without importing torch.
"""

from __future__ import annotations

__all__ = ["FEATURE_KINDS", "HEADS"]

HEADS: tuple[str, ...] = ("projection", "regression")
"""The heads of the network: contrastive (normalised projection) or age regression."""

FEATURE_KINDS: tuple[str, ...] = ("projection", "embedding")
"""What ``BrainAgeNet.features`` returns: the normalised projection or the pooled embedding."""
