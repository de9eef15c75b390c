"""Check a submission before uploading it: run it as the server does, compare, score.

1. RAMP rows of the data folder's subjects are written to a temporary folder
   (:func:`~brainage.submission.rows.write_ramp_rows`);
2. ``estimator.py`` runs in a separate interpreter in which ``brainage`` and ``monai`` cannot be
   imported (``server_run.py``), with the masks in ``VBM_MASK`` / ``QUASIRAW_MASK``, through
   ``get_estimator()``, ``fit(None, None)``, ``indices`` and ``predict``;
3. its features are compared, subject by subject, with the project's feature files of the run
   (they must agree to ``rtol``/``atol``, else :class:`SubmissionCheckError`);
4. the challenge probes score the submission's features
   (:func:`brainage.evaluation.evaluate_features`): the score to expect from the server on the
   same subjects.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage.data.cache import SPLITS
from brainage.data.modalities import MODALITIES
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.evaluation.features import FeatureSplit, load_feature_dir
from brainage.evaluation.pipeline import read_scores, recorded_probe_settings
from brainage.evaluation.protocol import ProbeSettings, evaluate_features
from brainage.io import atomic_open, make_folders, save_json
from brainage.submission.build import SUBMISSION_FILES
from brainage.submission.ramp_estimator import SubmissionError, load_metadata
from brainage.submission.rows import write_ramp_rows

__all__ = ["SERVER_RUN", "SubmissionCheckError", "check_submission", "read_submission_metadata", "run_like_server"]

log = logging.getLogger(__name__)

#: The standalone script that runs a submission in a clean interpreter.
SERVER_RUN = Path(__file__).with_name("server_run.py")


class SubmissionCheckError(BrainAgeError):
    """The submission does not reproduce the project's features, or could not run."""


