"""ComBat harmonisation: time and peak memory, and what whole-brain OpenBHB VBM needs.

Three parts (each measurement runs in a fresh subprocess so its peak RSS is its own):

  python benchmarks/harmonize.py                 # fit/apply of one chunk for a few (n, p)
  python benchmarks/harmonize.py --cache-run     # `harmonize_cache` streaming a full-size cache
  python benchmarks/harmonize.py --chunking      # chunked vs unchunked EB outputs

The default sizes end at one chunk of the full problem (3,227 training subjects x 20,000
voxels, 64 sites) and extrapolate to 519,945 voxels. ``--cache-run`` writes a synthetic cache
of the full OpenBHB VBM size (3,227 + 362 + 395 subjects on the 121 x 145 x 121 grid,
519,945 mask voxels; ~17 GB of float16 input and as much output under --workdir) and measures the real run.
Set OMP_NUM_THREADS to fix the BLAS threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPENBHB = {
    "n_train": 3227,
    "n_internal": 362,
    "n_external": 395,
    "n_voxels": 519_945,
    "n_sites": 64,
    "grid": (121, 145, 121),
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def current_rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def site_labels(n: int, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    """Unequal site sizes (every site >= 2 subjects), as in OpenBHB."""
    weights = rng.gamma(1.5, size=n_sites)
    counts = 2 + rng.multinomial(n - 2 * n_sites, weights / weights.sum())
    return np.repeat(np.arange(n_sites), counts)


def simulate(site: np.ndarray, p: int, seed: int, hetero: bool = False) -> tuple[np.ndarray, object]:
    """(n, p) features with per-site shifts N(0, 1) (x a ramp 0.2..2 over voxels when ``hetero``)
    and scales exp(N(0, 0.3)), plus a sex effect of 0.5; ages confounded with site (a centre per
    site), without an effect on the features (the cost of ComBat does not depend on it)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n, n_sites = len(site), int(site.max()) + 1
    sex = rng.integers(0, 2, n).astype(float)
    amplitude = np.linspace(0.2, 2.0, p) if hetero else 1.0
    shift = rng.normal(0, 1, (n_sites, p)) * amplitude
    scale = np.exp(rng.normal(0, 0.3, (n_sites, p)))
    X = rng.normal(0, 1, p) + 0.5 * sex[:, None] + shift[site] + scale[site] * rng.normal(size=(n, p))
    age = np.clip(rng.normal(np.linspace(10, 70, n_sites)[site], 6.0), 6, 88)
    covars = pd.DataFrame({"SITE": [f"s{j:02d}" for j in site], "sex": sex, "age": age})
    return X, covars


# --------------------------------------------------------------------------- children


def child_chunk(n: int, p: int, n_sites: int, n_apply: int) -> dict:
    """Fit one chunk of p voxels on n subjects, then apply to n_apply subjects of seen sites."""
    from brainage.harmonize import ComBatHarmonizer

    rng = np.random.default_rng(1)
    train_sites = site_labels(n, n_sites, rng)
    X, covars = simulate(np.concatenate([train_sites, rng.choice(train_sites, n_apply)]), p, seed=0)
    train, test = np.arange(n), np.arange(n, n + n_apply)
    Xtr, Xte = np.ascontiguousarray(X[train]), np.ascontiguousarray(X[test])
    ctr, cte = covars.iloc[train].reset_index(drop=True), covars.iloc[test].reset_index(drop=True)
    del X
    base = current_rss_gb()
    t0 = time.perf_counter()
    h = ComBatHarmonizer(chunk_size=p)
    for _ in h.fit_chunks(lambda a, b: Xtr[:, a:b], n, p, ctr):
        pass
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    h.transform(Xte, cte["SITE"].to_numpy())
    apply_s = time.perf_counter() - t0
    return {
        "n": n,
        "p": p,
        "fit_s": fit_s,
        "apply_s": apply_s,
        "n_apply": n_apply,
        "baseline_gb": base,
        "peak_gb": peak_rss_gb(),
        "inputs_gb": (Xtr.nbytes + Xte.nbytes) / 1024**3,
    }


def child_cache(cache: str, out: str, chunk_size: int) -> dict:
    from brainage.harmonize import harmonize_cache

    t0 = time.perf_counter()
    meta = harmonize_cache(cache, out, chunk_size=chunk_size, progress=True)
    return {
        "seconds": time.perf_counter() - t0,
        "peak_gb": peak_rss_gb(),
        "n_chunks": meta["harmonization"]["n_chunks"],
        "n_voxels": meta["n_mask_voxels"],
    }


