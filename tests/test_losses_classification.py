"""SupConLoss and EpsilonSupInfoNCE against hand arithmetic, loop references and torch cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainage.losses import EpsilonSupInfoNCE, SupConLoss

TAU = 0.1


def lse(*xs: float) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


# B = 3, V = 1, D = 2: z0 = (1, 0), z1 = (0.6, 0.8), z2 = (0.6, -0.8); labels (0, 0, 1).
# s01 = s02 = 6, s12 = -2.8 (tau = 0.1). Anchor 2 has no positive.
THREE = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]], [[0.6, -0.8]]], dtype=torch.float64)
THREE_LABELS = torch.tensor([0, 0, 1])


def test_supcon_hand_computed_with_anchor_without_positive() -> None:
    l0 = -(6.0 - lse(6.0, 6.0))  # = log 2
    l1 = -(6.0 - lse(6.0, -2.8))
    expected = (l0 + l1 + 0.0) / 3
    assert l0 == pytest.approx(math.log(2))
    for dtype in (torch.float64, torch.float32):
        value = SupConLoss(temperature=TAU)(THREE.to(dtype), THREE_LABELS)
        assert value.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_hand_computed_two_views() -> None:
    # Rows r0 = (1,0), r1 = (0,1), r2 = (0.6,0.8), r3 = (-0.8,0.6) (views stacked view-major), labels (0, 1):
    # each anchor's only positive is its other view, with s = 6; the other rows are listed per anchor.
    feats = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-0.8, 0.6]]], dtype=torch.float64)
    others = {0: (0.0, -8.0), 1: (0.0, 8.0), 2: (8.0, 0.0), 3: (-8.0, 0.0)}
    expected = sum(-(6.0 - lse(6.0, *o)) for o in others.values()) / 4
    assert SupConLoss(TAU)(feats, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-12)
    # Both samples in one class: every other row is a positive.
    same = sum(-(sum(x - lse(6.0, *o) for x in (6.0, *o)) / 3) for o in others.values()) / 4
    assert SupConLoss(TAU)(feats, torch.tensor([4, 4])).item() == pytest.approx(same, rel=1e-12)


def test_epsilon_hand_computed() -> None:
    eps = 0.7
    l0 = -(6.0 - lse(6.0 - eps, 6.0))  # P = {1}, Ng = {2}: s02 = 6
    l1 = -(6.0 - lse(6.0 - eps, -2.8))  # P = {0}, Ng = {2}: s12 = -2.8
    expected = (l0 + l1 + 0.0) / 3
    value = EpsilonSupInfoNCE(epsilon=eps, temperature=TAU)(THREE, THREE_LABELS)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_epsilon_hand_computed_two_views() -> None:
    # The two-view batch of the SupCon test: each anchor's positive is its other view (s = 6),
    # its negatives the other sample's two views, so L_i = -(6 - log(e^(6 - eps) + sum_n e^(s_in))).
    eps = 0.4
    feats = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-0.8, 0.6]]], dtype=torch.float64)
    others = {0: (0.0, -8.0), 1: (0.0, 8.0), 2: (8.0, 0.0), 3: (-8.0, 0.0)}
    expected = sum(-(6.0 - lse(6.0 - eps, *o)) for o in others.values()) / 4
    value = EpsilonSupInfoNCE(epsilon=eps, temperature=TAU)(feats, torch.tensor([0, 1]))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_epsilon_anchor_without_negative_contributes_epsilon() -> None:
    # One class only: log(exp(s) / exp(s - eps)) = eps for every positive, so every L_i = -eps.
    feats = F.normalize(torch.randn(4, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1)
    value = EpsilonSupInfoNCE(epsilon=0.3, temperature=TAU)(feats, torch.zeros(4, dtype=torch.long))
    assert value.item() == pytest.approx(-0.3, rel=1e-12)


def rows(features: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.detach().double().numpy()
    return np.concatenate([f[:, v] for v in range(f.shape[1])]), np.tile(labels.numpy(), f.shape[1])


def loop_supcon(z: np.ndarray, y: np.ndarray, tau: float) -> float:
    """Khosla et al. (2020), Eq. 2 (L^sup_out), averaged over anchors; no-positive anchors give 0."""
    n = len(z)
    total = 0.0
    for i in range(n):
        a_i = [a for a in range(n) if a != i]
        p_i = [p for p in a_i if y[p] == y[i]]
        if not p_i:
            continue
        denom = sum(math.exp(z[i] @ z[a] / tau) for a in a_i)
        total += -sum(math.log(math.exp(z[i] @ z[p] / tau) / denom) for p in p_i) / len(p_i)
    return total / n


def loop_epsilon(z: np.ndarray, y: np.ndarray, tau: float, eps: float | None) -> float:
    """Seed Eq. 2; ``eps=None`` is InfoL1O (no positive term in the denominator)."""
    n = len(z)
    s = z @ z.T / tau
    total = 0.0
    for i in range(n):
        p_i = [p for p in range(n) if p != i and y[p] == y[i]]
        ng_i = [j for j in range(n) if y[j] != y[i]]
        if not p_i:
            continue
        neg = sum(math.exp(s[i, j]) for j in ng_i)
        li = 0.0
        for p in p_i:
            denom = neg if eps is None else math.exp(s[i, p] - eps) + neg
            li -= math.log(math.exp(s[i, p]) / denom)
        total += li / len(p_i)
    return total / n


def random_batch(batch: int, views: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(batch, views, 5, generator=gen, dtype=torch.float64), dim=-1)
    return feats, torch.randint(0, classes, (batch,), generator=gen)


@pytest.mark.parametrize(("views", "classes", "seed"), [(1, 3, 0), (2, 3, 1), (2, 10, 2), (3, 2, 3)])
def test_supcon_matches_khosla_definition(views: int, classes: int, seed: int) -> None:
    feats, labels = random_batch(9, views, classes, seed)
    z, y = rows(feats, labels)
    expected = loop_supcon(z, y, TAU)
    assert SupConLoss(TAU)(feats, labels).item() == pytest.approx(expected, rel=1e-10)
    # The reference implementations multiply by tau / base_temperature.
    assert SupConLoss(TAU, base_temperature=0.07)(feats, labels).item() == pytest.approx(
        expected * TAU / 0.07, rel=1e-10
    )


def test_supcon_without_labels_is_nt_xent_via_cross_entropy() -> None:
    """labels=None with V = 2 is SimCLR's NT-Xent: cross-entropy of each row against its other view."""
    feats, _ = random_batch(6, 2, 1, seed=4)
    z = torch.cat([feats[:, 0], feats[:, 1]])
    logits = (z @ z.T / TAU).fill_diagonal_(-math.inf)
    target = torch.cat([torch.arange(6, 12), torch.arange(0, 6)])
    expected = F.cross_entropy(logits, target)
    assert SupConLoss(TAU)(feats).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("eps", [0.0, 0.25, 2.0])
