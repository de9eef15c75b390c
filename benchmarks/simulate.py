"""Speed of `brainage simulate`: total time and subjects/s, default 1,000 subjects at factor 3.

Each measurement runs in a fresh process (so the one-off template preparation is included,
as for a user) and also reports the CPU seconds of that process and its workers; with other
jobs on the machine, wall time grows but CPU time barely moves.

    python benchmarks/simulate.py [--n 1000] [--factor 3] [--n-jobs 2] [--full 3] [--ramp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, os, resource, sys, time
start = time.perf_counter()
from brainage.data.simulate import simulate_openbhb
from brainage.data.simulate.anatomy import grid_fields
n, factor, n_jobs, ramp, modalities, out = json.loads(sys.argv[1])
grid_fields("vbm", factor)
grid_fields("quasiraw", factor)
prepared = time.perf_counter() - start
simulate_openbhb(out, n_subjects=n, downsample=factor, seed=0, n_jobs=n_jobs, ramp=ramp,
                 modalities=modalities, progress=False, n_sites=None if n >= 40 else 2,
                 max_acquisitions=3 if n >= 40 else 1)
wall = time.perf_counter() - start
cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
          for f in ("ru_utime", "ru_stime"))
size = sum(p.stat().st_blocks * 512 for p in __import__("pathlib").Path(out).rglob("*") if p.is_file())
print(json.dumps({"wall": wall, "prepare": prepared, "cpu": cpu, "disk_mb": size / 1e6}))
"""


def measure(n: int, factor: int, n_jobs: int, ramp: bool, modalities: str) -> dict:
    """Run one simulation in a fresh interpreter; returns wall/CPU seconds and disk use."""
    with tempfile.TemporaryDirectory() as tmp:
        arg = json.dumps([n, factor, n_jobs, ramp, modalities, str(Path(tmp) / "synthetic")])
        proc = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="subjects at --factor")
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--full", type=int, default=3, help="subjects at factor 1 (0: skip)")
    parser.add_argument("--modalities", default="vbm,quasiraw")
    parser.add_argument("--ramp", action="store_true", help="also write the RAMP layout")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(
        f"CPUs {os.cpu_count()}, load average {load:.1f}, n_jobs {args.n_jobs}, modalities {args.modalities}"
        f"{', RAMP' if args.ramp else ''}"
    )
    print(
        f"{'factor':>6} {'subjects':>8} {'wall s':>8} {'prepare s':>9} {'subjects/s':>10} {'CPU s':>8} "
        f"{'CPU s/subject':>13} {'disk MB':>8}"
    )
    runs = [(args.factor, args.n)] + ([(1, args.full)] if args.full else [])
    for factor, n in runs:
        r = measure(n, factor, args.n_jobs, args.ramp, args.modalities)
        rate = n / (r["wall"] - r["prepare"])
        print(
            f"{factor:>6} {n:>8} {r['wall']:8.1f} {r['prepare']:9.1f} {rate:10.2f} {r['cpu']:8.1f} "
            f"{r['cpu'] / n:13.3f} {r['disk_mb']:8.1f}"
        )
    print("subjects/s excludes the one-off preparation of the template on the grids (prepare s).")


if __name__ == "__main__":
    main()
