"""Networks: the 3D ResNet-18 brain-age model (MONAI encoder, contrastive or regression head).

Importable with torch, monai and numpy only, so the training path runs on GPU machines without
the imaging stack (nibabel, nilearn).
"""

from .resnet import FEATURE_KINDS, HEADS, BrainAgeNet, embedding_dim, resnet18_encoder

__all__ = ["FEATURE_KINDS", "HEADS", "BrainAgeNet", "embedding_dim", "resnet18_encoder"]