def run_like_server(
    submission: str | os.PathLike,
    requests: list[dict[str, Any]],
    env: dict[str, str],
    workdir: str | os.PathLike,
    block: tuple[str, ...] = ("brainage", "monai"),
    python: str = sys.executable,
    timeout: float | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run ``estimator.py`` of ``submission`` in ``python -I`` with ``block`` unimportable.

    Args:
        requests: ``{"name", "array" (a .npy path), "indices" (None, a row list or "range")}``.
        env: environment variables set before the estimator is imported (the mask paths).

    Returns:
        (features per request name, the run's report: seconds, shapes, refused imports).

    Raises:
        SubmissionCheckError: the estimator failed (its stderr is included).
    """
    workdir = Path(workdir)
    spec = {
        "submission": str(Path(submission).resolve()),
        "env": env,
        "requests": requests,
        "out": str(workdir / "server_features.npz"),
        "block": list(block),
    }
    spec_path = workdir / "server_spec.json"
    spec_path.write_text(json.dumps(spec))
    child_env = {k: v for k, v in os.environ.items() if k not in ("VBM_MASK", "QUASIRAW_MASK")}
    proc = subprocess.run(
        [python, "-I", "-B", str(SERVER_RUN), str(spec_path)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise SubmissionCheckError(
            f"the submission's estimator failed when run as on the server (exit {proc.returncode}):\n"
            + proc.stderr[-4000:]
        )
    with np.load(spec["out"], allow_pickle=False) as data:
        features = {k: data[k] for k in data.files}
    report = json.loads(Path(spec["out"] + ".json").read_text())
    return features, report


def _compare(ours: np.ndarray, theirs: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    bound = atol + rtol * np.abs(theirs.astype(np.float64))
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "n_values_outside_tolerance": int((diff > bound).sum()),
        "n_subjects_outside_tolerance": int((diff > bound).any(axis=1).sum()),
        "bitwise_equal": bool(np.array_equal(ours, theirs)),
    }


def check_submission(
    submission: str | os.PathLike,
    data: str | os.PathLike,
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    project_scores: str | os.PathLike | None = None,
    settings: ProbeSettings | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    layout: str = "auto",
    workdir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Check a submission on the subjects of a data folder; write ``out/check.json`` and ``check.md``.

    Args:
        submission: submission folder (``brainage submission``).
        data: the OpenBHB folder the run was trained on (either layout).
        features: the run's feature folder (``train.npz``, ``internal_test.npz``, ``external_test.npz``).
        out: report folder.
        project_scores: the run's ``scores.json`` (``brainage evaluate``), shown beside the check's.
        settings: probe settings (default: the challenge's, saga seeded with 0).
        rtol, atol: feature tolerance, per value: ``|sub - project| <= atol + rtol * |project|``.
        workdir: where the temporary RAMP rows go (default: a folder next to ``out``).

    Returns:
        The report written to ``check.json``.

    Raises:
        SubmissionCheckError: the features differ beyond tolerance, a subject is missing, or the
            estimator failed. Nothing is written then.
    """
    submission, out = Path(submission), Path(out)
    missing = [f for f in SUBMISSION_FILES if not (submission / f).is_file()]
    if missing:
        raise InputNotFoundError(f"{submission}: missing {missing}; build it with `brainage submission`")
    meta = read_submission_metadata(submission / "metadata.pkl")
    project = load_feature_dir(features)
    settings = _probe_settings(settings, project_scores)
    make_folders(out)
    base = make_folders(workdir if workdir is not None else out.parent)
    started = time.perf_counter()
    run = _run_on_ramp_rows(submission, data, meta["modality"], layout, base, started)
    comparison, triples = _match_project_features(run, project, data, rtol, atol)
    scores = evaluate_features(triples["train"], triples["internal_test"], triples["external_test"], settings=settings)
    scores.pop("predictions")
    report: dict[str, Any] = {
        "status": "passed",
        "submission": str(submission.resolve()),
        "data": str(Path(data).resolve()),
        "features": str(Path(features).resolve()),
        "method": meta.get("method"),
        "seed": meta.get("seed"),
        "feature_kind": meta["feature_kind"],
        "n_features": meta["n_features"],
        "modality": meta["modality"],
        "factor": meta["factor"],
        "row_length": run.rows["row_length"],
        "n_subjects": {s: len(project[s]) for s in SPLITS},
        "tolerance": {"rtol": rtol, "atol": atol},
        "feature_comparison": comparison,
        "server_run": run.report,
        "seconds": {"ramp_rows": run.rows_seconds, "total": time.perf_counter() - started},
        "scores": scores,
    }
    if project_scores is not None:
        given = read_scores(project_scores)
        report["project_scores"] = {k: given.get(k) for k in ("int_mae", "bacc", "ext_mae", "challenge_score")}
    save_json(out / "check.json", report)
    with atomic_open(out / "check.md") as fh:
        fh.write(_markdown(report))
    log.info(
        "submission check passed: L_c %.3f (Int. MAE %.2f, BAcc %.1f %%, Ext. MAE %.2f)",
        scores["challenge_score"],
        scores["int_mae"],
        100 * scores["bacc"],
        scores["ext_mae"],
    )
    return report


def read_submission_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A submission's ``metadata.pkl`` through the standalone estimator's ``load_metadata``.

    The estimator runs on the challenge server without brainage, so it raises built-in errors;
    they become brainage's here.

    Raises:
        InputNotFoundError: no such file.
        SubmissionCheckError: not the metadata of a submission (the message names the file).
    """
    path = Path(path)
    try:
        return load_metadata(path)
    except FileNotFoundError as err:
        raise InputNotFoundError(str(err)) from err
    except SubmissionError as err:  # its message names the file
        raise SubmissionCheckError(str(err)) from err
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, IndexError, KeyError) as err:
        raise SubmissionCheckError(
            f"{path}: not the metadata.pkl of a submission ({err or type(err).__name__}); rebuild the "
            "submission with `brainage submission`"
        ) from err


def _probe_settings(settings: ProbeSettings | None, project_scores: str | os.PathLike | None) -> ProbeSettings:
    """The probe settings recorded in ``project_scores`` when it has them, else ``settings`` or the challenge's."""
    recorded = recorded_probe_settings(project_scores) if project_scores is not None else None
    return recorded or settings or ProbeSettings()


@dataclass(frozen=True)
class _ServerRun:
    """What the submission gave on the RAMP rows: features per part, participant ids per part, the run's report."""

    rows: dict[str, Any]  # write_ramp_rows' counts and row length
    rows_seconds: float  # time to write the RAMP rows
    features: dict[str, np.ndarray]  # {"train", "test"}: (n, p) in row order
    ids: dict[str, np.ndarray]  # {"train", "test"}: (n,) participant ids in row order
    report: dict[str, Any]  # run_like_server's report


def _run_on_ramp_rows(
    submission: Path, data: str | os.PathLike, modality: str, layout: str, base: Path, started: float
) -> _ServerRun:
    """Write the data's RAMP rows into a temporary folder under ``base`` and run the submission on them there."""
    with tempfile.TemporaryDirectory(prefix=".submission-check.", dir=base) as tmp:
        tmp = Path(tmp)
        rows = write_ramp_rows(data, tmp / "ramp", modalities=[modality], layout=layout)
        rows_seconds = time.perf_counter() - started
        env = {f"{m.upper()}_MASK": str(tmp / "ramp" / "resource" / MODALITIES[m].mask_file) for m in MODALITIES}
        requests = [
            {"name": "train", "array": str(tmp / "ramp" / "train.npy"), "indices": list(range(rows["train"]))},
            {"name": "test", "array": str(tmp / "ramp" / "test.npy"), "indices": "range"},
        ]
        feats, server = run_like_server(submission, requests, env, tmp)
        tables = {
            part: pd.read_csv(tmp / "ramp" / f"{part}.tsv", sep="\t", dtype={"participant_id": str})
            for part in ("train", "test")
        }
    ids = {part: tables[part]["participant_id"].astype(str).to_numpy() for part in tables}
    return _ServerRun(rows, rows_seconds, feats, ids, server)


def _match_project_features(
    run: _ServerRun, project: dict[str, FeatureSplit], data: str | os.PathLike, rtol: float, atol: float
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple]]:
    """The submission's features of each split's subjects, compared with the project's.

    Returns:
        Per split, the comparison (see :func:`_compare`) and ``(features (n, p), ages (n,), sites (n,))``.

    Raises:
        SubmissionCheckError: a subject missing from the RAMP rows, another shape, or values beyond tolerance.
    """
    position = {part: {pid: i for i, pid in enumerate(run.ids[part])} for part in run.ids}
    comparison, triples = {}, {}
    for split in SPLITS:
        part = "train" if split == "train" else "test"
        wanted = project[split].participant_id.astype(str)
        absent = [pid for pid in wanted if pid not in position[part]]
        if absent:
            raise SubmissionCheckError(
                f"{split}: {len(absent)} subject(s) of the feature files are not in {data}, e.g. {absent[:3]}"
            )
        sub = run.features[part][[position[part][pid] for pid in wanted]]
        if sub.shape != project[split].features.shape:
            raise SubmissionCheckError(
                f"{split}: the submission gives features of shape {sub.shape}, the project "
                f"{project[split].features.shape}"
            )
        comparison[split] = _compare(sub, project[split].features, rtol, atol)
        triples[split] = (sub, project[split].age, project[split].site)
    bad = {s: c for s, c in comparison.items() if c["n_values_outside_tolerance"]}
    if bad:
        raise SubmissionCheckError(
            "the submission's features differ from the project's beyond tolerance "
            f"(rtol {rtol:g}, atol {atol:g}): "
            + "; ".join(
                f"{s}: {c['n_subjects_outside_tolerance']} subject(s), max |diff| {c['max_abs_diff']:.3g}"
                for s, c in bad.items()
            )
        )
    return comparison, triples


def _markdown(report: dict[str, Any]) -> str:
    s = report["scores"]
    lines = [
        f"# Submission check: {report['method']} seed {report['seed']}",
        "",
        f"Submission `{report['submission']}`: {report['feature_kind']} features ({report['n_features']} columns), "
        f"{report['modality']} grid / {report['factor']}.",
        "",
        "Run as the challenge server runs it (`get_estimator()`, `fit(None, None)`, `indices`, `predict` on "
        f"RAMP rows of {report['row_length']:,} values) in an interpreter where "
        + ", ".join(f"`{k}`" for k, v in report["server_run"]["refused_imports"].items() if v)
        + " cannot be imported.",
        "",
        "## Features vs the project's feature files",
        "",
        "| split | subjects | max abs diff | bitwise equal |",
        "| --- | --- | --- | --- |",
    ]
    for split, c in report["feature_comparison"].items():
        lines.append(f"| {split} | {report['n_subjects'][split]} | {c['max_abs_diff']:.3g} | {c['bitwise_equal']} |")
    lines += [
        "",
        f"All within rtol {report['tolerance']['rtol']:g}, atol {report['tolerance']['atol']:g}.",
        "",
        "## Challenge scores of the submission's features (score to expect on these subjects)",
        "",
        "| | Int. MAE | BAcc % | Ext. MAE | L_c |",
        "| --- | --- | --- | --- | --- |",
        f"| this check | {s['int_mae']:.3f} | {100 * s['bacc']:.2f} | {s['ext_mae']:.3f} | {s['challenge_score']:.3f} |",
    ]
    p = report.get("project_scores")
    if p and all(p.get(k) is not None for k in ("int_mae", "bacc", "ext_mae", "challenge_score")):
        lines.append(
            f"| project evaluation | {p['int_mae']:.3f} | {100 * p['bacc']:.2f} | {p['ext_mae']:.3f} | "
            f"{p['challenge_score']:.3f} |"
        )
    lines += [
        "",
        f"BAcc chance level: {100 * s['bacc_chance']:.2f} % ({s['n_sites_train']} training sites). "
        "L_c = BAcc^0.3 x Ext. MAE, lower is better. The server scores the private test set over "
        "3 folds of the public training set, so its numbers differ from these; this check shows that "
        "the submission reproduces the evaluated features and what they score under the same protocol.",
        "",
    ]
    return "\n".join(lines)