def child_write_cache(path: str, n_train: int, n_internal: int, n_external: int, n_voxels: int, seed: int) -> dict:
    """A synthetic cache in the preprocess format: ellipsoid mask of n_voxels on the VBM grid."""
    import nibabel as nib
    import pandas as pd

    from brainage.io import save_json, save_table

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    grid = OPENBHB["grid"]
    centre = (np.array(grid) - 1) / 2
    axes = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), axis=-1)
    radius = np.sqrt((((axes - centre) / centre) ** 2).sum(axis=-1))
    mask = np.zeros(grid, bool).ravel()
    mask[np.argsort(radius.ravel(), kind="stable")[:n_voxels]] = True
    mask = mask.reshape(grid)
    affine = np.diag([-1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), root / "mask.nii.gz")
    flat = np.flatnonzero(mask.ravel())

    rng = np.random.default_rng(seed)
    n_sites = OPENBHB["n_sites"]
    site = site_labels(n_train, n_sites, rng)
    shift = rng.normal(0, 0.5, (n_sites + 6, n_voxels)).astype(np.float32)
    counts = {}
    for split, n in (("train", n_train), ("internal_test", n_internal), ("external_test", n_external)):
        sites = (
            site
            if split == "train"
            else (rng.choice(site, n) if split == "internal_test" else n_sites + rng.integers(0, 6, n))
        )
        table = pd.DataFrame(
            {
                "participant_id": [f"{split[:2]}{i:05d}" for i in range(n)],
                "sex": rng.choice(["male", "female"], n),
                "age": rng.uniform(6, 86, n).round(1),
                "site": [str(s) for s in sites],
                "siteXacq": [str(s) for s in sites],
                "split": split,
            }
        )
        table.insert(0, "row", np.arange(n))
        array = np.lib.format.open_memmap(root / f"{split}.npy", mode="w+", dtype=np.float16, shape=(n,) + grid)
        for start in range(0, n, 64):
            stop = min(n, start + 64)
            block = np.zeros((stop - start, mask.size), np.float16)
            block[:, flat] = rng.standard_normal((stop - start, n_voxels), dtype=np.float32) + shift[sites[start:stop]]
            array[start:stop] = block.reshape((stop - start,) + grid)
        array.flush()
        del array
        save_table(root / f"{split}.tsv", table)
        counts[split] = n
    save_json(
        root / "cache.json",
        {
            "shape": list(grid),
            "affine": affine.tolist(),
            "n_mask_voxels": int(n_voxels),
            "dtype": "float16",
            "splits": counts,
            "signature": "benchmark",
        },
    )
    return {"written": str(root), "peak_gb": peak_rss_gb()}


def child_chunking(sizes: list[int], p: int, chunk_sizes: list[int]) -> dict:
    from brainage.harmonize import ComBatHarmonizer

    rows = []
    site = np.repeat(np.arange(len(sizes)), sizes)
    for hetero in (False, True):
        X, covars = simulate(site, p, seed=3, hetero=hetero)
        ref = ComBatHarmonizer(chunk_size=p).fit_transform(X, covars)
        correction = np.abs(ref - X).mean()
        for cs in chunk_sizes:
            diff = np.abs(ComBatHarmonizer(chunk_size=cs).fit_transform(X, covars) - ref)
            rows.append(
                {
                    "site_effects": "10x range over voxels" if hetero else "same distribution",
                    "chunk_size": cs,
                    "mean_abs_diff": diff.mean(),
                    "pct_of_correction": 100 * diff.mean() / correction,
                    "max_abs_diff": diff.max(),
                    "max_over_sd": diff.max() / X.std(),
                }
            )
    return {"rows": rows, "sizes": sizes, "p": p}


# --------------------------------------------------------------------------- driver


def report_chunking(res: dict) -> None:
    print(f"chunked vs unchunked ComBat with EB: site sizes {res['sizes']}, {res['p']} features")
    print(f"{'site effects':>22} {'chunk':>6} {'mean|d|':>9} {'% of corr.':>10} {'max|d|':>8} {'max/sd':>7}")
    for r in res["rows"]:
        print(
            f"{r['site_effects']:>22} {r['chunk_size']:>6} {r['mean_abs_diff']:>9.4f} "
            f"{r['pct_of_correction']:>10.2f} {r['max_abs_diff']:>8.3f} {r['max_over_sd']:>7.3f}"
        )


