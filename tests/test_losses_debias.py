"""FairKL (paper and reference) and EnDRegularizer against hand arithmetic and loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainage.losses import EnDRegularizer, FairKL

# Rows (view-major) r0 = (1,0), r1 = (0,1), r2 = (0.6,0.8), r3 = (-0.8,0.6): B = 2 samples, V = 2 views.
# Raw dot products: z0.z1 = 0, z0.z2 = 0.6, z0.z3 = -0.8, z1.z2 = 0.8, z1.z3 = 0.6, z2.z3 = 0.
FOUR = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-0.8, 0.6]]], dtype=torch.float64)


def kl(mu_a: float, var_a: float, mu_c: float, var_c: float, eps: float) -> float:
    va, vc = var_a + eps, var_c + eps
    return 0.5 * ((va + (mu_a - mu_c) ** 2) / vc - math.log(va / vc) - 1)


def test_fairkl_paper_hand_computed() -> None:
    """labels (0, 0), bias (0, 1), tau = 1: for each anchor the other view is the aligned positive,
    the two rows of the other sample are conflicting positives; no negatives (that KL term is 0).

    anchor 0: aligned {0.6}, conflicting {0, -0.8}: mean -0.4, variance 0.16
    anchor 1: aligned {0.6}, conflicting {0, 0.8}:  mean  0.4, variance 0.16
    anchor 2: aligned {0.6}, conflicting {0.8, 0}:  mean  0.4, variance 0.16
    anchor 3: aligned {0.6}, conflicting {-0.8, 0}: mean -0.4, variance 0.16
    """
    eps = 0.01
    expected = (2 * kl(0.6, 0.0, -0.4, 0.16, eps) + 2 * kl(0.6, 0.0, 0.4, 0.16, eps)) / 4
    value = FairKL("paper", temperature=1.0, variance_eps=eps)(FOUR, torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert value.item() == pytest.approx(expected, rel=1e-12)
    # tau = 0.5 scales every similarity by 2: means by 2, variances by 4.
    value_half = FairKL("paper", temperature=0.5, variance_eps=eps)(FOUR, torch.tensor([0, 0]), torch.tensor([0, 1]))
    expected_half = (2 * kl(1.2, 0.0, -0.8, 0.64, eps) + 2 * kl(1.2, 0.0, 0.8, 0.64, eps)) / 4
    assert value_half.item() == pytest.approx(expected_half, rel=1e-12)


def test_fairkl_reference_hand_computed() -> None:
    """B = 3, features[:, 0] = (1,0), (0.6,0.8), (0.6,-0.8) (the second view is ignored), labels (0,0,1),
    bias (0,1,0); similarities not divided by tau, diagonal included:

    aligned positives   {(0,0), (1,1), (2,2)}: values 1, 1, 1      -> mu 1
    conflicting pos.    {(0,1), (1,0)}:        values 0.6, 0.6     -> mu 0.6
    aligned negatives   {(0,2), (2,0)}:        values 0.6, 0.6     -> mu 0.6
    conflicting neg.    {(1,2), (2,1)}:        values -0.28, -0.28 -> mu -0.28
    std over the 9 entries of each masked matrix (zeros included), ddof 1: for k entries equal to v,
    sum of squared deviations = k v^2 - (k v)^2 / 9.
    """
    first = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], dtype=torch.float64)
    second = F.normalize(torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1)
    feats = torch.stack([first, second], dim=1)

    def std(k: int, v: float) -> float:
        return math.sqrt((k * v * v - (k * v) ** 2 / 9) / 8)

    mu_pa, mu_pc, mu_na, mu_nc = 1.0, 0.6, 0.6, -0.28
    moments = (mu_pc - mu_pa) ** 2 + (mu_na - mu_nc) ** 2
    stds = (std(3, 1.0) - std(2, 0.6)) ** 2 + (std(2, 0.6) - std(2, -0.28)) ** 2
    assert std(3, 1.0) == pytest.approx(0.5)
    labels, bias = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    for kld in (0.0, 1.0, 2.5):
        expected = moments + kld * stds - mu_pc + mu_na
        value = FairKL("reference", kld=kld)(feats, labels, bias)
        assert value.item() == pytest.approx(expected, rel=1e-12)
    assert FairKL("reference")(feats, labels, bias).item() == pytest.approx(moments + stds, rel=1e-12)


def stacked(features: torch.Tensor, *per_sample: torch.Tensor) -> list[np.ndarray]:
    f = features.detach().double().numpy()
    z = np.concatenate([f[:, v] for v in range(f.shape[1])])
    return [z] + [np.tile(x.numpy(), f.shape[1]) for x in per_sample]


def loop_fairkl_paper(z: np.ndarray, y: np.ndarray, b: np.ndarray, tau: float, eps: float) -> float:
    n = len(z)
    s = z @ z.T / tau
    total = 0.0
    for i in range(n):
        groups = {key: [] for key in ("pa", "pc", "na", "nc")}
        for j in range(n):
            if j == i:
                continue
            key = ("p" if y[j] == y[i] else "n") + ("a" if b[j] == b[i] else "c")
            groups[key].append(s[i, j])
        for aligned, conflicting in (("pa", "pc"), ("na", "nc")):
            ga, gc = groups[aligned], groups[conflicting]
            if ga and gc:
                total += kl(float(np.mean(ga)), float(np.var(ga)), float(np.mean(gc)), float(np.var(gc)), eps)
    return total / n


def loop_fairkl_reference(z: np.ndarray, y: np.ndarray, b: np.ndarray, kld: float) -> float:
    s = z @ z.T
    pos = y[:, None] == y[None, :]
    al = b[:, None] == b[None, :]
    masks = {"pa": pos & al, "pc": pos & ~al, "na": ~pos & al, "nc": ~pos & ~al}
    mu = {k: (s * m).sum() / max(m.sum(), 1) for k, m in masks.items()}
    sd = {k: np.std(s * m, ddof=1) for k, m in masks.items()}
    loss = (mu["pc"] - mu["pa"]) ** 2 + (mu["na"] - mu["nc"]) ** 2
    loss += kld * ((sd["pa"] - sd["pc"]) ** 2 + (sd["na"] - sd["nc"]) ** 2)
    return loss - mu["pc"] + mu["na"]


@pytest.mark.parametrize(("views", "seed"), [(1, 0), (2, 1), (3, 2)])
def test_fairkl_paper_matches_loop(views: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(10, views, 4, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, 3, (10,), generator=gen)
    bias = torch.randint(0, 2, (10,), generator=gen)
    z, y, b = stacked(feats, labels, bias)
    value = FairKL("paper", temperature=0.1, variance_eps=1e-4)(feats, labels, bias)
    assert value.item() == pytest.approx(loop_fairkl_paper(z, y, b, 0.1, 1e-4), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fairkl_reference_matches_loop_on_first_view(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(12, 2, 4, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, 3, (12,), generator=gen)
    bias = torch.randint(0, 3, (12,), generator=gen)
    z, y, b = stacked(feats[:, :1], labels, bias)
    value = FairKL("reference", kld=0.5)(feats, labels, bias)
    assert value.item() == pytest.approx(loop_fairkl_reference(z, y, b, 0.5), rel=1e-10)


def test_fairkl_paper_is_zero_for_matching_distributions_and_positive_otherwise() -> None:
    """KL(p || p) = 0: if every sample's features ignore the bias the aligned and conflicting groups
    have identical similarity values (here all rows of a class share one vector)."""
    base = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3]], dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    bias = torch.tensor([0, 1, 0, 1, 1, 0])
    feats = base[labels][:, None, :].expand(6, 2, 3)
    assert FairKL("paper")(feats, labels, bias).item() == pytest.approx(0.0, abs=1e-12)
    noise = torch.randn(6, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    noisy = F.normalize(feats + 0.3 * noise, dim=-1)
    assert FairKL("paper")(noisy, labels, bias).item() > 0


# ----------------------------------------------------------------------------------------------
# EnD
# ----------------------------------------------------------------------------------------------
def test_end_hand_computed() -> None:
    """Features (not normalised) 2*(1,0), 3*(0,1), 5*(0.6,0.8), 0.5*(-0.8,0.6); after normalisation
    G10 = 0, G20 = 0.6, G21 = 0.8, G30 = -0.8, G31 = 0.6, G32 = 0.
    labels (0, 0, 1, 1), bias (0, 0, 1, 0):
    same-bias pairs i > j: (1,0), (3,0), (3,1), all bias 0: |0 - 0.8 + 0.6| = 0.2 over M = 3 pairs.
    same class, different bias: (3,2) only: R_par = 1 - (1 + 0)/2 = 0.5.
    """
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [3.0, 4.0], [-0.4, 0.3]], dtype=torch.float64)
    labels, bias = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 0])
    r_perp, r_par = EnDRegularizer().terms(feats, labels, bias)
    assert r_perp.item() == pytest.approx(0.2 / 3, rel=1e-12)
    assert r_par.item() == pytest.approx(0.5, rel=1e-12)
    value = EnDRegularizer(alpha=2.0, beta=3.0)(feats, labels, bias)
    assert value.item() == pytest.approx(2.0 * 0.2 / 3 + 3.0 * 0.5, rel=1e-12)


def loop_end(x: np.ndarray, y: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    sums: dict[int, float] = {}
    m = 0
    par, p = 0.0, 0
    for i in range(len(z)):
        for j in range(i):
            g = float(z[i] @ z[j])
            if b[i] == b[j]:
                sums[int(b[i])] = sums.get(int(b[i]), 0.0) + g
                m += 1
            elif y[i] == y[j]:
                par += (1 + g) / 2
                p += 1
    r_perp = sum(abs(v) for v in sums.values()) / m if m else 0.0
    r_par = 1 - par / p if p else 0.0
    return r_perp, r_par


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_end_matches_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(14, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (14,), generator=gen)
    bias = torch.randint(5, 9, (14,), generator=gen)  # non-contiguous bias values
    r_perp, r_par = loop_end(feats.numpy(), labels.numpy(), bias.numpy())
    got_perp, got_par = EnDRegularizer().terms(feats, labels, bias)
    assert got_perp.item() == pytest.approx(r_perp, rel=1e-10)
    assert got_par.item() == pytest.approx(r_par, rel=1e-10)
    assert EnDRegularizer(0.3, 1.7)(feats, labels, bias).item() == pytest.approx(0.3 * r_perp + 1.7 * r_par, rel=1e-10)


def test_end_flattens_feature_maps() -> None:
    gen = torch.Generator().manual_seed(3)
    maps = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    labels, bias = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 0, 1])
    r = EnDRegularizer().terms(maps, labels, bias)
    expected = loop_end(maps.reshape(6, -1).numpy(), labels.numpy(), bias.numpy())
    assert [t.item() for t in r] == pytest.approx(list(expected), rel=1e-10)
