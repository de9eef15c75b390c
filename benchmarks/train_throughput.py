"""Training throughput of the brain-age network, separated from the data loader's.

Run from the repository root::

    python benchmarks/train_throughput.py                                   # the default workflow setting
    python benchmarks/train_throughput.py --grid 61 73 61 --width 0.25      # OpenBHB VBM / 2
    python benchmarks/train_throughput.py --grid 121 145 121 --width 1 --batch 32 --device cuda

Two numbers:

- **training samples/s**: subjects per second through one optimisation step (forward,
  contrastive or L1 loss, backward, Adam step) with the whole training set already in device
  memory as float16, exactly as :func:`brainage.training.train` runs it: identical views computed
  once and repeated (``--stacked-views`` runs the network on all ``V * B`` copies instead, as the
  reference code does), bf16 autocast and ``channels_last_3d`` on CUDA under ``auto``.
  Median over ``--steps`` timed steps after ``--warmup`` steps.
- **loader volumes/s**: the streaming path that is used when the set does not fit in device
  memory: random batches read from a float16 ``.npy`` memory map, checked, and copied to the
  device. The file is written just before, so it is read from the page cache: an upper bound
  for a cold disk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainage.device import resolve_device
from brainage.losses import trusted_inputs
from brainage.training.checkpoint import build_model
from brainage.training.config import TrainConfig
from brainage.training.data import VolumeStore
from brainage.training.trainer import (
    autocast_context,
    contrastive_loss,
    make_criterion,
    make_optimizer,
    regression_loss,
    use_channels_last,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_rate(
    config: TrainConfig, grid: tuple[int, int, int], n: int, steps: int, warmup: int, stacked_views: bool
) -> dict:
    device = resolve_device(config.device)
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    channels_last = use_channels_last(config, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(config, model.parameters())
    criterion = make_criterion(config)
    volumes = torch.randn((n, *grid), device=device).to(torch.float16)
    ages = torch.rand(n, device=device) * 70 + 10
    amp = autocast_context(config, device)
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(warmup + steps):
        index = torch.randperm(n, generator=g)[: config.batch_size].to(device)
        _sync(device)
        start = time.perf_counter()
        x = volumes[index].unsqueeze(1).float()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with amp, trusted_inputs():
            if criterion is None:
                loss, _ = regression_loss(model, x, (ages[index] - 40) / 20)
            elif stacked_views:
                b = x.shape[0]
                z = model(torch.cat([x] * config.views)).view(config.views, b, -1).transpose(0, 1)
                loss = criterion(z, ages[index])
            else:
                loss = contrastive_loss(model, x, ages[index], criterion, config.views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    out = {"samples_per_s": config.batch_size / median, "step_s": median}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def loader_rate(grid: tuple[int, int, int], n: int, batch: int, batches: int, device: torch.device) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "volumes.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *grid))
        rng = np.random.default_rng(0)
        for i in range(n):
            array[i] = rng.standard_normal(grid, dtype=np.float32)
        array.flush()
        del array
        store = VolumeStore(np.load(path, mmap_mode="r"), device, resident=False, name="benchmark")
        g = torch.Generator().manual_seed(1)
        store.batch(torch.randperm(n, generator=g)[:batch])
        _sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            store.batch(torch.randperm(n, generator=g)[:batch])
        _sync(device)
        return batch * batches / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grid",
        type=int,
        nargs=3,
        default=[41, 49, 41],
        metavar=("X", "Y", "Z"),
        help="volume grid (default: the workflow default, OpenBHB VBM / 3)",
    )
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=32, help="subjects per step")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--method", default="exp", help="exp, thr, yaware or l1 (default exp)")
    parser.add_argument("--formulation", default="reference")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--n", type=int, default=256, help="volumes held in memory (default 256)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--stacked-views", action="store_true", help="run the network on all V*B copies")
    parser.add_argument("--loader-batches", type=int, default=20, help="0 skips the loader measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        method=args.method,
        width=args.width,
        batch_size=args.batch,
        views=args.views,
        formulation=args.formulation,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
    )
    grid = tuple(args.grid)
    device = resolve_device(config.device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "torch": torch.__version__,
        "grid": list(grid),
        "width": args.width,
        "batch": args.batch,
        "views": args.views,
        "method": args.method,
        "stacked_views": args.stacked_views,
        "bf16": config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"),
        "channels_last": use_channels_last(config, device),
    }
    result.update(training_rate(config, grid, max(args.n, args.batch), args.steps, args.warmup, args.stacked_views))
    if args.loader_batches:
        result["loader_volumes_per_s"] = loader_rate(
            grid, max(args.n, args.batch), args.batch, args.loader_batches, device
        )
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['device']}, torch {result['torch']}: grid {'x'.join(map(str, grid))}, width {args.width}, "
        f"batch {args.batch} x {args.views} views, {args.method}, bf16 {result['bf16']}, "
        f"channels_last {result['channels_last']}, {'stacked views' if args.stacked_views else 'one forward'}"
    )
    print(
        f"  training: {result['samples_per_s']:.1f} samples/s ({result['step_s'] * 1000:.0f} ms per step)"
        + (f", peak {result['peak_gib']:.1f} GiB" if "peak_gib" in result else "")
    )
    if "loader_volumes_per_s" in result:
        print(f"  loader (memory map -> device): {result['loader_volumes_per_s']:.0f} volumes/s")


if __name__ == "__main__":
    main()
