"""One command that checks the CUDA path and measures it, for the first GPU at hand.

Run from the repository root on a machine with one CUDA GPU (needs torch with CUDA, monai,
numpy, pandas, and pytest for the CUDA tests; about 3 minutes on one H100)::

    python benchmarks/gpu_check.py                  # the OpenBHB grid, prints a Markdown table
    python benchmarks/gpu_check.py --json out.json  # also writes the figures
    python benchmarks/gpu_check.py --tiny           # a 16^3 grid on whatever device (the CPU here)

It prints:

- the device, torch, CUDA and cuDNN versions;
- the CUDA tests (``pytest -m cuda tests/test_training_cuda.py``), passed or failed, each;
- training samples/s at 121x145x121, width 1, batch 32 x 2 identical views, for L1 and L^exp,
  through :func:`brainage.training.train` itself (the second of two epochs of 8 steps: the
  first one tunes cuDNN): once with the defaults (on CUDA: bf16 autocast, channels_last_3d,
  data on the device) and once in fp32 (convolutions in TF32, PyTorch's default); and the reference code's
  way in the same run (both views through the network, fp32, contiguous layout, every batch
  copied from host memory, the loss read back every step) for the ratio;
- TFLOP/s: the FLOPs of one step's convolutions and matrix products, forward and backward
  (counted by ``torch.utils.flop_counter`` on the meta device), over the measured step time,
  and their fraction of the card's dense bf16 peak; peak GPU memory; and the paper's full
  recipe (300 epochs of the 3,227 training subjects, 100 steps of 32) projected from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brainage.device import resolve_device
from brainage.training import TrainConfig, train
from brainage.training.checkpoint import build_model
from brainage.training.trainer import make_criterion, make_optimizer

PAPER_EPOCHS = 300
PAPER_SUBJECTS = 3227
"""The paper's recipe: 300 epochs over the OpenBHB training split (docs/training.md)."""

BF16_PEAK_TFLOPS = {  # dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets
    "H200 NVL": 835.0,
    "H200": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.5,
    "H100": 989.4,  # SXM5 (the name reads "NVIDIA H100 80GB HBM3")
    "A100": 312.0,
}

FULL = {"grid": (121, 145, 121), "width": 1.0, "batch": 32, "steps": 8}
TINY = {"grid": (16, 16, 16), "width": 0.125, "batch": 8, "steps": 3}


