"""Evaluation subcommands: ``evaluate`` (OpenBHB challenge scores of one run), ``table``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brainage.cli._common import command_line, float_list


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="OpenBHB challenge scores of frozen features (one method, one seed)",
        description="Fit the challenge's age (Ridge) and site (saga LogisticRegression) probes on "
        "the training features, score Int. MAE, BAcc, Ext. MAE and L_c = BAcc^0.3 x Ext. MAE; "
        "write scores.json, predictions.csv (predicted age, brain-age gap, bias-corrected gap) "
        "and figures. The probe defaults are the challenge's; changing them is recorded.",
    )
    p.add_argument(
        "--features", required=True, type=Path, help="folder with train.npz, internal_test.npz, external_test.npz"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--method", help="method id recorded in scores.json (l1, combat_l1, yaware, thr, exp, ...)")
    p.add_argument("--seed", type=int, help="training seed recorded in scores.json")
    p.add_argument("--model", default="ResNet-18", help="model name shown in the table (default ResNet-18)")
    p.add_argument("--label", help="method name shown in the table (default: the usual name of --method)")
    p.add_argument("--details", help="appended to the method name in the table, e.g. 'rbf, sigma 2'")
    p.add_argument(
        "--formulation",
        help="paper or reference: which equation of the contrastive loss was trained; the table names it",
    )
    p.add_argument(
        "--reference",
        help="constant or age-oracle: score a reference instead of the folder's features, for the same subjects: constant "
        "features (chance BAcc, mean-predictor MAE) or the true age z-scored (the BAcc that age "
        "confounding alone gives); no figures",
    )
    p.add_argument("--cv", type=int, default=5, help="grid-search folds (challenge: 5)")
    p.add_argument(
        "--alphas",
        type=float_list,
        default=None,
        help="Ridge alpha grid, comma-separated (challenge: 0.01,0.1,1,10,100)",
    )
    p.add_argument(
        "--cs",
        type=float_list,
        default=None,
        help="LogisticRegression C grid, comma-separated (challenge: 0.01,0.1,1,10,100)",
    )
    p.add_argument("--max-iter", type=int, default=150, help="saga iterations (challenge: 150)")
    p.add_argument(
        "--random-state",
        type=int,
        default=0,
        help="saga seed; -1 leaves it to the global NumPy state as the RAMP kit does",
    )
    p.add_argument("--n-jobs", type=int, default=1, help="grid-search jobs")
    p.add_argument(
        "--bias-cv", type=int, default=5, help="folds for cross-fitting the internal-test age-bias correction"
    )
    p.add_argument("--folds", type=Path, help="JSON of challenge-style folds (participant ids, or rows of --fold-ids)")
    p.add_argument("--fold-ids", type=Path, help="table whose participant_id column the integer fold entries index")
    p.add_argument("--tsne", action="store_true", help="also draw a t-SNE embedding (slower)")
    p.add_argument(
        "--allow-over-limit",
        action="store_true",
        help="score more than 10,000 feature columns (warns; not challenge-compliant)",
    )
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
        args.features,
        args.out,
        method=args.method,
        seed=args.seed,
        model=args.model,
        label=args.label,
        details=args.details,
        formulation=args.formulation,
        reference=args.reference,
        settings=settings,
        folds=folds,
        bias_cv=args.bias_cv,
        tsne=args.tsne,
        allow_over_limit=args.allow_over_limit,
        provenance={"command": command_line(args)},
    )
    return 0


def _register_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "table",
        help="aggregate scores.json files into the OpenBHB results table",
        description="Mean +- std over seeds (or folds) per method, in the layout of Table 3 of "
        "Barbano et al. (ISBI 2023), as CSV and Markdown, with the published numbers alongside "
        "(labelled, not computed here) and summary figures.",
    )
    p.add_argument(
        "--scores", required=True, nargs="+", help="scores.json files, folders searched for them, or glob patterns"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--name", default="openbhb_table", help="file stem (default openbhb_table)")
    p.add_argument(
        "--harmonization-meta",
        type=Path,
        help="the ComBat cache's cache.json; its external-site strategy is noted if present",
    )
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.set_defaults(func=_run_table)


def _run_table(args: argparse.Namespace) -> int:
    from brainage.evaluation.table import harmonization_note, load_scores, resolve_score_paths, write_table

    paths = resolve_score_paths(args.scores)
    reps = load_scores(paths)
    written = write_table(
        reps,
        args.out,
        name=args.name,
        harmonization=harmonization_note(args.harmonization_meta),
        figures=not args.no_figures,
        provenance=command_line(args),
    )
    logging.getLogger("brainage").info(
        "table of %d replicate(s) from %d file(s): %s",
        len(reps),
        len(paths),
        ", ".join(str(p) for p in written.values()),
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``sub``, in the order ``brainage --help`` lists them."""
    _register_evaluate(sub)
    _register_table(sub)
