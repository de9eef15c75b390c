"""Training of the brain-age networks and extraction of their frozen features.

- :mod:`~brainage.training.config`: :class:`TrainConfig`, validated options of a run.
- :mod:`~brainage.training.data`: the cache read with numpy, device-resident volumes, views.
- :mod:`~brainage.training.trainer`: :func:`train`, the resumable loop (contrastive or L1).
- :mod:`~brainage.training.distributed`: torchrun / DistributedDataParallel helpers.
- :mod:`~brainage.training.checkpoint`: checkpoint and model files (no pickle).
- :mod:`~brainage.training.extract`: :func:`extract_features` -> ``<split>.npz``.

Importable with torch, monai and numpy only (plus this package's :mod:`brainage.io`,
:mod:`brainage.device`, :mod:`brainage._lazy` and the models, losses and cache reader). Names are
resolved lazily, so ``brainage.training.config`` loads without torch (the CLI's help).
"""

from __future__ import annotations

from brainage._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_model": "checkpoint",
    "CONTRASTIVE_METHODS": "config",
    "METHODS": "config",
    "REGRESSION_METHODS": "config",
    "TrainConfig": "config",
    "load_config_file": "config",
    "extract_features": "extract",
    "TrainingDivergedError": "trainer",
    "train": "trainer",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