def run_child(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"child {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        default="500x5000,1000x20000,3227x5000,3227x20000",
        help="comma-separated NxP (training subjects x voxels of one chunk)",
    )
    parser.add_argument("--sites", type=int, default=OPENBHB["n_sites"])
    parser.add_argument(
        "--cache-run", action="store_true", help="measure harmonize_cache on a full-size synthetic cache"
    )
    parser.add_argument("--voxels", type=int, default=OPENBHB["n_voxels"], help="mask voxels of the --cache-run cache")
    parser.add_argument("--n-train", type=int, default=OPENBHB["n_train"])
    parser.add_argument("--chunk-size", type=int, default=20_000)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "brainage_harmonize_bench",
        help="where --cache-run writes its caches (~34 GB at full size)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the --cache-run caches")
    parser.add_argument("--chunking", action="store_true", help="chunked vs unchunked differences with EB")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        fn = {"chunk": child_chunk, "cache": child_cache, "write": child_write_cache, "chunking": child_chunking}[kind]
        values = [json.loads(v) for v in rest]
        print(json.dumps(fn(*values)))
        return

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    if args.chunking:
        for sizes in ("[30, 30, 30, 30]", "[60, 40, 15, 5]"):
            report_chunking(run_child("chunking", sizes, "2000", "[1000, 500, 250]"))
        return

    if args.cache_run:
        work = args.workdir
        cache, out = work / "cache", work / "combat"
        try:
            t0 = time.perf_counter()
            if not (cache / "cache.json").is_file():
                run_child(
                    "write",
                    json.dumps(str(cache)),
                    str(args.n_train),
                    str(OPENBHB["n_internal"]),
                    str(OPENBHB["n_external"]),
                    str(args.voxels),
                    "0",
                )
            print(
                f"synthetic cache ({args.n_train} train, {args.voxels} voxels): {time.perf_counter() - t0:.0f} s to write"
            )
            res = run_child("cache", json.dumps(str(cache)), json.dumps(str(out)), str(args.chunk_size))
            print(
                f"harmonize_cache: {res['n_voxels']} voxels, {res['n_chunks']} chunks of ~{args.chunk_size}: "
                f"{res['seconds']:.0f} s, peak RSS {res['peak_gb']:.2f} GB (OMP_NUM_THREADS={threads})"
            )
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return

    n_apply_frac = OPENBHB["n_internal"] / OPENBHB["n_train"]
    print(
        f"one ComBat chunk, {args.sites} sites, apply to {n_apply_frac:.0%} as many seen-site subjects "
        f"(OMP_NUM_THREADS={threads})"
    )
    print(f"{'n':>6} {'p':>7} {'fit s':>7} {'apply s':>8} {'peak GB':>8} {'inputs GB':>9} {'(peak-base)/(8np)':>18}")
    rows = []
    for size in args.sizes.split(","):
        n, p = (int(v) for v in size.lower().split("x"))
        r = run_child("chunk", str(n), str(p), str(args.sites), str(max(args.sites, round(n * n_apply_frac))))
        r["per_np"] = (r["peak_gb"] - r["baseline_gb"]) * 1024**3 / (8 * n * p)
        rows.append(r)
        print(
            f"{n:>6} {p:>7} {r['fit_s']:>7.1f} {r['apply_s']:>8.1f} {r['peak_gb']:>8.2f} {r['inputs_gb']:>9.2f} {r['per_np']:>18.1f}"
        )
    full = [r for r in rows if r["n"] == OPENBHB["n_train"]]
    if full:
        r = max(full, key=lambda r: r["p"])
        n_chunks = -(-OPENBHB["n_voxels"] // r["p"])
        print(
            f"extrapolated whole-brain VBM ({OPENBHB['n_voxels']} voxels, {n_chunks} chunks of {r['p']}): "
            f"fit + internal apply ~{n_chunks * (r['fit_s'] + r['apply_s']) / 60:.0f} min of compute "
            f"(plus I/O); peak memory ~ one chunk ({r['peak_gb']:.1f} GB here, inputs included) "
            f"+ the model (2 x {OPENBHB['n_sites']} x {OPENBHB['n_voxels']} float64 = "
            f"{2 * OPENBHB['n_sites'] * OPENBHB['n_voxels'] * 8 / 1024**3:.2f} GB)"
        )
        unchunked = (r["per_np"] + 1) * 8 * OPENBHB["n_train"] * OPENBHB["n_voxels"] / 1024**3
        print(f"unchunked (one neuroHarmonize call on all voxels) would need ~{unchunked:.0f} GB")


if __name__ == "__main__":
    main()
