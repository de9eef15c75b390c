"""Training throughput of SimpleConvNet on 28 x 28 Biased-MNIST batches, per width.

Prints images per second (forward + backward + Adam step) and the estimated FLOP per image,
so the reduced default recipe of the debiasing track (docs/debiasing.md) can be sized for a
machine: seconds per run ~ epochs x training images / throughput.

    python benchmarks/debias_throughput.py --widths 0.125 0.25 0.5 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from brainage.debias.models import SimpleConvNet


def conv_flops(width: float, size: int = 28, kernel: int = 7) -> float:
    """Multiply-adds x 2 of the four convolutions for one image, forward only."""
    channels = [3] + [max(1, round(c * width)) for c in (16, 32, 64, 128)]
    return sum(2.0 * size * size * kernel * kernel * a * b for a, b in zip(channels[:-1], channels[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {args.device}, {args.threads} thread(s), batch {args.batch_size}, load average {load:.2f}")
    print(f"{'width':>6} {'channels':>14} {'GFLOP/img f+b':>14} {'img/s':>8}")
    for width in args.widths:
        model = SimpleConvNet(width=width).to(args.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(args.batch_size, 3, 28, 28, device=args.device)
        y = torch.randint(0, 10, (args.batch_size,), device=args.device)

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

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
        channels = "-".join(str(max(1, round(c * width))) for c in (16, 32, 64, 128))
        print(f"{width:>6g} {channels:>14} {3 * conv_flops(width) / 1e9:>14.3f} {rate:>8.0f}")


if __name__ == "__main__":
    main()
