"""Throughput of `brainage preprocess` (volumes/s) at the OpenBHB VBM grid / factor 1 and 3.

Writes a per-subject OpenBHB folder of random float32 volumes with an ellipsoidal mask on the
real grids (content does not change the cost), then times preprocess into a cache.

    python benchmarks/preprocess.py [--n 64] [--factors 1 3] [--modality vbm]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.data.modalities import MODALITIES, grid
from brainage.data.preprocess import preprocess


def write_folder(root: Path, n: int, modality: str, factor: int) -> None:
    mod = MODALITIES[modality]
    shape, affine = grid(modality, factor)
    axes = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    mask = sum(a**2 for a in axes) < 0.8
    (root / "resource").mkdir(parents=True)
    values = np.where(mask, 0.5, 0.0).astype(np.float32) if mod.threshold > 0 else mask.astype(np.uint8)
    nib.save(nib.Nifti1Image(values, affine), root / "resource" / mod.mask_file)
    other = [m for m in MODALITIES.values() if m.name != modality][0]
    o_shape, o_affine = grid(other.name, factor)
    nib.save(nib.Nifti1Image(np.ones(o_shape, np.uint8), o_affine), root / "resource" / other.mask_file)
    rng = np.random.default_rng(0)
    ids = [str(1000 + i) for i in range(n)]
    pd.DataFrame(
        {
            "participant_id": ids,
            "sex": ["male"] * n,
            "age": rng.uniform(6, 80, n).round(1),
            "site": ["a"] * n,
            "split": ["train"] * n,
        }
    ).to_csv(root / "participants.tsv", sep="\t", index=False)
    for pid in ids:
        d = root / "train" / "derivatives" / f"sub-{pid}" / "ses-1"
        d.mkdir(parents=True)
        np.save(d / mod.file_pattern.format(id=pid), rng.random((1,) + shape, dtype=np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="volumes per measurement")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 3], help="source grid subsampling")
    parser.add_argument("--modality", default="vbm", choices=sorted(MODALITIES))
    parser.add_argument("--downsample", type=int, default=1, help="preprocess block-average factor")
    args = parser.parse_args()
    print(f"{'modality':>9} {'grid':>14} {'n':>5} {'seconds':>8} {'volumes/s':>10} {'MB/s read':>10}")
    for factor in args.factors:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            write_folder(root, args.n, args.modality, factor)
            shape, _ = grid(args.modality, factor)
            start = time.perf_counter()
            preprocess(
                root,
                Path(tmp) / "cache",
                modality=args.modality,
                downsample=args.downsample,
                splits=["train"],
                progress=False,
            )
            seconds = time.perf_counter() - start
            mb = args.n * np.prod(shape) * 4 / 1e6
            print(
                f"{args.modality:>9} {'x'.join(map(str, shape)):>14} {args.n:>5} {seconds:8.2f} "
                f"{args.n / seconds:10.1f} {mb / seconds:10.1f}"
            )


if __name__ == "__main__":
    main()
