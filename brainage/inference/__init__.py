"""Applying a trained model to new scans: the portable model bundle and brain-age prediction.

- :mod:`~brainage.inference.bundle`: :class:`ModelBundle`, the versioned bundle folder (save,
  load, checksums), :func:`open_model` (a bundle, or a run exported in memory).
- :mod:`~brainage.inference.export`: :func:`export_bundle`, a finished run -> bundle
  (``brainage export``).
- :mod:`~brainage.inference.predict`: :func:`predict_brain_age`, images -> predictions CSV
  (``brainage predict``).
- :mod:`~brainage.inference.preprocessing`: :class:`Preprocessing`, source grid -> network input.
- :mod:`~brainage.inference.spatial`: image checks and resampling onto the model's grid.
- :mod:`~brainage.inference.inputs`: files, BIDS folders and tables of paths -> :class:`Scan`.
- :mod:`~brainage.inference.readout`: network output -> age (regression head or Ridge).
- :mod:`~brainage.inference.qc`: quality-control measures and flags.
- :mod:`~brainage.inference.cohort`: the training-cohort summary.
- :mod:`~brainage.inference.card`: ``MODEL_CARD.md``.
- :mod:`~brainage.inference.figures`: the prediction summary figure.
"""

from __future__ import annotations

from brainage._lazy import lazy_exports

_EXPORTS = {
    "BundleError": "bundle",
    "ModelBundle": "bundle",
    "open_model": "bundle",
    "ExportError": "export",
    "export_bundle": "export",
    "ImageRefused": "spatial",
    "Preprocessing": "preprocessing",
    "Scan": "inputs",
    "collect_scans": "inputs",
    "PREDICTION_COLUMNS": "predict",
    "predict_brain_age": "predict",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
