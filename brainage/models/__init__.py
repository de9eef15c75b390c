"""Networks: the 3D ResNet-18 brain-age model (MONAI encoder, contrastive or regression head).

Importable with torch, monai and numpy only, so the training path runs on GPU machines without
the imaging stack (nibabel, nilearn). The names the network accepts are in
:mod:`brainage.models.names`, which needs neither torch nor MONAI; the network is resolved on
first use, so importing that module stays cheap.
"""

from __future__ import annotations

from brainage._lazy import lazy_exports

_EXPORTS = {
    "FEATURE_KINDS": "names",
    "HEADS": "names",
    "BrainAgeNet": "resnet",
    "embedding_dim": "resnet",
    "resnet18_encoder": "resnet",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
