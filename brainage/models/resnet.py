"""The brain-age network: MONAI's 3D ResNet-18 encoder with a contrastive or a regression head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import resnet18
from torch import Tensor, nn

from brainage.errors import BrainAgeError

from .names import FEATURE_KINDS, HEADS

__all__ = ["HEADS", "FEATURE_KINDS", "BrainAgeNet", "resnet18_encoder", "embedding_dim"]


def embedding_dim(widen_factor: float = 1.0) -> int:
    """Size of the pooled ResNet-18 embedding: the last stage's channels, ``int(512 * widen_factor)``."""
    return int(512 * widen_factor)


def resnet18_encoder(widen_factor: float = 1.0, in_channels: int = 1) -> nn.Module:
    """MONAI 3D ResNet-18 without its classifier, with the torchvision-style stem.

    The stem is a 7x7x7 convolution of stride 2 followed by a stride-2 max-pool, as in the
    2D ResNet of He et al. (CVPR 2016) and the brain-age model of Barbano et al. (ISBI 2023).
    MONAI's default stem stride is 1, which makes every later feature map 8 times larger.
    The 1x1x1 projection shortcuts have no bias (``bias_downsample=False``), as in the reference
    network: a bias right before BatchNorm is cancelled by its mean subtraction, so its true
    gradient is zero, and Adam would turn the rounding noise of that gradient into full-size
    steps (a random walk that differs between machines and memory layouts).

    Args:
        widen_factor: multiplies the channels of every stage (64, 128, 256, 512).
        in_channels: input channels (1 for a VBM or quasi-raw volume).

    Returns:
        A module mapping ``(B, in_channels, X, Y, Z)`` to the ``(B, int(512 * widen_factor))``
        globally average-pooled embedding.
    """
    return resnet18(
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        widen_factor=widen_factor,
        feed_forward=False,
        bias_downsample=False,
    )


def _at_least_float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class BrainAgeNet(nn.Module):
    """3D ResNet-18 encoder with one head: a contrastive projection or an age regressor.

    The contrastive model follows Barbano, Dufumier, Duchesnay, Grangetto, Gori, "Contrastive
    learning for regression in multi-site brain age prediction", ISBI 2023
    (https://arxiv.org/abs/2211.08326): a ResNet-18 encoder, a projection head
    ``Linear(E, H) - ReLU - Linear(H, P)`` whose output is L2-normalised, with ``E = H = 512``
    and ``P = 128`` at width 1. The L1 baseline uses the same encoder with ``Linear(E, 1)``.

    Head sizes at other widths: the hidden size ``H`` follows the embedding
    (``E = int(512 * widen_factor)``) unless given, and the output ``P`` stays at 128 unless
    given, so that the features the challenge probes see have the paper's dimension whatever
    the encoder's width.

    Args:
        widen_factor: channel multiplier of the encoder (1 = the published ResNet-18,
            33,160,000 parameters in the encoder).
        head: ``"projection"`` (contrastive methods) or ``"regression"`` (L1 baselines). Only
            the chosen head is built, so every parameter takes part in ``forward`` (required by
            DistributedDataParallel without ``find_unused_parameters``).
        projection_dim: ``P``, size of the normalised projection.
        projection_hidden: ``H``; ``None`` means ``E``.
        in_channels: input channels.

    Raises:
        ValueError: unknown head, or non-positive sizes.

    Example:
        >>> net = BrainAgeNet(widen_factor=0.125, head="projection")
        >>> z = net(torch.randn(2, 1, 16, 16, 16))  # (2, 128), unit rows
    """

    def __init__(
        self,
        widen_factor: float = 1.0,
        head: str = "projection",
        projection_dim: int = 128,
        projection_hidden: int | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise BrainAgeError(f"unknown head {head!r}; valid choices are: {', '.join(map(repr, HEADS))}")
        self.embedding_dim = embedding_dim(widen_factor)
        if self.embedding_dim < 1:
            raise BrainAgeError(f"widen_factor {widen_factor} leaves no channels in the last stage (512 * w < 1)")
        hidden = self.embedding_dim if projection_hidden is None else int(projection_hidden)
        if projection_dim < 1 or hidden < 1:
            raise BrainAgeError(f"projection sizes must be positive, got hidden={hidden}, out={projection_dim}")
        self.head_name = head
        self.encoder = resnet18_encoder(widen_factor, in_channels)
        if head == "projection":
            self.head: nn.Module = nn.Sequential(
                nn.Linear(self.embedding_dim, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, projection_dim),
            )
            self.output_dim = projection_dim
        else:
            self.head = nn.Linear(self.embedding_dim, 1)
            self.output_dim = 1

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.encoder.conv1.in_channels:
            raise BrainAgeError(
                f"expected a (B, {self.encoder.conv1.in_channels}, X, Y, Z) volume batch, got {tuple(x.shape)}"
            )

    def embed(self, x: Tensor) -> Tensor:
        """Pooled encoder output.

        Args:
            x: ``(B, 1, X, Y, Z)`` volumes.

        Returns:
            ``(B, E)`` embedding, ``E = int(512 * widen_factor)``.
        """
        self._check_input(x)
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """Head output.

        Args:
            x: ``(B, 1, X, Y, Z)`` volumes.

        Returns:
            ``(B, P)`` L2-normalised projection (in float32 at least, also under autocast), or
            ``(B,)`` regression output (standardised age units for the trainer's L1 models).
        """
        out = self.head(self.embed(x))
        if self.head_name == "projection":
            return F.normalize(_at_least_float32(out), dim=1)
        return out[:, 0]

    @torch.no_grad()
    def features(self, x: Tensor, kind: str = "projection") -> Tensor:
        """Frozen features for the challenge probes.

        Args:
            x: ``(B, 1, X, Y, Z)`` volumes.
            kind: ``"projection"`` (the normalised head output; contrastive models only) or
                ``"embedding"`` (the pooled encoder output).

        Returns:
            ``(B, P)`` or ``(B, E)`` float32.

        Raises:
            ValueError: unknown kind, or a projection asked of a regression model.
        """
        if kind not in FEATURE_KINDS:
            raise BrainAgeError(
                f"unknown feature kind {kind!r}; valid choices are: {', '.join(map(repr, FEATURE_KINDS))}"
            )
        if kind == "projection":
            if self.head_name != "projection":
                raise BrainAgeError("a regression (L1) model has no projection head; use kind='embedding'")
            return self(x).float()
        return self.embed(x).float()
