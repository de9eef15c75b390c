"""Training throughput of the Biased-MNIST networks on 28 x 28 batches, per width.

Prints images per second (forward + backward + Adam step) and the FLOP per image (forward
FLOP counted by torch's FLOP counter, x 3 for forward + backward), so the reduced default
recipe of the debiasing track (docs/debiasing.md) can be sized for a machine: seconds per run ~ epochs x training images / throughput, plus the start-up of a
training process (``--startup`` measures it: Python + torch + brainage, and MONAI for
ResNet-18, and the first optimiser, which imports ``torch._dynamo``).

    python benchmarks/debias_throughput.py --widths 0.125 0.25 0.5 1 --threads 1
    python benchmarks/debias_throughput.py --model resnet18 --no-cifar-stem --widths 0.25 --batch-size 128
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time

import torch

from brainage.debias.models import build_model


def measured_flops(model: torch.nn.Module, size: int = 28) -> float:
    """Forward FLOP of one image counted by torch's FLOP counter (any model)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    model.train()
    return float(counter.get_total_flops())


def startup_seconds(model: str, cifar_stem: bool) -> float:
    """Wall seconds of a fresh process that imports what `brainage debias-train` needs and builds one optimiser."""
    code = (
        "import torch, brainage.cli, brainage.debias.steps, brainage.debias.train;"
        "from brainage.debias.models import build_model;"
        f"m = build_model({model!r}, 10, 0.25, 'tanh', {cifar_stem});"
        "torch.optim.Adam(m.parameters())"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simpleconvnet", choices=["simpleconvnet", "resnet18"])
    parser.add_argument(
        "--cifar-stem",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resnet18: CIFAR stem (default) or the ImageNet stem",
    )
    parser.add_argument("--widths", nargs="+", type=float, default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--startup", action="store_true", help="also time the start-up of a training process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    stem = "" if args.model == "simpleconvnet" else (" (CIFAR stem)" if args.cifar_stem else " (ImageNet stem)")
    print(
        f"{args.model}{stem}, device {args.device}, {args.threads} thread(s), batch {args.batch_size}, "
        f"load average {load:.2f}"
    )
    print(f"{'width':>6} {'GFLOP/img f+b':>14} {'img/s':>8}")
    for width in args.widths:
        model = build_model(args.model, 10, width, "none", args.cifar_stem)
        flops = measured_flops(model)  # on the CPU, before the move to the device
        model = model.to(args.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(args.batch_size, 3, 28, 28, device=args.device)
        y = torch.randint(0, 10, (args.batch_size,), device=args.device)

        step = functools.partial(_train_step, model, optimizer, x, y)
        for _ in range(2):
            step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = args.steps * args.batch_size / (time.perf_counter() - start)
        print(f"{width:>6g} {3 * flops / 1e9:>14.3f} {rate:>8.0f}")
    if args.startup:
        print(f"start-up of a training process: {startup_seconds(args.model, args.cifar_stem):.1f} s")


if __name__ == "__main__":
    main()