def bf16_peak(name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


def step_flops(config: TrainConfig, grid: tuple[int, int, int], batch: int) -> float:
    """Convolution and matrix-product FLOPs of one forward and backward pass of ``batch`` volumes."""
    model = build_model(config).to("meta").train()
    x = torch.empty((batch, 1, *grid), device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    return float(counter.get_total_flops())


def device_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device=props.name,
            capability=f"sm_{props.major}{props.minor}",
            sms=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
        )
    else:
        info.update(device=f"CPU ({torch.get_num_threads()} threads)")
    return info


def run_cuda_tests(timeout: float) -> dict:
    """``pytest -m cuda`` on tests/test_training_cuda.py: {test name: outcome}, or why it did not run."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "--noconftest",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(REPO / "tests" / "test_training_cuda.py"),
        ]
        try:
            result = subprocess.run(
                command,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                },
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if not report.is_file():
            return {"error": (result.stdout + result.stderr).strip().splitlines()[-1:] or ["pytest did not run"]}
        outcomes = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            outcome = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
            outcomes[case.get("name")] = outcome
        return outcomes


def write_cache(root: Path, n: int, grid: tuple[int, int, int]) -> Path:
    """A training cache (the preprocessing's format, train split only) of random float16 volumes."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    volumes = np.lib.format.open_memmap(root / "train.npy", mode="w+", dtype=np.float16, shape=(n, *grid))
    for i in range(n):
        volumes[i] = rng.standard_normal(grid, dtype=np.float32)
    volumes.flush()
    del volumes
    ages = np.round(rng.uniform(6, 86, n), 1)
    lines = ["row\tparticipant_id\tage\tsite\tsiteXacq"]
    lines += [f"{i}\tsub{i:04d}\t{ages[i]}\ts{i % 4}\ts{i % 4}x1" for i in range(n)]
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    (root / "cache.json").write_text(json.dumps({"shape": list(grid), "signature": "gpu_check"}))
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def trainer_rate(config: TrainConfig, cache: Path, out: Path, device: torch.device) -> dict:
    """Samples/s of the second epoch of :func:`train` (the first one tunes cuDNN)."""
    _reset_peak(device)
    train(config, cache, out)
    row = (out / "metrics.csv").read_text().splitlines()[-1].split(",")
    seconds, rate = float(row[4]), float(row[5])
    if not np.isfinite(float(row[2])):
        raise RuntimeError(f"{config.method}: the loss is {row[2]}")
    return {
        "samples_per_s": rate,
        "step_s": config.batch_size / rate,
        "epoch_s": seconds,
        "peak_gib": _peak_gib(device),
    }


def reference_rate(
    config: TrainConfig, grid: tuple[int, int, int], n: int, steps: int, warmup: int, device: torch.device
) -> dict:
    """The reference code's loop: V stacked views through the network, fp32, contiguous layout,
    each batch copied (blocking) from pageable host memory, the loss read back every step."""
    _reset_peak(device)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device).train()
    optimizer = make_optimizer(config, model.parameters())
    criterion = make_criterion(config)
    host = torch.from_numpy(np.random.default_rng(1).standard_normal((n, *grid), dtype=np.float32))
    ages = torch.from_numpy(np.random.default_rng(2).uniform(6, 86, n).astype(np.float32))
    g = torch.Generator().manual_seed(0)
    b, views = config.batch_size, config.views
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        index = torch.randperm(n, generator=g)[:b]
        x = host[index].unsqueeze(1).to(device)
        z = model(torch.cat([x] * views)).view(views, b, -1).transpose(0, 1)
        loss = criterion(z, ages[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not np.isfinite(loss.item()):
            raise RuntimeError(f"reference loop: the loss is {loss.item()}")
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    return {"samples_per_s": b / step_s, "step_s": step_s, "peak_gib": _peak_gib(device)}


def measure(args: argparse.Namespace, size: dict, device: torch.device, workdir: Path) -> list[dict]:
    grid, batch, steps = size["grid"], size["batch"], size["steps"]
    cache = write_cache(workdir / "cache", batch * steps, grid)
    common = dict(
        width=size["width"],
        batch_size=batch,
        views=2,
        epochs=2,
        device=str(device),
        progress=False,
        num_threads=args.threads,
    )
    flops = {False: step_flops(TrainConfig(method="exp", **common), grid, batch)}
    flops[True] = 2 * flops[False]  # V = 2 stacked views: twice the volumes through the network
    rows = []
    runs = [("defaults", method, {}) for method in ("l1", "exp")]
    runs += [("fp32", method, {"precision": "fp32"}) for method in ("l1", "exp")]
    for label, method, options in runs:
        config = TrainConfig(method=method, **common, **options)
        started = time.perf_counter()
        result = trainer_rate(config, cache, workdir / f"{label}-{method}", device)
        rows.append(
            {
                "run": label,
                "method": method,
                "stacked_views": False,
                **result,
                "flops_per_step": flops[False],
                "wall_s": time.perf_counter() - started,
                "bf16": config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"),
                "channels_last": config.channels_last == "on"
                or (config.channels_last == "auto" and device.type == "cuda"),
                "data": "device" if device.type == "cuda" else "host memory",
            }
        )
    config = TrainConfig(method="exp", **common, precision="fp32", channels_last="off")
    started = time.perf_counter()
    result = reference_rate(config, grid, batch * steps, steps, warmup=2, device=device)
    rows.append(
        {
            "run": "reference loop",
            "method": "exp",
            "stacked_views": True,
            **result,
            "flops_per_step": flops[True],
            "wall_s": time.perf_counter() - started,
            "bf16": False,
            "channels_last": False,
            "data": "host, blocking copy",
        }
    )
    return rows


def add_derived(rows: list[dict], peak: float | None) -> None:
    """TFLOP/s, fraction of the bf16 peak, and the paper's recipe in hours, per row."""
    steps_per_epoch = PAPER_SUBJECTS // 32
    for row in rows:
        row["tflops"] = row["flops_per_step"] / row["step_s"] / 1e12
        row["peak_fraction"] = row["tflops"] / peak if peak else None
        row["recipe_hours"] = PAPER_EPOCHS * steps_per_epoch * 32 / row["samples_per_s"] / 3600


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def table(info: dict, tests: dict, rows: list[dict], size: dict, peak: float | None) -> str:
    names = {"l1": "L1", "exp": "L^exp"}
    failed = sorted(k for k, v in tests.items() if v == "failed")
    counts = {o: sum(v == o for v in tests.values()) for o in ("passed", "failed", "skipped")}
    test_cell = (
        f"not run: {tests['error']}"
        if "error" in tests
        else f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        + (f" (failed: {', '.join(failed)})" if failed else "")
    )
    device = info["device"] + (
        f", {info['capability']}, {info['sms']} SMs, {info['memory_gib']:.0f} GiB" if "capability" in info else ""
    )
    lines = [
        "| | |",
        "|---|---|",
        f"| device | {device} |",
        f"| torch / CUDA / cuDNN | {info['torch']} / {info['cuda'] or 'none'} / {info['cudnn'] or 'none'} |",
        f"| CUDA tests (`-m cuda`) | {test_cell} |",
        *(f"| - {name} | {outcome} |" for name, outcome in tests.items() if name != "error"),
        f"| setting | grid {'x'.join(map(str, size['grid']))}, width {size['width']}, batch {size['batch']} x 2 "
        f"identical views, {size['steps']} steps per epoch |",
        f"| FLOPs per step (conv + matmul, fwd + bwd) | {rows[0]['flops_per_step'] / 1e9:.4g} GFLOP "
        f"({rows[0]['flops_per_step'] / size['batch'] / 1e9:.4g} per subject) |",
        f"| bf16 peak (dense) | {_cell(peak, '.1f')} TFLOP/s |",
        "",
        "| run | loss | bf16 | channels_last | data | views | samples/s | ms/step | TFLOP/s | % of bf16 peak "
        "| peak GiB | 300 epochs x 3,227 subjects (h) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        percent = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
        lines.append(
            f"| {r['run']} | {names[r['method']]} | {'yes' if r['bf16'] else 'no'} | "
            f"{'yes' if r['channels_last'] else 'no'} | {r['data']} | "
            f"{'2 forwards' if r['stacked_views'] else '1 forward'} | {r['samples_per_s']:.1f} | "
            f"{r['step_s'] * 1000:.0f} | {r['tflops']:.3g} | {_cell(percent, '.1f')} | "
            f"{_cell(r['peak_gib'], '.1f')} | {r['recipe_hours']:.1f} |"
        )
    default = next(r for r in rows if r["run"] == "defaults" and r["method"] == "exp")
    reference = next(r for r in rows if r["run"] == "reference loop")
    lines += [
        "",
        f"L^exp, defaults over the reference loop: {default['samples_per_s'] / reference['samples_per_s']:.2f}x "
        "samples/s (same device, same run). Defaults: what `brainage train` does on this device "
        "(on CUDA: bf16 autocast, channels_last_3d, data on the device); fp32 convolutions use TF32 "
        "on GPUs that have it (PyTorch's default).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="16^3 grid, width 0.125, batch 8 x 2: seconds, any device")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--steps", type=int, help="steps per epoch (default 8; tiny 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, where the table has none")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests")
    parser.add_argument("--tests-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = dict(TINY if args.tiny else FULL)
    if args.steps:
        size["steps"] = args.steps
    device = resolve_device(args.device)
    started = time.perf_counter()
    info = device_info(device)
    tests = {} if args.skip_tests else run_cuda_tests(args.tests_timeout)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, size, device, Path(tmp))
    peak = args.peak_tflops or (bf16_peak(info["device"]) if device.type == "cuda" else None)
    add_derived(rows, peak)
    print(table(info, tests, rows, size, peak))
    result = {
        "info": info,
        "tests": tests,
        "size": {**size, "grid": list(size["grid"])},
        "bf16_peak_tflops": peak,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    print(f"\n({result['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
