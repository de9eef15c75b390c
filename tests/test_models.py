"""The brain-age network: shapes, parameter counts, stem stride, normalised projection."""

from __future__ import annotations

import pytest
import torch

from brainage.models import BrainAgeNet, embedding_dim


def _conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k**3 + (cout if bias else 0)


def _bn(c: int) -> int:
    return 2 * c


def resnet18_3d_parameters(width: float = 1.0, in_channels: int = 1) -> int:
    """Parameters of a 3D ResNet-18 without classifier, counted from the architecture.

    Stem: 7^3 conv + BN; four stages of two basic blocks (two 3^3 convs + BN each); the first
    block of stages 2-4 has a 1^3 projection shortcut without bias, then BN (shortcut "B" of the
    reference network; MONAI's with ``bias_downsample=False``).
    """
    planes = [int(p * width) for p in (64, 128, 256, 512)]
    total = _conv(in_channels, planes[0], 7) + _bn(planes[0])
    cin = planes[0]
    for stage, c in enumerate(planes):
        for block in range(2):
            total += _conv(cin, c, 3) + _bn(c) + _conv(c, c, 3) + _bn(c)
            if block == 0 and stage > 0:
                total += _conv(cin, c, 1) + _bn(c)
            cin = c
    return total


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_width1_parameter_count_matches_resnet18():
    net = BrainAgeNet(widen_factor=1.0, head="projection")
    expected_encoder = resnet18_3d_parameters(1.0)
    assert count(net.encoder) == expected_encoder
    assert expected_encoder == 33_160_000  # the reference network's encoder (no shortcut biases)
    assert count(net.head) == (512 * 512 + 512) + (512 * 128 + 128)
    reg = BrainAgeNet(widen_factor=1.0, head="regression")
    assert count(reg) == expected_encoder + 512 + 1


@pytest.mark.parametrize("width", [0.125, 0.25])
def test_narrow_parameter_count(width):
    net = BrainAgeNet(widen_factor=width, head="projection")
    e = int(512 * width)
    assert net.embedding_dim == e == embedding_dim(width)
    assert count(net.encoder) == resnet18_3d_parameters(width)
    assert count(net.head) == (e * e + e) + (e * 128 + 128)


def test_stride2_stem():
    net = BrainAgeNet(widen_factor=0.125)
    assert tuple(net.encoder.conv1.stride) == (2, 2, 2)
    assert tuple(net.encoder.conv1.kernel_size) == (7, 7, 7)
    shapes = {}
    net.encoder.conv1.register_forward_hook(lambda m, i, o: shapes.__setitem__("conv1", o.shape))
    net.encoder.maxpool.register_forward_hook(lambda m, i, o: shapes.__setitem__("pool", o.shape))
    net.encoder.layer4.register_forward_hook(lambda m, i, o: shapes.__setitem__("layer4", o.shape))
    net.eval()
    with torch.no_grad():
        net(torch.randn(2, 1, 32, 32, 32))
    assert tuple(shapes["conv1"]) == (2, 8, 16, 16, 16)
    assert tuple(shapes["pool"]) == (2, 8, 8, 8, 8)
    assert tuple(shapes["layer4"]) == (2, 64, 1, 1, 1)


def test_shapes_and_unit_projection():
    torch.manual_seed(0)
    net = BrainAgeNet(widen_factor=0.125, head="projection").eval()
    x = torch.randn(3, 1, 16, 18, 16)
    z = net(x)
    assert z.shape == (3, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)
    assert net.features(x, "embedding").shape == (3, 64)
    torch.testing.assert_close(net.features(x, "projection"), z)
    custom = BrainAgeNet(widen_factor=0.125, projection_dim=32, projection_hidden=16)
    assert custom(x).shape == (3, 32)

    reg = BrainAgeNet(widen_factor=0.125, head="regression").eval()
    assert reg(x).shape == (3,)
    assert reg.features(x, "embedding").shape == (3, 64)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown head 'regresion'.*'projection', 'regression'"):
        BrainAgeNet(0.125, head="regresion")
    net = BrainAgeNet(0.125, head="regression")
    with pytest.raises(ValueError, match="no projection head"):
        net.features(torch.randn(1, 1, 16, 16, 16), "projection")
    with pytest.raises(ValueError, match="unknown feature kind"):
        net.features(torch.randn(1, 1, 16, 16, 16), "pooled")
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\).*\(2, 16, 16, 16\)"):
        net(torch.randn(2, 16, 16, 16))
