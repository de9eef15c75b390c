"""Data subcommands: ``simulate`` (a synthetic OpenBHB-like data set), ``preprocess`` (OpenBHB -> training cache)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="build a synthetic multi-site OpenBHB-like data set (offline)",
        description="Simulate brain MRI of healthy subjects aged 6-88 from many sites, from the MNI152 "
        "anatomy bundled with nilearn, and write it in the OpenBHB per-subject layout "
        "(optionally also the RAMP layout). See docs/simulator.md.",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to create")
    p.add_argument("--n-subjects", type=int, default=600, help="participants over all splits (default 600)")
    p.add_argument(
        "--downsample",
        type=int,
        default=3,
        help="integer subsampling F of the OpenBHB grids (1 = 121x145x121 / 182x218x182; default 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--n-sites", type=int, default=None, help="number of sites (default: ~18 for 1,000 subjects)")
    p.add_argument("--max-acquisitions", type=int, default=3, help="most acquisition settings per site (default 3)")
    p.add_argument("--modalities", default="vbm,quasiraw", help="comma-separated: vbm, quasiraw (default both)")
    p.add_argument("--ramp", action="store_true", help="also write the RAMP stacked layout under OUT/ramp")
    p.add_argument("--n-jobs", type=int, default=1, help="worker processes (-1: all CPUs; default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from brainage.data.simulate import simulate_openbhb

    out = simulate_openbhb(
        args.out,
        n_subjects=args.n_subjects,
        downsample=args.downsample,
        seed=args.seed,
        n_sites=args.n_sites,
        modalities=args.modalities,
        ramp=args.ramp,
        n_jobs=args.n_jobs,
        overwrite=args.overwrite,
        max_acquisitions=args.max_acquisitions,
        progress=not args.quiet,
    )
    logging.getLogger("brainage").info("simulated data set written to %s", out)
    return 0


def _register_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="OpenBHB folder (either layout) -> training cache",
        description="Mask, optionally block-average, normalise per image within the mask and "
        "store float16 volumes per split (memory-mapped) with an index table. Resumable.",
    )
    p.add_argument("--data", required=True, type=Path, help="OpenBHB folder (per-subject or RAMP layout)")
    p.add_argument("--out", required=True, type=Path, help="cache folder to write")
    p.add_argument("--layout", default="auto", choices=["auto", "per_subject", "ramp"])
    p.add_argument("--modality", default="vbm", choices=["vbm", "quasiraw"])
    p.add_argument("--downsample", type=int, default=1, help="integer block-average factor (default 1)")
    p.add_argument("--normalize", default="zscore", choices=["zscore", "none"])
    p.add_argument("--chunk", type=int, default=32, help="volumes per checkpointed chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from brainage.data.preprocess import preprocess

    meta = preprocess(
        args.data,
        args.out,
        modality=args.modality,
        downsample=args.downsample,
        normalize=args.normalize,
        chunk=args.chunk,
        layout=args.layout,
        progress=not args.quiet,
    )
    logging.getLogger("brainage").info(
        "cache %s: grid %s, %d mask voxels, splits %s", args.out, meta["shape"], meta["n_mask_voxels"], meta["splits"]
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``sub``, in the order ``brainage --help`` lists them."""
    _register_simulate(sub)
    _register_preprocess(sub)