@pytest.mark.parametrize(("views", "seed"), [(1, 5), (2, 6)])
def test_epsilon_matches_loop(eps: float, views: int, seed: int) -> None:
    feats, labels = random_batch(10, views, 3, seed)
    z, y = rows(feats, labels)
    value = EpsilonSupInfoNCE(epsilon=eps, temperature=TAU)(feats, labels)
    assert value.item() == pytest.approx(loop_epsilon(z, y, TAU, eps), rel=1e-10)
    scaled = EpsilonSupInfoNCE(epsilon=eps, temperature=TAU, base_temperature=0.07)(feats, labels)
    assert scaled.item() == pytest.approx(value.item() * TAU / 0.07, rel=1e-12)


def test_epsilon_large_tends_to_infol1o() -> None:
    feats, labels = random_batch(10, 2, 3, seed=7)
    z, y = rows(feats, labels)
    infol1o = loop_epsilon(z, y, TAU, None)
    gaps = []
    for eps in (0.0, 1.0, 5.0, 20.0, 60.0):
        gaps.append(EpsilonSupInfoNCE(epsilon=eps, temperature=TAU)(feats, labels).item() - infol1o)
    assert all(g > 0 for g in gaps[:-1])  # the exp(s_ip - eps) term only adds to the denominator
    assert all(a > b for a, b in zip(gaps, gaps[1:-1], strict=False))  # and shrinks as eps grows
    assert abs(gaps[-1]) < 1e-12


def test_epsilon_is_not_supcon_at_zero() -> None:
    """eps = 0: the other positives are not in the denominator, so the loss is below SupCon when
    some anchor has two or more positives."""
    feats, labels = random_batch(10, 2, 2, seed=8)
    assert EpsilonSupInfoNCE(0.0, TAU)(feats, labels).item() < SupConLoss(TAU)(feats, labels).item() - 1e-3
