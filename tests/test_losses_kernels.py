"""age_kernel: values by hand, validation messages."""

from __future__ import annotations

import math

import pytest
import torch

from brainage.losses import age_kernel


def test_kernel_values_by_hand() -> None:
    ages = torch.tensor([20.0, 22.0, 26.0])
    # differences: 0, 2, 6 (years); sigma = 2
    rbf = age_kernel(ages, "rbf", sigma=2.0)
    assert rbf[0, 1].item() == pytest.approx(math.exp(-4 / 8), rel=1e-6)
    assert rbf[2, 0].item() == pytest.approx(math.exp(-36 / 8), rel=1e-6)
    assert torch.equal(torch.diagonal(rbf), torch.ones(3))
    gauss = age_kernel(ages, "gaussian", sigma=2.0)
    assert gauss[0, 1].item() == pytest.approx(math.exp(-0.5) / (math.sqrt(2 * math.pi) * 2), rel=1e-6)
    assert gauss[1, 1].item() == pytest.approx(1 / (math.sqrt(2 * math.pi) * 2), rel=1e-6)
    cauchy = age_kernel(ages, "cauchy", sigma=2.0)  # gamma defaults to sigma
    assert cauchy[0, 1].item() == pytest.approx(1 / (1 + 2 * 4), rel=1e-6)
    assert cauchy[0, 2].item() == pytest.approx(1 / (1 + 2 * 36), rel=1e-6)
    cauchy_g = age_kernel(ages, "cauchy", sigma=2.0, gamma=0.5)
    assert cauchy_g[1, 2].item() == pytest.approx(1 / (1 + 0.5 * 16), rel=1e-6)
    assert torch.equal(rbf, rbf.T) and torch.equal(cauchy, cauchy.T)


def test_kernel_dtype() -> None:
    assert age_kernel(torch.tensor([1, 2, 3]), "rbf").dtype == torch.float32
    assert age_kernel(torch.tensor([1.0, 2.0], dtype=torch.float64), "rbf").dtype == torch.float64


def test_kernel_validation_messages() -> None:
    ages = torch.tensor([20.0, 30.0])
    with pytest.raises(ValueError, match="'rbf', 'gaussian', 'cauchy'"):
        age_kernel(ages, "laplace")
    with pytest.raises(ValueError, match=r"\(B,\), got \(2, 1\)"):
        age_kernel(ages[:, None], "rbf")
    with pytest.raises(ValueError, match="sigma"):
        age_kernel(ages, "rbf", sigma=0.0)
    with pytest.raises(ValueError, match="gamma only applies"):
        age_kernel(ages, "rbf", gamma=1.0)
    with pytest.raises(ValueError, match="finite"):
        age_kernel(torch.tensor([20.0, math.nan]), "rbf")
