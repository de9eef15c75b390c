"""Submission subcommands: ``submission``, ``submission-check``, ``ramp-kit`` (docs/submission.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument(
        "--kind",
        choices=list(FEATURE_KINDS),
        help="features to submit (default: as `brainage features`, the run's option)",
    )
    p.set_defaults(func=_run_submission)


def _run_submission(args: argparse.Namespace) -> int:
    from brainage.submission import build_submission

    build_submission(args.run, args.out, cache=args.cache, kind=args.kind)
    return 0


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
    p.add_argument(
        "--random-state",
        type=int,
        default=0,
        help="saga seed of the site probe; -1 = NumPy's global state (ignored with --scores)",
    )
    p.add_argument("--n-jobs", type=int, default=1, help="grid-search jobs")
    p.add_argument("--workdir", type=Path, help="where the temporary RAMP rows go (default: next to --out)")
    p.set_defaults(func=_run_submission_check)


def _run_submission_check(args: argparse.Namespace) -> int:
    from brainage.evaluation.protocol import ProbeSettings
    from brainage.submission import check_submission

    settings = ProbeSettings(random_state=None if args.random_state < 0 else args.random_state, n_jobs=args.n_jobs)
    check_submission(
        args.submission,
        args.data,
        args.features,
        args.out,
        project_scores=args.scores,
        settings=settings,
        rtol=args.rtol,
        atol=args.atol,
        layout=args.layout,
        workdir=args.workdir,
    )
    return 0


def _register_ramp_kit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ramp-kit",
        help="a local RAMP kit (problem.py, data/, masks, submissions/NAME) for `ramp-test`",
        description="Lay out a kit around a submission and RAMP-layout data so that "
        "`ramp-test --submission NAME --quick-test` (ramp-workflow) runs it as the challenge server does. "
        "With --data pointing to a per-subject OpenBHB folder, RAMP rows are written first.",
    )
    p.add_argument("--submission", required=True, type=Path, help="submission folder")
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="RAMP-layout folder (train.npy, test.npy, .tsv, resource/) or an OpenBHB folder",
    )
    p.add_argument("--out", required=True, type=Path, help="kit folder")
    p.add_argument("--name", default="brainage", type=_submission_name, help="submission name under submissions/")
    p.set_defaults(func=_run_ramp_kit)


def _submission_name(text: str) -> str:
    from brainage.errors import ConfigError
    from brainage.submission.kit import check_submission_name

    try:
        return check_submission_name(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run_ramp_kit(args: argparse.Namespace) -> int:
    from brainage.data.layouts import detect_layout
    from brainage.submission import write_ramp_kit, write_ramp_rows
    from brainage.submission.check import read_submission_metadata

    rows = args.data
    if detect_layout(args.data) != "ramp" or not (args.data / "resource").is_dir():
        modality = read_submission_metadata(args.submission / "metadata.pkl")["modality"]
        rows = args.out / "ramp_rows"
        write_ramp_rows(args.data, rows, modalities=[modality])
    write_ramp_kit(args.out, rows, args.submission, name=args.name)
    print(f"cd {args.out} && ramp-test --submission {args.name} --quick-test")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``sub``, in the order ``brainage --help`` lists them."""
    _register_submission(sub)
    _register_submission_check(sub)
    _register_ramp_kit(sub)
