"""DistributedDataParallel on CPU: 2 gloo processes against one process on the same global batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import EPS32, write_cache

from brainage.losses import KernelizedContrastiveLoss
from brainage.models import BrainAgeNet
from brainage.training import TrainConfig, train
from brainage.training.distributed import DistContext, cleanup, wrap_model
from brainage.training.trainer import contrastive_loss

pytestmark = pytest.mark.slow

WORLD = 2
GLOBAL_B = 8
VIEWS = 2


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(GLOBAL_B, 1, 16, 16, 16, generator=g)
    ages = torch.tensor([8.0, 9.5, 21.0, 22.0, 40.0, 41.5, 70.0, 72.0])
    return x, ages


def make_model() -> BrainAgeNet:
    torch.manual_seed(5)
    return BrainAgeNet(0.125).train()


def criterion() -> KernelizedContrastiveLoss:
    return KernelizedContrastiveLoss(method="thr", formulation="reference")


def _worker(rank: int, init_file: str, out_dir: str, cache: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    ctx = DistContext(rank=rank, world_size=WORLD, local_rank=rank)
    model = make_model()
    ddp = wrap_model(model, ctx, torch.device("cpu"))
    x, ages = global_batch()
    local = slice(rank * GLOBAL_B // WORLD, (rank + 1) * GLOBAL_B // WORLD)
    loss = contrastive_loss(ddp, x[local], ages[local], criterion(), VIEWS, None, ctx)
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    np.savez(Path(out_dir) / f"rank{rank}.npz", loss=loss.detach().numpy(), **grads)

    # the whole trainer under DDP (sampler split, gathered loss, barriers, rank-0 files)
    config = TrainConfig(method="exp", epochs=2, batch_size=8, width=0.125, lr=1e-3, device="cpu", progress=False)
    train(config, cache, Path(out_dir) / "run", ctx)
    cleanup(ctx)


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    cache = write_cache(tmp_path / "cache")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), str(cache)), nprocs=WORLD, join=True)

    # One process, same global batch. BatchNorm normalises each process's half separately under
    # DDP (no SyncBatchNorm on CPU), so the reference encodes the halves separately too, with the
    # workers' one thread, so that every kernel sums in the workers' order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_model()
        x, ages = global_batch()
        half = GLOBAL_B // WORLD
        z = torch.cat([model(x[:half]), model(x[half:])])
        features = torch.stack([z] * VIEWS, dim=1)
        loss = criterion()(features, ages)
        loss.backward()
    finally:
        torch.set_num_threads(threads)

    # Each rank's features, loss and backward repeat the reference's operations on the same values:
    # the gathered copies sum to exactly 2x a rank's gradient, halved exactly again by DDP's mean.
    # What differs is where the two halves' parameter gradients are added (DDP's all-reduce, autograd's
    # accumulation): one float32 rounding, at most EPS32 x (|g_half1| + |g_half2|) <= 2 EPS32 x scale.
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    for rank in range(WORLD):
        with np.load(tmp_path / f"rank{rank}.npz") as result:
            np.testing.assert_allclose(result["loss"], loss.item(), rtol=EPS32)
            for name, p in model.named_parameters():
                np.testing.assert_allclose(result[name], p.grad.numpy(), rtol=0, atol=2 * EPS32 * scale, err_msg=name)

    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv", "model.pt"]
    assert '"world_size": 2' in (run / "config.json").read_text()
    rows = (run / "metrics.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[2])) for r in rows)
