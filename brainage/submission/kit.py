"""A local RAMP kit around a submission: ``problem.py``, ``data/``, masks, ``submissions/<name>/``.

``problem.py`` is :mod:`brainage.submission.ramp_problem` copied verbatim; with the kit written,
``ramp-test --submission <name> --quick-test`` (run in the kit folder, or with
``--ramp-kit-dir/--ramp-data-dir <kit> --ramp-submission-dir <kit>/submissions``) runs the
submission as the challenge server does and prints the challenge scores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from brainage.data.modalities import MODALITIES
from brainage.errors import ConfigError, InputNotFoundError
from brainage.io import make_folders
from brainage.submission.build import SUBMISSION_FILES

__all__ = ["PROBLEM_SOURCE", "SUBMISSION_NAME", "check_submission_name", "write_ramp_kit"]

#: The kit's problem.py (not imported here: it needs ramp-workflow, a test-only dependency).
PROBLEM_SOURCE = Path(__file__).with_name("ramp_problem.py")
#: A submission name: one folder under ``submissions/``, never a path out of the kit.
SUBMISSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_submission_name(name: str) -> str:
    """``name`` when it is a plain folder name for ``submissions/`` (:data:`SUBMISSION_NAME`).

    Raises:
        ConfigError: anything else, such as a path (``../x``).
    """
    if not SUBMISSION_NAME.fullmatch(name):
        raise ConfigError(
            f"submission name {name!r}: expected a folder name of letters, digits, '.', '_' and '-' (not a path), "
            "as `ramp-test --submission NAME` takes"
        )
    return name


def write_ramp_kit(
    kit: str | os.PathLike,
    rows: str | os.PathLike,
    submission: str | os.PathLike,
    name: str = "brainage",
    folds: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
) -> Path:
    """Lay out a RAMP kit in ``kit`` for ``ramp-test``.

    Args:
        kit: kit folder (created; ``problem.py``, ``data/``, ``submissions/`` are replaced).
        rows: a RAMP-layout folder (``train.npy``/``.tsv``, ``test.npy``/``.tsv``,
            ``resource/`` with both masks), e.g. from :func:`~brainage.submission.write_ramp_rows`.
            The arrays are linked, not copied.
        submission: a submission folder (``estimator.py``, ``weights.pth``, ``metadata.pkl``).
        name: the submission's name under ``submissions/``.
        folds: ``{fold: {"train": rows, "valid": rows}}`` over train.npy rows (``folds.json``);
            None: one fold on every train row.

    Returns:
        ``kit``.

    Raises:
        ConfigError: ``name`` is not a plain folder name (see :data:`SUBMISSION_NAME`).
        InputNotFoundError: a file of ``rows`` or ``submission`` is missing.
    """
    check_submission_name(name)
    kit, rows, submission = Path(kit), Path(rows).resolve(), Path(submission)
    missing = [
        p
        for p in [rows / f"{part}.{ext}" for part in ("train", "test") for ext in ("npy", "tsv")]
        + [rows / "resource" / m.mask_file for m in MODALITIES.values()]
        + [submission / f for f in SUBMISSION_FILES]
        if not p.is_file()
    ]
    if missing:
        raise InputNotFoundError(f"cannot write the RAMP kit: missing {[str(p) for p in missing]}")
    make_folders(kit)
    for stale in ("data", "submissions"):
        if (kit / stale).exists():
            shutil.rmtree(kit / stale)
    (kit / "problem.py").write_text(PROBLEM_SOURCE.read_text())
    (kit / "data").mkdir()
    for part in ("train", "test"):
        os.symlink(rows / f"{part}.npy", kit / "data" / f"{part}.npy")
        shutil.copyfile(rows / f"{part}.tsv", kit / "data" / f"{part}.tsv")
    for modality in MODALITIES.values():
        shutil.copyfile(rows / "resource" / modality.mask_file, kit / modality.mask_file)
    target = kit / "submissions" / name
    target.mkdir(parents=True)
    for f in SUBMISSION_FILES:
        shutil.copyfile(submission / f, target / f)
    folds_file = kit / "folds.json"
    if folds is None:
        folds_file.unlink(missing_ok=True)
    else:
        spec = {
            str(k): {"train": [int(i) for i in v["train"]], "valid": [int(i) for i in v["valid"]]}
            for k, v in folds.items()
        }
        folds_file.write_text(json.dumps(spec, indent=1))
    return kit
