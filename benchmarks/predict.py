"""Throughput of `brainage predict` (subjects/s) at the OpenBHB VBM grid (121x145x121, 1.5 mm), on CPU.

A bundle is built in memory around an untrained BrainAgeNet (random weights: the cost does not
depend on them) with the real grid and a real-shaped grey-matter mask (nilearn's MNI152 GM
template resampled to the grid, > 0.05). The images are that template plus noise, written as
NIfTI (.nii.gz) either on the model grid or at 1 mm (197x233x189), which predict must resample.
Three numbers per case: end to end (read, resample, QC, preprocess, network, readout, CSV),
the same without the network (input side only), and the network alone on random inputs.

    python benchmarks/predict.py                          # width 1 (the published ResNet-18), 8 images
    python benchmarks/predict.py --width 0.25 --n 16 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainage.data.modalities import MODALITIES, grid
from brainage.data.preprocess import downsample_mask
from brainage.inference.bundle import ModelBundle
from brainage.inference.predict import (
    _Images,
    predict_brain_age,
)
from brainage.inference.preprocessing import Preprocessing
from brainage.inference.readout import Readout
from brainage.inference.spatial import inspect_image
from brainage.models import BrainAgeNet
from brainage.training.checkpoint import network_kwargs
from brainage.training.config import TrainConfig


def synthetic_bundle(width: float, gm: np.ndarray, affine: np.ndarray) -> ModelBundle:
    """A bundle on the VBM grid with random weights and a Ridge readout of random coefficients."""
    config = TrainConfig(method="exp", width=width)
    torch.manual_seed(0)
    network = BrainAgeNet(**network_kwargs(config))
    mask = gm > MODALITIES["vbm"].threshold
    prep = Preprocessing(
        "vbm", gm.shape, affine, mask, MODALITIES["vbm"].threshold, 1, downsample_mask(mask, 1), "zscore"
    )
    readout = Readout("ridge", "projection", coef=np.random.default_rng(0).normal(0, 1, 128), intercept=40.0)
    spec = {
        "model": {"method": "exp", "seed": 0, "run": "benchmark"},
        "training_cohort": {"age": {"min": 6.0, "max": 86.0}},
        "calibration": {"slope": 1.0, "intercept": 0.0, "n": 0},
        "qc": {"reference": {}},
        "network": {"kwargs": network_kwargs(config)},
    }
    return ModelBundle(spec, network.state_dict(), prep, readout, np.where(mask, gm, 0).astype(np.float32))


def write_images(folder: Path, n: int, image: nib.Nifti1Image) -> list[Path]:
    rng = np.random.default_rng(1)
    data = image.get_fdata(dtype=np.float32)
    paths = []
    for i in range(n):
        noisy = np.clip(data + rng.normal(0, 0.05, data.shape).astype(np.float32), 0, None)
        paths.append(folder / f"sub-{i:03d}_gm.nii.gz")
        nib.save(nib.Nifti1Image(noisy, image.affine), paths[-1])
    return paths


def network_rate(bundle: ModelBundle, n: int, batch: int) -> float:
    network = bundle.build_network("cpu")
    x = torch.randn(batch, 1, *bundle.preprocessing.shape)
    with torch.no_grad():
        network.features(x[:1], "projection")  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, n // batch)):
            network.features(x, "projection")
    return max(1, n // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="images per case")
    parser.add_argument("--width", type=float, default=1.0, help="network width (1 = the published ResNet-18)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nilearn.datasets import load_mni152_gm_template
    from nilearn.image import resample_img

    shape, affine = grid("vbm", 1)
    template = load_mni152_gm_template(resolution=1)
    on_grid = resample_img(
        template,
        target_affine=affine,
        target_shape=shape,
        interpolation="linear",
        force_resample=True,
        copy_header=True,
    )
    on_grid = nib.Nifti1Image(on_grid.get_fdata(dtype=np.float32), affine)
    bundle = synthetic_bundle(args.width, on_grid.get_fdata(dtype=np.float32), affine)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; VBM grid {'x'.join(map(str, shape))}, "
        f"width {args.width:g} ({sum(v.numel() for v in bundle.state.values()):,} state values), "
        f"batch {args.batch_size}, {args.n} images per case"
    )
    print(f"{'images':>22} {'end to end':>14} {'input side':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, image in (("model grid, 1.5 mm", on_grid), ("1 mm, resampled", template)):
            folder = Path(tmp) / label.split(",")[0].replace(" ", "_")
            folder.mkdir()
            paths = write_images(folder, args.n, image)
            start = time.perf_counter()
            predict_brain_age(
                bundle,
                paths,
                folder / "predictions.csv",
                device="cpu",
                batch_size=args.batch_size,
                figure=False,
                progress=False,
            )
            end_to_end = args.n / (time.perf_counter() - start)
            start = time.perf_counter()
            items = _Images(
                [inspect_image(p, bundle.preprocessing) for p in paths], bundle.preprocessing, bundle.reference_mean
            )
            for i in range(len(items)):
                items[i]
            input_side = args.n / (time.perf_counter() - start)
            print(f"{label:>22} {end_to_end:>9.2f} subj/s {input_side:>9.2f} subj/s")
    print(f"{'network alone':>22} {network_rate(bundle, args.n, args.batch_size):>9.2f} subj/s (random inputs)")


if __name__ == "__main__":
    main()
