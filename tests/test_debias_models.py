"""Debiasing networks and objectives: SimpleConvNet as described, the MONAI ResNet-18 stems, what
each method back-propagates into the encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainage.debias.methods import METHODS, MethodConfig, build_objective
from brainage.debias.models import ResNet18, SimpleConvNet, build_model
from brainage.debias.train import augment_batch
from brainage.losses import EnDRegularizer, EpsilonSupInfoNCE, FairKL, SupConLoss


def test_simpleconvnet_matches_the_description():
    net = SimpleConvNet(n_classes=10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 16), (16, 32), (32, 64), (64, 128)]
    assert all(c.kernel_size == (7, 7) and c.padding == (3, 3) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 4
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == 3
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in net.modules())
    # parameters by hand: conv k*k*cin*cout + cout, BN 2*cout, fc 128*10 + 10
    expected = sum(49 * a * b + b + 2 * b for a, b in [(3, 16), (16, 32), (32, 64), (64, 128)]) + 1290
    assert sum(p.numel() for p in net.parameters()) == expected == 531210
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = tuple(output.shape)

    net.encoder[-3].register_forward_hook(record)
    logits = net(torch.zeros(2, 3, 28, 28))
    assert logits.shape == (2, 10) and seen["shape"] == (2, 128, 28, 28)  # full resolution up to the pool


def test_simpleconvnet_width_and_tanh():
    net = SimpleConvNet(width=0.25, feature_activation="tanh")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32] and net.feature_dim == 32
    feats = net.features(torch.randn(5, 3, 28, 28) * 50)
    assert feats.shape == (5, 32) and feats.abs().max() <= 1.0
    assert isinstance(net.encoder[-3], torch.nn.Tanh)
    with pytest.raises(ValueError, match="B3HW"):
        net.features(torch.zeros(3, 28, 28))


def test_resnet18_stems():
    cifar = ResNet18(n_classes=10, cifar_stem=True, width=0.25)
    assert cifar.encoder.conv1.kernel_size == (3, 3) and cifar.encoder.conv1.stride == (1, 1)
    assert cifar.encoder.no_max_pool and cifar.feature_dim == 128
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    imagenet = ResNet18(n_classes=9, cifar_stem=False, width=0.25)
    assert imagenet.encoder.conv1.kernel_size == (7, 7) and imagenet.encoder.conv1.stride == (2, 2)
    assert not imagenet.encoder.no_max_pool
    assert imagenet.features(torch.zeros(1, 3, 64, 64)).shape == (1, 128)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 10)


def test_resnet18_tanh_features_pass_batchnorm():
    # The pooled ResNet output follows a ReLU: without the BatchNorm, tanh features would all be >= 0.
    plain = ResNet18(n_classes=10, cifar_stem=False, width=0.25)
    assert (plain.features(torch.randn(4, 3, 28, 28)) >= 0).all()
    net = ResNet18(n_classes=10, cifar_stem=False, width=0.25, feature_activation="tanh")
    assert isinstance(net.activation[0], torch.nn.BatchNorm1d) and isinstance(net.activation[1], torch.nn.Tanh)
    feats = net.features(torch.randn(16, 3, 28, 28))
    assert feats.shape == (16, 128) and feats.abs().max() < 1.0 and (feats < 0).any()
    assert (feats.norm(dim=1) > 0).all()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(8, 1, 6, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    bias = torch.tensor([0, 1, 1, 1, 2, 0, 0, 2])
    logits = torch.randn(8, 3, generator=g, requires_grad=True)
    return feats, labels, bias, logits


@pytest.mark.parametrize("name", ["supcon", "eps-supinfonce", "eps-supinfonce-fairkl"])
def test_contrastive_objectives_are_the_library_losses(name):
    feats, labels, bias, logits = _batch()
    cfg = MethodConfig(name, epsilon=0.3, lambd=2.0, alpha=0.5)
    loss, probe, _ = build_objective(cfg)(feats, logits, labels, bias)
    z = F.normalize(feats, dim=-1)
    if name == "supcon":
        expected = SupConLoss(temperature=0.1)(z, labels)
    else:
        expected = EpsilonSupInfoNCE(epsilon=0.3, temperature=0.1)(z, labels)
        if name.endswith("fairkl"):
            expected = 0.5 * expected + 2.0 * FairKL(formulation="reference")(z, labels, bias)
    assert torch.allclose(loss, expected)
    assert torch.allclose(probe, F.cross_entropy(logits, labels))
    # the encoder loss does not depend on the classifier's logits
    (grad,) = torch.autograd.grad(loss, logits, allow_unused=True)
    assert grad is None


def test_joint_objectives():
    feats, labels, bias, logits = _batch(1)
    loss, probe, parts = build_objective(MethodConfig("ce"))(feats, logits, labels, bias)
    assert probe is None and torch.allclose(loss, F.cross_entropy(logits, labels))
    loss, probe, parts = build_objective(MethodConfig("ce-end", end_alpha=0.7, end_beta=0.2))(
        feats, logits, labels, bias
    )
    expected = F.cross_entropy(logits, labels) + EnDRegularizer(0.7, 0.2)(feats[:, 0], labels, bias)
    assert probe is None and torch.allclose(loss, expected) and set(parts) == {"ce", "end"}
    with pytest.raises(ValueError, match="unknown method"):
        MethodConfig("lnl")
    assert METHODS == ("ce", "supcon", "eps-supinfonce", "eps-supinfonce-fairkl", "ce-end")


def test_augment_batch_crops_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, g, padding=1)
    assert out.shape == x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, r : r + 4, c : c + 4] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    same = [augment_batch(x, torch.Generator().manual_seed(5), padding=0) for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert all(torch.equal(same[0][i], x[i]) or torch.equal(same[0][i], x[i].flip(-1)) for i in range(2))
