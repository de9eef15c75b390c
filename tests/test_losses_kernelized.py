"""KernelizedContrastiveLoss (y-aware, L^thr, L^exp) against hand arithmetic and loop references.

Expected values are written from the equations of ``shared/reference/losses.md`` (seed Eqs. 9-11
and the reference-code forms), never from the implementation's output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainage.losses import EpsilonSupInfoNCE, KernelizedContrastiveLoss, SupConLoss, age_kernel

TAU = 0.1
REF_SCALE = TAU / 0.07
E = math.exp(-0.5)  # rbf weight between ages 20 and 22 with sigma = 2


def lse(*xs: float) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


# ---------------------------------------------------------------------------------------------
# Hand-computed tiny batch: B = 2 samples (ages 20, 22), V = 2 views, D = 2.
# Rows (view-major): r0 = s0v0 = (1, 0), r1 = s1v0 = (0, 1), r2 = s0v1 = (0.6, 0.8), r3 = s1v1 = (-0.8, 0.6).
# Dot products / tau: s01 = 0, s02 = 6, s03 = -8, s12 = 8, s13 = 6, s23 = 0.
# rbf(sigma=2): same-sample pairs w = 1, cross-sample pairs w = e^{-1/2}.
# For every anchor: the "partner" (other view, w = 1) and two "others" (w = E each).
# ---------------------------------------------------------------------------------------------
HAND_FEATURES = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-0.8, 0.6]]], dtype=torch.float64)
HAND_AGES = torch.tensor([20.0, 22.0], dtype=torch.float64)
# anchor -> (s_partner, s_other_a, s_other_b)
HAND_ROWS = {0: (6.0, 0.0, -8.0), 1: (6.0, 0.0, 8.0), 2: (6.0, 8.0, 0.0), 3: (6.0, -8.0, 0.0)}
NORM = 1.0 + 2.0 * E  # sum of the weights over A(i)


def hand_yaware() -> float:
    total = 0.0
    for sp, sa, sb in HAND_ROWS.values():
        z = lse(sp, sa, sb)
        total += -(1.0 * (sp - z) + E * (sa - z) + E * (sb - z)) / NORM
    return total / 4


def hand_thr() -> float:
    # partner k (w = 1): T = both others (w = E < 1). other k (w = E): T is empty, because the other
    # "other" ties (E < E is false) and the partner is more similar; so log p = s_k - s_k = 0.
    total = 0.0
    for sp, sa, sb in HAND_ROWS.values():
        total += -(1.0 * (sp - lse(sp, sa, sb))) / NORM
    return total / 4


def hand_exp() -> float:
    # repulsion terms exp(s_t (1 - w_t)): partner -> exp(0) = 1, others -> exp(s_t (1 - E)).
    total = 0.0
    for sp, sa, sb in HAND_ROWS.values():
        ra, rb = sa * (1 - E), sb * (1 - E)
        lp_partner = sp - lse(ra, rb)
        lp_a = sa - lse(0.0, rb)
        lp_b = sb - lse(0.0, ra)
        total += -(lp_partner + E * lp_a + E * lp_b) / NORM
    return total / 4


def hand_reference_exp() -> float:
    # m_i = s_ii = 1/tau = 10; one denominator D_i = 1 + sum_others exp((s_t - 10)(1 - E)).
    total = 0.0
    for sp, sa, sb in HAND_ROWS.values():
        log_d = math.log(1.0 + math.exp((sa - 10) * (1 - E)) + math.exp((sb - 10) * (1 - E)))
        total += -((sp - 10 - log_d) + E * (sa - 10 - log_d) + E * (sb - 10 - log_d)) / NORM
    return REF_SCALE * total / 4


def hand_reference_thr(mean: bool) -> float:
    # c_ij = #{k : w_ij > w_jk}: for the partner j (w_ij = 1), row j holds {1, 1, E, E} -> c = 2;
    # for an other j (w_ij = E) nothing in row j is below E -> c = 0. So D_i = c exp(s_p - 10).
    c = 2.0 / 4 if mean else 2.0
    total = 0.0
    for sp, sa, sb in HAND_ROWS.values():
        log_d = math.log(c) + (sp - 10)
        total += -((sp - 10 - log_d) + E * (sa - 10 - log_d) + E * (sb - 10 - log_d)) / NORM
    return REF_SCALE * total / 4


@pytest.mark.parametrize(
    ("method", "formulation", "expected"),
    [
        ("yaware", "paper", hand_yaware()),
        ("thr", "paper", hand_thr()),
        ("exp", "paper", hand_exp()),
        ("yaware", "reference", REF_SCALE * hand_yaware()),
        ("thr", "reference", hand_reference_thr(mean=False)),
        ("exp", "reference", hand_reference_exp()),
    ],
)
def test_hand_computed_two_samples(method: str, formulation: str, expected: float) -> None:
    loss = KernelizedContrastiveLoss(method, "rbf", sigma=2.0, temperature=TAU, formulation=formulation)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        value = loss(HAND_FEATURES.to(dtype), HAND_AGES.to(dtype))
        assert value.item() == pytest.approx(expected, rel=tol, abs=tol)


def test_hand_computed_reference_threshold_mean_reduction() -> None:
    loss = KernelizedContrastiveLoss("thr", formulation="reference", threshold_reduction="mean")
    value = loss(HAND_FEATURES, HAND_AGES)
    assert value.item() == pytest.approx(hand_reference_thr(mean=True), rel=1e-10)
    # c / N only shifts every L_i by log N: (sum - mean) = scale * log 4.
    summed = KernelizedContrastiveLoss("thr", formulation="reference")(HAND_FEATURES, HAND_AGES)
    assert (summed - value).item() == pytest.approx(REF_SCALE * math.log(4), rel=1e-10)


def test_hand_computed_threshold_ties_between_samples() -> None:
    """B = 3, V = 1, ages 30, 28, 32: anchor 0 sees two equally similar ages (a tie).

    z0 = (1, 0), z1 = (0.6, 0.8), z2 = (0.6, -0.8): s01 = s02 = 6, s12 = -2.8 (tau = 0.1).
    w01 = w02 = a = e^{-1/2}, w12 = c = e^{-2}.
    Anchor 0: both k tie, T(0, k) is empty, L_0 = 0.
    Anchor 1: k = 0 (w = a) repels T = {2} (c < a); k = 2 has T empty.
        L_1 = -(a / (a + c)) (6 - log(e^6 + e^-2.8)); anchor 2 is symmetric.
    """
    feats = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]], [[0.6, -0.8]]], dtype=torch.float64)
    ages = torch.tensor([30.0, 28.0, 32.0], dtype=torch.float64)
    a, c = math.exp(-0.5), math.exp(-2.0)
    l1 = -(a / (a + c)) * (6.0 - lse(6.0, -2.8))
    expected = (0.0 + 2 * l1) / 3
    value = KernelizedContrastiveLoss("thr", "rbf", sigma=2.0, temperature=TAU)(feats, ages)
    assert value.item() == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Loop-over-indices references, written from the equations (O(N^3), float64 numpy).
# ---------------------------------------------------------------------------------------------
def rows(features: torch.Tensor, ages: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.detach().double().numpy()
    z = np.concatenate([f[:, v] for v in range(f.shape[1])], axis=0)
    y = np.tile(ages.detach().double().numpy(), f.shape[1])
    return z, y


def kernel_np(kind: str, d: float, sigma: float) -> float:
    if kind == "rbf":
        return math.exp(-d * d / (2 * sigma**2))
    if kind == "gaussian":
        return math.exp(-d * d / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return 1.0 / (1.0 + sigma * d * d)  # cauchy, gamma = sigma


def loop_paper(method: str, z: np.ndarray, w: np.ndarray, tau: float) -> float:
    n = len(z)
    s = z @ z.T / tau
    total = 0.0
    for i in range(n):
        a_i = [j for j in range(n) if j != i]
        w_sum = sum(w[i, t] for t in a_i)
        if w_sum == 0:
            continue
        l_i = 0.0
        for k in a_i:
            if method == "yaware":
                denom = sum(math.exp(s[i, t]) for t in a_i)
            elif method == "thr":
                t_ik = [t for t in a_i if t != k and w[i, t] < w[i, k]]
                denom = math.exp(s[i, k]) + sum(math.exp(s[i, t]) for t in t_ik)
            else:
                denom = sum(math.exp(s[i, t] * (1 - w[i, t])) for t in a_i if t != k)
            l_i -= w[i, k] / w_sum * math.log(math.exp(s[i, k]) / denom)
        total += l_i
    return total / n


def loop_reference(method: str, z: np.ndarray, w: np.ndarray, tau: float, mean: bool = False) -> float:
    n = len(z)
    s = z @ z.T / tau
    total = 0.0
    for i in range(n):
        m_i = max(s[i, j] for j in range(n))
        a_i = [j for j in range(n) if j != i]
        w_sum = sum(w[i, t] for t in a_i)
        if method == "yaware":
            d_i = sum(math.exp(s[i, j] - m_i) for j in a_i)
        elif method == "exp":
            d_i = sum(math.exp((s[i, j] - m_i) * (1 - w[i, j])) for j in a_i)
        else:
            d_i = 0.0
            for j in a_i:
                c_ij = sum(1 for k in range(n) if w[i, j] > w[j, k])
                d_i += math.exp(s[i, j] - m_i) * (c_ij / n if mean else c_ij)
        total += -sum(w[i, k] / w_sum * ((s[i, k] - m_i) - math.log(d_i)) for k in a_i)
    return (tau / 0.07) * total / n


def random_batch(batch: int, views: int, dim: int, seed: int, tied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(batch, views, dim, generator=gen, dtype=torch.float64), dim=-1)
    if tied:
        ages = torch.tensor([20.0, 23.0, 27.0])[torch.randint(0, 3, (batch,), generator=gen)].double()
    else:
        ages = 20 + 60 * torch.rand(batch, generator=gen, dtype=torch.float64)
    return feats, ages


@pytest.mark.parametrize("kernel", ["rbf", "gaussian", "cauchy"])
@pytest.mark.parametrize("method", ["yaware", "thr", "exp"])
@pytest.mark.parametrize("tied", [False, True])
def test_paper_matches_loop(kernel: str, method: str, tied: bool) -> None:
    sigma = 5.0 if kernel != "cauchy" else 0.05
    feats, ages = random_batch(7, 2, 4, seed=len(kernel) * 7 + len(method) + int(tied), tied=tied)
    z, y = rows(feats, ages)
    w = np.array([[kernel_np(kernel, yi - yj, sigma) for yj in y] for yi in y])
    expected = loop_paper(method, z, w, TAU)
    value = KernelizedContrastiveLoss(method, kernel, sigma=sigma, temperature=TAU)(feats, ages)
    assert value.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("kernel", ["rbf", "gaussian", "cauchy"])
@pytest.mark.parametrize("method", ["yaware", "thr", "exp"])
@pytest.mark.parametrize("tied", [False, True])
def test_reference_matches_loop(kernel: str, method: str, tied: bool) -> None:
    sigma = 5.0 if kernel != "cauchy" else 0.05
    feats, ages = random_batch(6, 2, 3, seed=17 + len(kernel) + len(method), tied=tied)
    z, y = rows(feats, ages)
    w = np.array([[kernel_np(kernel, yi - yj, sigma) for yj in y] for yi in y])
    expected = loop_reference(method, z, w, TAU)
    loss = KernelizedContrastiveLoss(method, kernel, sigma=sigma, temperature=TAU, formulation="reference")
    assert loss(feats, ages).item() == pytest.approx(expected, rel=1e-9)
    if method == "thr":
        mean_loss = KernelizedContrastiveLoss(
            method, kernel, sigma=sigma, temperature=TAU, formulation="reference", threshold_reduction="mean"
        )
        assert mean_loss(feats, ages).item() == pytest.approx(loop_reference(method, z, w, TAU, mean=True), rel=1e-9)


def test_sorted_threshold_matches_loop_with_many_ties_three_views() -> None:
    feats, ages = random_batch(9, 3, 5, seed=3, tied=True)
    z, y = rows(feats, ages)
    w = np.array([[kernel_np("rbf", yi - yj, 2.0) for yj in y] for yi in y])
    value = KernelizedContrastiveLoss("thr", "rbf", sigma=2.0, temperature=0.5)(feats, ages)
    assert value.item() == pytest.approx(loop_paper("thr", z, w, 0.5), rel=1e-9)


def test_custom_kernel_callable_and_base_temperature() -> None:
    feats, ages = random_batch(5, 2, 3, seed=11, tied=False)
    z, y = rows(feats, ages)

    def triangle(a: torch.Tensor) -> torch.Tensor:
        return (1 - (a[:, None] - a[None, :]).abs() / 30).clamp_min(0)

    w = np.array([[max(0.0, 1 - abs(yi - yj) / 30) for yj in y] for yi in y])
    for method in ("yaware", "thr", "exp"):
        loss = KernelizedContrastiveLoss(method, triangle, temperature=0.2, base_temperature=0.05)
        assert loss(feats, ages).item() == pytest.approx(4.0 * loop_paper(method, z, w, 0.2), rel=1e-9)


def test_reference_uses_cauchy_gamma_equal_sigma_and_explicit_gamma() -> None:
    feats, ages = random_batch(4, 2, 3, seed=5, tied=False)
    by_sigma = KernelizedContrastiveLoss("exp", "cauchy", sigma=0.3)(feats, ages)
    by_gamma = KernelizedContrastiveLoss("exp", "cauchy", sigma=7.0, gamma=0.3)(feats, ages)
    assert by_sigma.item() == pytest.approx(by_gamma.item(), rel=1e-12)
    assert torch.allclose(age_kernel(ages, "cauchy", sigma=0.3), 1 / (1 + 0.3 * (ages[:, None] - ages[None]) ** 2))


# ---------------------------------------------------------------------------------------------
# Relations between losses.
# ---------------------------------------------------------------------------------------------
def equality_kernel(a: torch.Tensor) -> torch.Tensor:
    return (a[:, None] == a[None, :]).to(a.dtype)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_yaware_with_equality_kernel_is_supcon(views: int) -> None:
    """y-aware with w_ij = 1[y_i = y_j] equals SupCon on the age labels, exactly.

    With that kernel, sum_{t in A(i)} w_it = |P(i)| (the rows j != i with y_j = y_i, other views
    included) and w_ik = 1[k in P(i)], so Eq. 9 becomes
        L_i = -sum_{k in A(i)} (1[k in P(i)] / |P(i)|) log(exp(s_ik) / sum_{t in A(i)} exp(s_it))
            = -(1 / |P(i)|) sum_{p in P(i)} log(exp(s_ip) / sum_{a in A(i)} exp(s_ia)),
    which is Khosla et al.'s L^sup_out for anchor i. An anchor with no positive has |P(i)| = 0 and
    contributes 0 to both. Both average over the N anchors, so the losses are equal; the reference
    formulation multiplies by tau / 0.07, i.e. equals SupCon with base_temperature = 0.07.
    """
    gen = torch.Generator().manual_seed(views)
    feats = F.normalize(torch.randn(8, views, 4, generator=gen, dtype=torch.float64), dim=-1)
    ages = torch.tensor([20, 20, 21, 22, 22, 22, 30, 41], dtype=torch.float64)
    labels = ages.long()
    yaware = KernelizedContrastiveLoss("yaware", equality_kernel, temperature=TAU)(feats, ages)
    supcon = SupConLoss(temperature=TAU)(feats, labels)
    assert yaware.item() == pytest.approx(supcon.item(), rel=1e-12)
    ref = KernelizedContrastiveLoss("yaware", equality_kernel, temperature=TAU, formulation="reference")(feats, ages)
    assert ref.item() == pytest.approx(SupConLoss(TAU, base_temperature=0.07)(feats, labels).item(), rel=1e-12)


def test_threshold_with_equality_kernel_is_epsilon_zero_supinfonce() -> None:
    """L^thr with w_ij = 1[y_i = y_j] equals epsilon-SupInfoNCE at epsilon = 0.

    For a positive k (w_ik = 1), T(i, k) = {t : w_it < 1} = the negatives Ng(i), so the term is
    log(exp(s_ik) / (exp(s_ik) + sum_{n in Ng(i)} exp(s_in))); non-positives have weight 0; the
    weights normalise by |P(i)|. That is Eq. 2 with exp(s_ip - 0).
    """
    feats, _ = random_batch(8, 2, 4, seed=9, tied=False)
    ages = torch.tensor([20, 20, 21, 22, 22, 22, 30, 41], dtype=torch.float64)
    thr = KernelizedContrastiveLoss("thr", equality_kernel, temperature=TAU)(feats, ages)
    eps0 = EpsilonSupInfoNCE(epsilon=0.0, temperature=TAU)(feats, ages.long())
    assert thr.item() == pytest.approx(eps0.item(), rel=1e-12)


def test_gaussian_kernel_changes_exp_but_not_normalised_yaware() -> None:
    """The gaussian kernel is rbf / (sqrt(2 pi) sigma): y-aware normalises the weights so it is
    unchanged, L^exp is not (its (1 - w) factor sees the scale)."""
    feats, ages = random_batch(6, 2, 3, seed=21, tied=False)
    for method, same in (("yaware", True), ("exp", False)):
        rbf = KernelizedContrastiveLoss(method, "rbf", sigma=3.0)(feats, ages).item()
        gauss = KernelizedContrastiveLoss(method, "gaussian", sigma=3.0)(feats, ages).item()
        assert (rbf == pytest.approx(gauss, rel=1e-12)) is same
