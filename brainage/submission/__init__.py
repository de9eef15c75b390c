"""OpenBHB challenge submissions: build them from a trained run and check them locally.

- :mod:`~brainage.submission.ramp_estimator`: the self-contained ``estimator.py`` (numpy,
  nibabel, scikit-learn and torch only), copied verbatim into every submission.
- :mod:`~brainage.submission.build`: :func:`build_submission`, run -> submission folder.
- :mod:`~brainage.submission.rows`: :func:`write_ramp_rows`, RAMP-layout rows of a data folder.
- :mod:`~brainage.submission.check`: :func:`check_submission`, the estimator run as the
  server runs it, compared with the project's features and scored with the challenge probes.
- :mod:`~brainage.submission.kit`: :func:`write_ramp_kit`, a local RAMP kit (``problem.py``,
  ``data/``, ``submissions/``) for ``ramp-test``.
"""

from __future__ import annotations

from brainage._lazy import lazy_exports

_EXPORTS = {
    "SUBMISSION_FILES": "build",
    "SubmissionBuildError": "build",
    "build_submission": "build",
    "submission_metadata": "build",
    "write_ramp_rows": "rows",
    "check_submission": "check",
    "SubmissionCheckError": "check",
    "write_ramp_kit": "kit",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
