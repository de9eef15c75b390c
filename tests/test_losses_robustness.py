"""Every loss: gradcheck, batch-permutation invariance, validation messages, degenerate batches and
low-precision inputs (no NaN/inf, float32 results)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from brainage.losses import (
    EnDRegularizer,
    EpsilonSupInfoNCE,
    FairKL,
    KernelizedContrastiveLoss,
    SupConLoss,
    trusted_inputs,
)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # features, ages, labels, bias

KERNELIZED = [(m, f) for m in ("yaware", "thr", "exp") for f in ("paper", "reference")]
NAMES = [f"{m}-{f}" for m, f in KERNELIZED] + ["supcon", "epsilon", "fairkl-paper", "fairkl-reference", "end"]


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A uniform call ``fn(features (B, V, D), ages (B,), labels (B,), bias (B,))`` for each loss."""
    if name in {f"{m}-{f}" for m, f in KERNELIZED}:
        method, formulation = name.split("-")
        loss = KernelizedContrastiveLoss(method, "rbf", sigma=2.0, temperature=0.1, formulation=formulation)
        return lambda x, a, y, b: loss(x, a)
    if name == "supcon":
        return lambda x, a, y, b: SupConLoss(0.1)(x, y)
    if name == "epsilon":
        return lambda x, a, y, b: EpsilonSupInfoNCE(0.25, 0.1)(x, y)
    if name == "fairkl-paper":
        return lambda x, a, y, b: FairKL("paper", variance_eps=0.1)(x, y, b)
    if name == "fairkl-reference":
        return lambda x, a, y, b: FairKL("reference")(x, y, b)
    assert name == "end"
    return lambda x, a, y, b: EnDRegularizer(1.0, 1.0)(
        x.reshape(-1, x.shape[-1]), y.repeat_interleave(x.shape[1]), b.repeat_interleave(x.shape[1])
    )


def random_batch(batch: int, views: int, dim: int, seed: int, dtype: torch.dtype = torch.float64) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(batch, views, dim, generator=gen, dtype=torch.float64), dim=-1).to(dtype)
    ages = torch.tensor([20.0, 23.0, 23.0, 31.0, 45.0, 60.0, 71.0, 80.0], dtype=torch.float64)[:batch]
    labels = torch.tensor([0, 1, 1, 0, 2, 1, 0, 2])[:batch]
    bias = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])[:batch]
    return feats, ages, labels, bias


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name: str) -> None:
    fn = make_loss(name)
    feats, ages, labels, bias = random_batch(6, 2, 3, seed=NAMES.index(name))
    x = feats.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: fn(F.normalize(t, dim=-1), ages, labels, bias), (x,), eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize("name", NAMES)
