"""benchmarks/gpu_check.py in its tiny CPU mode: the whole command runs, its FLOP count is the
convolutions' and linear layers' by formula, and its derived columns follow from its measurements."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from torch import nn

from brainage.training import TrainConfig
from brainage.training.checkpoint import build_model

pytestmark = pytest.mark.slow


def formula_flops(config: TrainConfig, grid: tuple[int, int, int], batch: int) -> int:
    """Multiply-adds x 2 of every Conv3d and Linear for one forward and backward pass.

    Forward: ``2 * C_in / groups * C_out * k^3`` per output voxel (``2 * in * out`` per row for a
    Linear). Backward: the same again for the weight gradient and for the input gradient, except
    for the first layer, whose input (the volumes) needs none.
    """
    model = build_model(config).train()
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, o.shape))
        for m in model.modules()
        if isinstance(m, (nn.Conv3d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(batch, 1, *grid))
    for h in hooks:
        h.remove()
    total = 0
    for module, shape in shapes.items():
        if isinstance(module, nn.Conv3d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.kernel_size[2]
            forward = 2 * module.in_channels // module.groups * module.out_channels * k * shape[0] * shape[2:].numel()
        else:
            forward = 2 * module.in_features * module.out_features * shape[0]
        total += forward * (2 if module is model.encoder.conv1 else 3)
    return total


def test_tiny_mode_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--tiny",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["run"], r["method"]) for r in rows] == [
        ("defaults", "l1"),
        ("defaults", "exp"),
        ("fp32", "l1"),
        ("fp32", "exp"),
        ("reference loop", "exp"),
    ]
    size = report["size"]
    grid, batch = tuple(size["grid"]), size["batch"]
    single = formula_flops(TrainConfig(method="exp", width=size["width"]), grid, batch)
    for row in rows:
        assert row["flops_per_step"] == (2 * single if row["stacked_views"] else single), row["run"]
        assert row["samples_per_s"] > 0 and row["step_s"] == pytest.approx(batch / row["samples_per_s"], rel=1e-2)
        assert row["tflops"] == pytest.approx(row["flops_per_step"] / row["step_s"] / 1e12)
        assert row["recipe_hours"] == pytest.approx(300 * (3227 // 32) * 32 / row["samples_per_s"] / 3600)
        assert row["peak_fraction"] is None and row["peak_gib"] is None  # no GPU, no bf16 peak
    assert not any(r["bf16"] or r["channels_last"] for r in rows)  # the CPU defaults: fp32, contiguous
    # The CUDA tests ran (and skip without a GPU), each reported by name.
    tests = report["tests"]
    assert "test_step_loop_does_not_synchronise_per_step" in tests and len(tests) >= 6
    if not torch.cuda.is_available():
        assert set(tests.values()) == {"skipped"}
    for line in ("| CUDA tests (`-m cuda`) |", "| reference loop | L^exp |", "defaults over the reference loop"):
        assert line in result.stdout
