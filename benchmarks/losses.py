"""Time and peak memory of every loss in ``brainage.losses``, next to the direct O(N^3) L^thr.

Run from the repository root::

    python benchmarks/losses.py                      # N = 64, 512, 2048 on CPU (and CUDA if present)
    python benchmarks/losses.py --sizes 64 512 --devices cpu

``N`` is the number of embeddings ``V * B`` (``V = 2`` views, ``D = 128``). Each cell is one forward
plus backward pass on random unit-norm features and ages in [20, 80] years.

- time: fastest of at least ``--repeats`` timed runs (more, up to 20, until 0.5 s were timed), after
  the first run; the minimum is the least disturbed by other processes on a shared machine.
- peak memory, CPU: increase of the resident-set high-water mark (``getrusage(...).ru_maxrss``) of a
  fresh Python process during the first forward+backward; it includes allocator overhead, so
  small sizes read close to 0 and the numbers are an upper bound on live tensor memory.
- peak memory, CUDA: increase of ``torch.cuda.max_memory_allocated`` during the first run.

The direct L^thr materialises the ``(N, N, N)`` threshold mask, as the public reference code does;
it is skipped when its estimated footprint exceeds the memory available (or runs out of CUDA
memory), and the reason is printed. The chunked direct form does the same O(N^3) work on blocks of
anchors with activation checkpointing, so its memory is O(chunk x N^2) and the time ratio is printed
at every N. Both are compared with the sorted O(N^2)-memory implementation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainage.losses import (
    EnDRegularizer,
    EpsilonSupInfoNCE,
    FairKL,
    KernelizedContrastiveLoss,
    SupConLoss,
    age_kernel,
)

VIEWS = 2
DIM = 128
MIN_TIMED_SECONDS = 0.5
MAX_REPEATS = 20
DIRECT = "thr-paper-direct-O(N^3)"
CHUNKED = "thr-paper-direct-chunked"
ANCHOR_CHUNK = 64
LOSSES = [f"{m}-{f}" for m in ("yaware", "thr", "exp") for f in ("paper", "reference")] + [
    "supcon",
    "epsilon-supinfonce",
    "fairkl-paper",
    "fairkl-reference",
    "end",
    DIRECT,
    CHUNKED,
]


def _direct_logprob(s: torch.Tensor, w: torch.Tensor, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of log(e^s_ik / (e^s_ik + sum_{t in T(i, k)} e^s_it)), T(i, k) = {t != i : w_it < w_ik}."""
    n = s.shape[0]
    idx = torch.arange(n, device=s.device)[rows]
    s_r, w_r = s[rows], w[rows]
    off = idx[:, None] != torch.arange(n, device=s.device)[None, :]
    shift = s_r.max(dim=1, keepdim=True).values.detach()
    es = torch.exp(s_r - shift)
    below = (w_r[:, None, :] < w_r[:, :, None]) & off[:, None, :]
    repulsion = torch.where(below, es[:, None, :], torch.zeros((), dtype=s.dtype, device=s.device)).sum(-1)
    return (s_r - shift) - torch.log(es + repulsion)


def direct_threshold(
    features: torch.Tensor, ages: torch.Tensor, sigma: float = 2.0, tau: float = 0.1, chunk: int | None = None
) -> torch.Tensor:
    """Paper L^thr computed directly with the (N, N, N) threshold mask, whole or ``chunk`` anchors at a time.

    With ``chunk`` each block is checkpointed (recomputed in the backward pass), so the peak is
    O(chunk x N^2) while the work stays O(N^3).
    """
    batch, views, dim = features.shape
    z = features.transpose(0, 1).reshape(views * batch, dim)
    s = z @ z.T / tau
    w = age_kernel(ages, "rbf", sigma).repeat(views, views)
    n = s.shape[0]
    if chunk is None:
        logprob = _direct_logprob(s, w, slice(0, n))
    else:
        from torch.utils.checkpoint import checkpoint

        logprob = torch.cat(
            [
                checkpoint(_direct_logprob, s, w, slice(start, start + chunk), use_reentrant=False)
                for start in range(0, n, chunk)
            ]
        )
    w_pos = w * ~torch.eye(n, dtype=torch.bool, device=s.device)
    coef = w_pos / w_pos.sum(dim=1, keepdim=True)
    return -(coef * logprob).sum(dim=1).mean()


def direct_bytes(n: int) -> int:
    """Estimated peak of ``direct_threshold`` forward+backward: bool mask, float product, its gradient."""
    return n**3 * (1 + 4 + 4)


