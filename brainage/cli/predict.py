"""Inference subcommands: ``export`` (a run -> model bundle), ``predict`` (new scans; docs/predict.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brainage.cli._common import command_line, positive_int


def _register_export(sub: argparse._SubParsersAction) -> None:
    from brainage.models.names import FEATURE_KINDS

    p = sub.add_parser(
        "export",
        help="trained run -> portable model bundle (weights, preprocessing, calibration, model card)",
        description="Write a versioned, self-describing bundle folder for a finished run: weights (a state dict, "
        "torch.load(..., weights_only=True)), the network and readout, the preprocessing the model expects "
        "(modality, source grid and affine, masks, downsampling, normalisation), the age-bias calibration fitted "
        "on the internal test split, the training cohort, QC ranges, the run's scores and MODEL_CARD.md. "
        "Written atomically. See docs/predict.md.",
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (model.pt) or a model file")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write (replaced if it is a bundle)")
    p.add_argument("--cache", type=Path, help="the cache the run was trained on (default: the path in model.pt)")
    p.add_argument(
        "--data", type=Path, help="the OpenBHB folder the cache was built from (default: the path in cache.json)"
    )
    p.add_argument("--scores", type=Path, help="the run's scores.json (brainage evaluate), reported in the card")
    p.add_argument(
        "--features", type=Path, help="the run's feature folder (brainage features), reused instead of recomputed"
    )
    p.add_argument(
        "--kind",
        choices=list(FEATURE_KINDS),
        help="features of contrastive models read out by the Ridge (default: the run's option)",
    )
    p.add_argument("--device", help="default: the run's device option")
    p.add_argument("--batch-size", type=int, help="subjects per forward pass (default: the run's eval_batch_size)")
    p.add_argument("--num-threads", type=positive_int, help="CPU threads of torch")
    p.add_argument(
        "--qc-subjects",
        type=positive_int,
        default=256,
        help="training images read for the QC intensity ranges and the preprocessing check (default 256)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import torch

    from brainage.inference import export_bundle

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    bundle = export_bundle(
        args.run,
        args.out,
        cache=args.cache,
        data=args.data,
        scores=args.scores,
        features=args.features,
        kind=args.kind,
        device=args.device,
        batch_size=args.batch_size,
        qc_subjects=args.qc_subjects,
        progress=not args.quiet,
        command=command_line(args),
    )
    cal = bundle.spec["calibration"]
    logging.getLogger("brainage").info(
        "bundle %s: %s seed %s, readout %s, calibration %s",
        args.out,
        bundle.spec["model"]["method"],
        bundle.spec["model"]["seed"],
        bundle.readout.kind,
        f"slope {cal['slope']:.3f}" if cal.get("slope") is not None else f"none ({cal.get('error')})",
    )
    return 0


def _register_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="brain age of new scans with a model bundle (or a run) -> predictions CSV",
        description="Predict the brain age of NIfTI images (.nii, .nii.gz), OpenBHB .npy arrays, BIDS derivatives "
        "folders or CSV/TSV tables of paths (columns path, optional participant_id, session_id, age, sex). Images "
        "on another grid of the model's template space are resampled (reported per image); others are refused "
        "with the reason. Writes OUT (one row per image: predicted age, brain-age gap and bias-corrected gap when "
        "the age is given, QC columns, a flag), OUT.json (summary) and OUT.png (figure). See docs/predict.md.",
    )
    p.add_argument("--model", required=True, type=Path, help="model bundle (brainage export) or training run folder")
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        type=Path,
        help="NIfTI/.npy files, BIDS derivatives folders, or .csv/.tsv tables of paths",
    )
    p.add_argument("--out", required=True, type=Path, help="predictions CSV to write")
    p.add_argument(
        "--bids-select",
        nargs="+",
        default=[],
        metavar="ENTITY",
        help="BIDS folders: entities (key-value, e.g. space-MNI152NLin2009cAsym label-GM) and/or a suffix "
        "(T1w, probseg) selecting one image per subject and session",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass; bounds memory (default 4)")
    p.add_argument("--workers", type=int, default=0, help="processes reading/resampling images ahead (default 0)")
    p.add_argument("--num-threads", type=positive_int, help="CPU threads of torch")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write refused images as rows with an error (flagged) instead of stopping",
    )
    p.add_argument("--figure", type=Path, help="summary figure (default: OUT with .png)")
    p.add_argument("--no-figure", action="store_true", help="no summary figure")
    p.add_argument("--cache", type=Path, help="--model is a run: its training cache (default: the recorded path)")
    p.add_argument("--data", type=Path, help="--model is a run: the OpenBHB folder of its cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    import torch

    from brainage.inference import predict_brain_age

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    figure = False if args.no_figure else (args.figure or True)
    predict_brain_age(
        args.model,
        args.images,
        args.out,
        select=args.bids_select,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        skip_invalid=args.skip_invalid,
        figure=figure,
        progress=not args.quiet,
        command=command_line(args),
        export_options={"cache": args.cache, "data": args.data, "progress": not args.quiet},
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``sub``, in the order ``brainage --help`` lists them."""
    _register_export(sub)
    _register_predict(sub)
