"""Training of the brain-age networks and extraction of their frozen features.

- :mod:`~brainage.training.config`: :class:`TrainConfig`, validated options of a run.
- :mod:`~brainage.training.data`: the cache read with numpy, device-resident volumes, views.
- :mod:`~brainage.training.trainer`: :func:`train`, the resumable loop (contrastive or L1).
- :mod:`~brainage.training.distributed`: torchrun / DistributedDataParallel helpers.
- :mod:`~brainage.training.checkpoint`: checkpoint and model files (no pickle).
- :mod:`~brainage.training.extract`: :func:`extract_features` -> ``<split>.npz``.

Importable with torch, monai and numpy only (plus this package's :mod:`brainage.io`). Names
are resolved lazily, so ``brainage.training.config`` loads without torch (the CLI's help).
"""

from __future__ import annotations

import importlib
from typing import Any

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