def available_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def make_call(name: str, n: int, device: str):
    """Return ``(fn, leaf)``: ``fn()`` runs the loss on fixed random inputs of N = n rows."""
    batch = n // VIEWS
    gen = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(batch, VIEWS, DIM, generator=gen), dim=-1).to(device).requires_grad_(True)
    ages = (20 + 60 * torch.rand(batch, generator=gen)).to(device)
    labels = torch.randint(0, 10, (batch,), generator=gen).to(device)
    bias = torch.randint(0, 2, (batch,), generator=gen).to(device)
    if name == DIRECT:
        return (lambda: direct_threshold(feats, ages)), feats
    if name == CHUNKED:
        return (lambda: direct_threshold(feats, ages, chunk=ANCHOR_CHUNK)), feats
    if name.split("-")[0] in {"yaware", "thr", "exp"}:
        method, formulation = name.split("-")
        loss = KernelizedContrastiveLoss(method, "rbf", sigma=2.0, temperature=0.1, formulation=formulation)
        return (lambda: loss(feats, ages)), feats
    if name == "supcon":
        return (lambda: SupConLoss(0.1)(feats, labels)), feats
    if name == "epsilon-supinfonce":
        return (lambda: EpsilonSupInfoNCE(0.25, 0.1)(feats, labels)), feats
    if name.startswith("fairkl"):
        fairkl = FairKL(name.split("-")[1])
        return (lambda: fairkl(feats, labels, bias)), feats
    end = EnDRegularizer(1.0, 1.0)
    flat = lambda: feats.transpose(0, 1).reshape(n, DIM)  # noqa: E731
    return (lambda: end(flat(), labels.repeat(VIEWS), bias.repeat(VIEWS))), feats


def measure(name: str, n: int, device: str, repeats: int) -> dict:
    """One cell: peak memory of the first forward+backward, then the fastest of the timed runs."""
    fn, leaf = make_call(name, n, device)

    def step() -> float:
        leaf.grad = None
        value = fn()
        value.backward()
        return float(value)

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        value = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        value = step()
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    times: list[float] = []
    while len(times) < repeats or (repeats and sum(times) < MIN_TIMED_SECONDS and len(times) < MAX_REPEATS):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {
        "loss": name,
        "n": n,
        "device": device,
        "time_ms": 1000 * min(times) if times else math.nan,
        "peak_mib": peak / 2**20,
        "value": value,
    }


def warm_up(device: str) -> None:
    """Load the kernels every loss uses on a tiny batch, so the first measured run does not pay for it."""
    for name in LOSSES:
        measure(name, 8, device, repeats=0)


def run_cell(name: str, n: int, device: str, repeats: int) -> dict | None:
    """One cell's result, or None when CUDA ran out of memory."""
    if device == "cuda":
        try:
            return measure(name, n, device, repeats)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None
    cmd = [sys.executable, __file__, "--child", name, str(n), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"benchmark cell {name} N={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 2048], help="N = V * B rows")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, cuda if present)")
    parser.add_argument("--repeats", type=int, default=3, help="minimum timed runs per cell after the first")
    parser.add_argument("--child", nargs=3, metavar=("LOSS", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        name, n, repeats = args.child[0], int(args.child[1]), int(args.child[2])
        warm_up("cpu")
        print(json.dumps(measure(name, n, "cpu", repeats)))
        return

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load}; "
        f"V = {VIEWS}, D = {DIM}"
    )
    print(
        "time = fastest forward+backward; peak memory: CPU = ru_maxrss increase of a fresh process, "
        "CUDA = torch.cuda.max_memory_allocated increase"
    )
    header = f"{'device':<6} {'N':>5}  {'loss':<26} {'time (ms)':>10} {'peak (MiB)':>11}  note"
    for device in devices:
        if device == "cuda":
            warm_up("cuda")
        print()
        print(header)
        print("-" * len(header))
        for n in args.sizes:
            results = {}
            for name in LOSSES:
                note = ""
                if name == DIRECT and direct_bytes(n) > available_bytes(device):
                    print(
                        f"{device:<6} {n:>5}  {name:<26} {'skipped':>10} {'':>11}  needs ~{direct_bytes(n) / 2**30:.1f} "
                        f"GiB for the N^3 mask, {available_bytes(device) / 2**30:.1f} GiB available"
                    )
                    continue
                r = run_cell(name, n, device, args.repeats)
                if r is None:
                    print(f"{device:<6} {n:>5}  {name:<26} {'skipped':>10} {'':>11}  out of CUDA memory")
                    continue
                results[name] = r
                if name in (DIRECT, CHUNKED) and "thr-paper" in results:
                    ref = results["thr-paper"]
                    diff = abs(r["value"] - ref["value"]) / max(abs(ref["value"]), 1e-12)
                    memory = (
                        f"{r['peak_mib'] / ref['peak_mib']:.1f}x less memory"
                        if ref["peak_mib"] >= 1.0
                        else "memory below RSS resolution"
                    )
                    note = (
                        f"value rel. diff vs sorted {diff:.1e}; sorted is {r['time_ms'] / ref['time_ms']:.1f}x "
                        f"faster, {memory}"
                    )
                print(
                    f"{device:<6} {n:>5}  {name:<26} {r['time_ms']:>10.2f} {r['peak_mib']:>11.1f}  {note}", flush=True
                )


if __name__ == "__main__":
    main()
