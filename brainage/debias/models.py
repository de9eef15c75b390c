"""Networks of the debiasing tracks: SimpleConvNet and a 2-D ResNet-18 (MONAI).

Every model exposes ``features(x) -> (B, D)`` (the pooled representation the losses and the
privacy attacker look at), a linear classifier ``fc`` and ``forward(x) -> (B, n_classes)``.
"""

from __future__ import annotations

import torch
from torch import nn

from brainage.errors import BrainAgeError

__all__ = ["SimpleConvNet", "ResNet18", "build_model", "MODEL_NAMES"]

MODEL_NAMES = ("simpleconvnet", "resnet18")


class SimpleConvNet(nn.Module):
    """The Biased-MNIST network of ReBias, EnD and FairKL.

    Bahng et al., "Learning De-biased Representations with Biased Representations", ICML 2020
    (https://arxiv.org/abs/1910.02806): four 7x7 convolutions (padding 3, stride 1, no
    pooling) with 16, 32, 64, 128 channels, each followed by BatchNorm, ReLU after the first
    three, global average pooling to a 128-d feature, a linear classifier. When a loss acts on
    the feature (EnD, the contrastive losses) the last block ends in Tanh, as in the reference
    code of EnD and FairKL.

    Input ``B3HW`` (Biased-MNIST: 28 x 28), features ``B[D]`` with ``D = round(128 * width)``.

    Args:
        n_classes: outputs of the linear classifier.
        width: multiplier of every channel count (1.0 = the paper's network; the reduced
            default recipe uses less, see docs/debiasing.md).
        feature_activation: ``"none"`` or ``"tanh"`` after the last BatchNorm.
        in_channels: input channels.
        kernel_size: convolution size (7 in the paper).
    """

    def __init__(
        self,
        n_classes: int = 10,
        width: float = 1.0,
        feature_activation: str = "none",
        in_channels: int = 3,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise BrainAgeError(f"width must be positive, got {width}")
        if feature_activation not in ("none", "tanh"):
            raise BrainAgeError(f"feature_activation must be 'none' or 'tanh', got {feature_activation!r}")
        channels = [max(1, round(c * width)) for c in (16, 32, 64, 128)]
        layers: list[nn.Module] = []
        previous = in_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(previous, c, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(c)]
            if i < len(channels) - 1:
                layers.append(nn.ReLU(inplace=True))
            elif feature_activation == "tanh":
                layers.append(nn.Tanh())
            previous = c
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = channels[-1]
        self.fc = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise BrainAgeError(f"expected a B3HW batch, got shape {tuple(x.shape)}")
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ResNet18(nn.Module):
    """2-D ResNet-18 (He et al., CVPR 2016) built with ``monai.networks.nets.resnet18``.

    With ``cifar_stem`` the first convolution is 3x3 with stride 1 and the max-pool is
    dropped (the usual CIFAR adaptation, as in SupCon and epsilon-SupInfoNCE); otherwise the
    ImageNet stem (7x7, stride 2, max-pool). Features ``B[D]``, ``D = int(512 * width)``
    (``width = 0.25``: 16-32-64-128 channels, the channel counts of the paper's SimpleConvNet).

    With ``feature_activation="tanh"`` the pooled feature passes through BatchNorm and Tanh,
    as at the end of SimpleConvNet. The pooled output of a ResNet follows a ReLU, so without
    the BatchNorm every feature would be non-negative: every cosine similarity >= 0 (the
    contrastive losses could not push negatives past orthogonal) and an image whose features
    are all zero (seen with the ImageNet stem on 28 x 28 digits, a 1 x 1 final map) has no
    direction to normalise.

    Args:
        n_classes: outputs of the linear classifier.
        cifar_stem: use the CIFAR stem.
        width: MONAI ``widen_factor``.
        in_channels: input channels.
        feature_activation: ``"none"`` or ``"tanh"`` (BatchNorm + Tanh) on the pooled feature.
    """

    def __init__(
        self,
        n_classes: int = 10,
        cifar_stem: bool = True,
        width: float = 1.0,
        in_channels: int = 3,
        feature_activation: str = "none",
    ) -> None:
        super().__init__()
        from monai.networks.nets import resnet18

        if feature_activation not in ("none", "tanh"):
            raise BrainAgeError(f"feature_activation must be 'none' or 'tanh', got {feature_activation!r}")
        stem = (
            dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True)
            if cifar_stem
            else dict(conv1_t_size=7, conv1_t_stride=2, no_max_pool=False)
        )
        self.encoder = resnet18(
            spatial_dims=2, n_input_channels=in_channels, feed_forward=False, widen_factor=width, **stem
        )
        self.feature_dim = int(512 * width)
        self.activation = (
            nn.Sequential(nn.BatchNorm1d(self.feature_dim), nn.Tanh())
            if feature_activation == "tanh"
            else nn.Identity()
        )
        self.fc = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise BrainAgeError(f"expected a BCHW batch, got shape {tuple(x.shape)}")
        return self.activation(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_model(
    name: str, n_classes: int, width: float = 1.0, feature_activation: str = "none", cifar_stem: bool = True
) -> nn.Module:
    """``"simpleconvnet"`` or ``"resnet18"`` with the given options."""
    if name == "simpleconvnet":
        return SimpleConvNet(n_classes, width, feature_activation)
    if name == "resnet18":
        return ResNet18(n_classes, cifar_stem, width, feature_activation=feature_activation)
    raise BrainAgeError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