def test_batch_permutation_invariance(name: str) -> None:
    fn = make_loss(name)
    feats, ages, labels, bias = random_batch(8, 2, 4, seed=100 + NAMES.index(name))
    perm = torch.tensor([5, 2, 7, 0, 3, 1, 6, 4])
    value = fn(feats, ages, labels, bias)
    permuted = fn(feats[perm], ages[perm], labels[perm], bias[perm])
    assert permuted.item() == pytest.approx(value.item(), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_sent_back_to_features_is_contiguous(name: str) -> None:
    """The gradient that leaves the loss must be contiguous: the backward of
    torch.distributed.nn.functional.all_gather on gloo mis-orders a non-contiguous one (found while
    checking the DDP recipe of docs/losses.md), and view-major stacking transposes (B, V, D)."""
    feats, ages, labels, bias = random_batch(6, 3, 4, seed=2)
    leaf = feats.clone().requires_grad_(True)
    seen = []
    x = leaf * 1.0
    x.register_hook(lambda g: seen.append(g.is_contiguous()))
    make_loss(name)(x, ages, labels, bias).backward()
    assert seen == [True]


def test_view_major_stacking_pairs_views_of_the_same_sample() -> None:
    """Swapping the views of sample 0 only changes which row is which view, not the loss; swapping
    features between samples 0 and 1 in one view only does change it (the views are paired per sample)."""
    feats, ages, labels, _ = random_batch(4, 2, 3, seed=1)
    loss = KernelizedContrastiveLoss("yaware")
    swapped_views = feats.clone()
    swapped_views[0] = feats[0].flip(0)
    assert loss(swapped_views, ages).item() == pytest.approx(loss(feats, ages).item(), rel=1e-12)
    crossed = feats.clone()
    crossed[0, 1], crossed[1, 1] = feats[1, 1], feats[0, 1]
    assert abs(loss(crossed, ages).item() - loss(feats, ages).item()) > 1e-3


# ----------------------------------------------------------------------------------------------
# Degenerate batches: finite value and gradient; exact values where the equations give one.
# ----------------------------------------------------------------------------------------------
def degenerate_batches() -> dict[str, Batch]:
    gen = torch.Generator().manual_seed(0)
    one = F.normalize(torch.randn(1, 1, 4, generator=gen), dim=-1)
    same_vec = F.normalize(torch.randn(4, dtype=torch.float32, generator=gen), dim=0)
    return {
        "single-sample-one-view": (one, torch.tensor([40.0]), torch.tensor([0]), torch.tensor([0])),
        "single-sample-two-views": (
            F.normalize(torch.randn(1, 2, 4, generator=gen), dim=-1),
            torch.tensor([40.0]),
            torch.tensor([0]),
            torch.tensor([1]),
        ),
        "one-view": (
            F.normalize(torch.randn(5, 1, 4, generator=gen), dim=-1),
            torch.tensor([20.0, 30, 40, 50, 60]),
            torch.tensor([0, 1, 0, 1, 2]),
            torch.tensor([0, 0, 1, 1, 0]),
        ),
        # No positive: distinct labels, one view, ages so far apart that rbf weights underflow to 0.
        "no-positive": (
            F.normalize(torch.randn(4, 1, 4, generator=gen), dim=-1),
            torch.tensor([0.0, 100, 200, 300]),
            torch.tensor([0, 1, 2, 3]),
            torch.tensor([0, 1, 0, 1]),
        ),
        "identical-features": (
            same_vec.expand(4, 2, 4).clone(),
            torch.tensor([20.0, 30, 40, 50]),
            torch.tensor([0, 0, 1, 1]),
            torch.tensor([0, 1, 0, 1]),
        ),
        "all-equal": (
            F.normalize(torch.randn(4, 2, 4, generator=gen), dim=-1),
            torch.full((4,), 33.0),
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
        ),
        "bias-all-distinct": (
            F.normalize(torch.randn(4, 2, 4, generator=gen), dim=-1),
            torch.tensor([20.0, 30, 40, 50]),
            torch.tensor([0, 0, 1, 1]),
            torch.tensor([0, 1, 2, 3]),
        ),
    }


DEGENERATE = degenerate_batches()


@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_batches_are_finite(name: str, case: str) -> None:
    feats, ages, labels, bias = DEGENERATE[case]
    x = feats.clone().requires_grad_(True)
    value = make_loss(name)(x, ages, labels, bias)
    assert value.dtype == torch.float32 and value.ndim == 0
    assert torch.isfinite(value)
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", [n for n in NAMES if n not in {"fairkl-reference"}])
def test_single_row_gives_zero(name: str) -> None:
    """One sample seen once has no pair at all: every anchor-averaged loss is 0."""
    feats, ages, labels, bias = DEGENERATE["single-sample-one-view"]
    assert make_loss(name)(feats, ages, labels, bias).item() == 0.0


def test_fairkl_reference_single_sample() -> None:
    """B = 1: the only entry is an aligned positive s = 1, other means are 0, the stds are taken as 0
    (the reference code's torch.std is NaN there): (0 - 1)^2 + 0 - 0 + 0 = 1."""
    feats, ages, labels, bias = DEGENERATE["single-sample-two-views"]
    assert FairKL("reference")(feats, labels, bias).item() == pytest.approx(1.0, rel=1e-6)


def test_exact_values_in_degenerate_cases() -> None:
    feats, ages, labels, bias = DEGENERATE["identical-features"]
    n = 8
    # All similarities equal: each log-probability is -log(N - 1), whatever the weights. The float32
    # similarities are then bitwise equal, every shifted logit is exactly 0, and what remains is a
    # float32 log and mean: a few EPS32.
    tol = 8 * float(torch.finfo(torch.float32).eps)
    assert KernelizedContrastiveLoss("yaware")(feats, ages).item() == pytest.approx(math.log(n - 1), rel=tol)
    assert SupConLoss()(feats, labels).item() == pytest.approx(math.log(n - 1), rel=tol)
    feats, ages, labels, bias = DEGENERATE["all-equal"]
    # Equal ages: no row is less similar in age than any positive, T(i, k) is empty, log p = 0.
    assert KernelizedContrastiveLoss("thr")(feats, ages).item() == 0.0
    # Reference threshold: c_ij = 0 everywhere, D_i = 0; such anchors contribute 0 (the reference code gives inf).
    assert KernelizedContrastiveLoss("thr", formulation="reference")(feats, ages).item() == 0.0
    # No anchor has a conflicting group: the FairKL terms are all 0; EnD has no pair of different bias.
    assert FairKL("paper")(feats, labels, bias).item() == 0.0
    assert EnDRegularizer(alpha=0.0)(feats[:, 0], labels, bias).item() == 0.0
    # N = 2 rows: L^exp's A(i) \ {k} is empty, the anchor contributes 0.
    feats, ages, labels, bias = DEGENERATE["single-sample-two-views"]
    assert KernelizedContrastiveLoss("exp")(feats, ages).item() == 0.0


# ----------------------------------------------------------------------------------------------
# Low precision.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_inputs_reduce_in_float32(name: str, dtype: torch.dtype) -> None:
    fn = make_loss(name)
    feats, ages, labels, bias = random_batch(8, 2, 16, seed=7, dtype=torch.float32)
    low = F.normalize(feats.to(dtype), dim=-1)
    x = low.clone().requires_grad_(True)
    value = fn(x, ages.float(), labels, bias)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    reference = fn(feats, ages.float(), labels, bias)
    assert value.item() == pytest.approx(reference.item(), rel=0.05, abs=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_cpu_autocast(name: str, dtype: torch.dtype) -> None:
    fn = make_loss(name)
    _, ages, labels, bias = random_batch(8, 2, 16, seed=3)
    torch.manual_seed(0)
    head = torch.nn.Linear(10, 16)
    inputs = torch.randn(8, 2, 10)
    with torch.autocast("cpu", dtype=dtype):
        value = fn(F.normalize(head(inputs), dim=-1), ages.float(), labels, bias)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    plain = fn(F.normalize(head(inputs), dim=-1), ages.float(), labels, bias)
    assert value.item() == pytest.approx(plain.item(), rel=0.05, abs=0.05)


# ----------------------------------------------------------------------------------------------
# Validation messages.
# ----------------------------------------------------------------------------------------------
CONTRASTIVE = [n for n in NAMES if n != "end"]


@pytest.mark.parametrize("name", CONTRASTIVE)
def test_not_unit_norm_is_an_error(name: str) -> None:
    feats, ages, labels, bias = random_batch(4, 2, 3, seed=0)
    with pytest.raises(ValueError, match="L2-normalised"):
        make_loss(name)(feats * 1.01, ages, labels, bias)
    bad = feats.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="L2-normalised"):
        make_loss(name)(bad, ages, labels, bias)
    second = feats.clone()
    second[:, 1] *= 1.5  # a view the reference FairKL ignores is still checked
    with pytest.raises(ValueError, match="L2-normalised"):
        make_loss(name)(second, ages, labels, bias)


def test_trusted_inputs_skips_value_checks_only() -> None:
    """Inside ``trusted_inputs`` (the training loop) the value checks that read device tensors are
    skipped: the loss of non-unit features is then the plain formula's; shapes are still checked."""
    feats, ages, _, _ = random_batch(4, 2, 3, seed=0, dtype=torch.float32)
    loss = KernelizedContrastiveLoss("exp")
    bad_ages = ages.float().clone()
    bad_ages[0] = math.nan
    with trusted_inputs():
        scaled = loss(feats * 1.01, ages.float())
        loss(feats, bad_ages)
        with pytest.raises(ValueError, match=r"ages must have shape"):
            loss(feats, torch.arange(5.0))
    assert torch.isfinite(scaled)
    with pytest.raises(ValueError, match="L2-normalised"):
        loss(feats * 1.01, ages.float())
    with pytest.raises(ValueError, match="ages must be finite"):
        loss(feats, bad_ages)


def test_unit_norm_tolerance_depends_on_dtype() -> None:
    feats, ages, _, _ = random_batch(4, 2, 3, seed=0, dtype=torch.float32)
    loss = KernelizedContrastiveLoss()
    loss(feats * (1 + 5e-4), ages.float())
    with pytest.raises(ValueError, match="tolerance 1.0e-03"):
        loss(feats * (1 + 5e-3), ages.float())
    loss((feats * (1 + 5e-3)).to(torch.bfloat16), ages.float())  # bf16 tolerance is 2 * 2^-7


def test_shape_errors_name_the_shapes() -> None:
    feats, ages, labels, bias = random_batch(4, 2, 3, seed=0)
    with pytest.raises(ValueError, match=r"ages must have shape \(B,\) = \(4,\) .* \(4, 2, 3\), got \(5,\)"):
        KernelizedContrastiveLoss()(feats, torch.arange(5.0))
    with pytest.raises(ValueError, match=r"\(B, V, D\).*got \(4, 3\)"):
        SupConLoss()(feats[:, 0], labels)
    with pytest.raises(ValueError, match=r"labels must have shape .*got \(4, 1\)"):
        EpsilonSupInfoNCE()(feats, labels[:, None])
    with pytest.raises(ValueError, match=r"bias must have shape .*got \(3,\)"):
        FairKL()(feats, labels, bias[:3])
    with pytest.raises(ValueError, match=r"labels must have shape .*\(8, 3\), got \(4,\)"):
        EnDRegularizer()(feats.reshape(8, 3), labels, bias.repeat(2))
    with pytest.raises(TypeError, match="integer class labels"):
        SupConLoss()(feats, ages)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'yaware', 'thr', 'exp'"):
        KernelizedContrastiveLoss(method="threshold")
    with pytest.raises(ValueError, match="'rbf', 'gaussian', 'cauchy'"):
        KernelizedContrastiveLoss(kernel="laplacian")
    with pytest.raises(ValueError, match="'paper', 'reference'"):
        KernelizedContrastiveLoss(formulation="code")
    with pytest.raises(ValueError, match="'paper', 'reference'"):
        FairKL(formulation="moments")
    with pytest.raises(ValueError, match="'sum', 'mean'"):
        KernelizedContrastiveLoss("thr", formulation="reference", threshold_reduction="max")


def test_misuse_of_options_is_rejected() -> None:
    with pytest.raises(ValueError, match="threshold_reduction='mean' only applies"):
        KernelizedContrastiveLoss("thr", formulation="paper", threshold_reduction="mean")
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonSupInfoNCE(epsilon=-0.1)
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonSupInfoNCE(epsilon=math.inf)
    with pytest.raises(ValueError, match="kld only applies"):
        FairKL("paper", kld=1.0)
    with pytest.raises(ValueError, match="gamma only applies"):
        KernelizedContrastiveLoss(kernel=lambda a: a[:, None] * a[None], gamma=1.0)
    feats, ages, _, _ = random_batch(4, 2, 3, seed=0)
    with pytest.raises(ValueError, match=r"custom kernel must map ages \(4,\) to weights \(4, 4\), got \(4,\)"):
        KernelizedContrastiveLoss(kernel=lambda a: a)(feats, ages)
    with pytest.raises(ValueError, match="non-negative"):
        KernelizedContrastiveLoss(kernel=lambda a: -torch.ones(4, 4, dtype=a.dtype))(feats, ages)
    with pytest.raises(ValueError, match="finite"):
        KernelizedContrastiveLoss()(feats, torch.tensor([20.0, math.inf, 30.0, 40.0]))
