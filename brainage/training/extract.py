"""Frozen features of a trained model for every split of a cache, for the challenge probes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from brainage.data.cache import SPLITS, open_split, read_cache_meta
from brainage.device import resolve_device
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.io import save_npz
from brainage.training.checkpoint import CheckpointError, load_model
from brainage.training.data import VolumeStore
from brainage.training.trainer import use_channels_last

__all__ = ["extract_features", "predict_split"]


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    volumes: np.ndarray,
    kind: str,
    device: torch.device,
    batch_size: int = 64,
    amp=None,
    channels_last: bool = False,
    name: str = "split",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and, for a regression model, raw head outputs) of every row of a split.

    Args:
        model: a :class:`brainage.models.BrainAgeNet` in eval mode on ``device``.
        volumes: ``(n, X, Y, Z)`` array.
        kind: ``"projection"`` or ``"embedding"``.

    Returns:
        ``(n, p)`` float32 features and ``(n,)`` float32 head outputs (regression models) or ``None``.
    """
    store = VolumeStore(volumes, device, resident=False, name=name)
    feats, outputs = [], []
    regression = getattr(model, "head_name", "") == "regression"
    for start in range(0, len(store), batch_size):
        x = store.batch(torch.arange(start, min(start + batch_size, len(store))))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with amp or contextlib.nullcontext():
            embedding = model.embed(x)
            if kind == "projection":
                feats.append(torch.nn.functional.normalize(model.head(embedding).float(), dim=1).cpu())
            else:
                feats.append(embedding.float().cpu())
            if regression:
                outputs.append(model.head(embedding)[:, 0].float().cpu())
    dim = model.output_dim if kind == "projection" else model.embedding_dim
    features = torch.cat(feats).numpy() if feats else np.zeros((0, dim), np.float32)
    prediction = (torch.cat(outputs).numpy() if outputs else np.zeros(0, np.float32)) if regression else None
    return features.astype(np.float32), prediction


def extract_features(
    run: str | os.PathLike,
    cache: str | os.PathLike,
    out: str | os.PathLike,
    kind: str | None = None,
    splits: Sequence[str] = SPLITS,
    device: str | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
) -> dict[str, Path]:
    """Write ``<out>/<split>.npz`` for every split: features, ages, sites, participant ids.

    Each file holds ``features`` (n, p) float32, ``age`` (n,) float32 years, ``site`` (n,)
    unicode, ``participant_id`` (n,) unicode, ``sex`` (n,) unicode when the cache table has it
    (for the sex probe) and, for L1 models, ``prediction`` (n,) float32 years. L1 models give the ``E``-d embedding; contrastive models the run's configured kind
    unless ``kind`` is given. All splits are computed and checked before any file is written.

    Args:
        run: training output folder (``model.pt``) or a model file.
        cache: cache folder whose splits are encoded (its grid must be the training grid).
        out: folder for the ``.npz`` files.
        kind: ``"projection"``, ``"embedding"`` or ``None`` (the run's ``features`` option).
        device: ``None`` = the run's device option, resolved here.
        batch_size: ``None`` = the run's ``eval_batch_size``.
        precision: ``"fp32"`` (default: the features are the deliverable, and inference is cheap)
            or ``"bf16"`` (autocast, as in training on CUDA; features then differ by ~1e-2).

    Raises:
        FileNotFoundError: no model in ``run``; missing cache files.
        CheckpointError: unreadable or mismatched model; a cache on another grid.
        ValueError: NaN/inf features (nothing written), unknown kind, projection of an L1 model.
    """
    if batch_size is not None and batch_size < 1:
        raise BrainAgeError(f"batch_size must be >= 1, got {batch_size}")
    run = Path(run)
    model_path = run / "model.pt" if run.is_dir() else run
    if run.is_dir() and not model_path.exists():
        raise InputNotFoundError(f"{model_path} not found: the training run in {run} has not finished")
    model, info = load_model(model_path, "cpu")
    config = info["config"]
    torch_device = resolve_device(device or config.device)
    model.to(torch_device)
    kind = _feature_kind(config, kind, model_path)
    grid = read_cache_meta(cache)["shape"]
    trained = list(info.get("cache", {}).get("shape", []))
    if trained and trained != list(grid):
        raise CheckpointError(
            f"{model_path}: trained on a {tuple(trained)} grid, but the cache {cache} has {tuple(grid)}"
        )
    channels_last = use_channels_last(config, torch_device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if precision not in ("fp32", "bf16"):
        raise BrainAgeError(f"unknown precision {precision!r}; valid choices are: 'fp32', 'bf16'")
    amp = torch.autocast(torch_device.type, dtype=torch.bfloat16) if precision == "bf16" else None

    results = {
        split: _split_arrays(
            model,
            info,
            model_path,
            cache,
            split,
            kind,
            torch_device,
            batch_size or config.eval_batch_size,
            amp,
            channels_last,
        )
        for split in splits
    }
    out = Path(out)
    return {split: save_npz(out / f"{split}.npz", **arrays) for split, arrays in results.items()}


def _feature_kind(config, kind: str | None, model_path: Path) -> str:
    """``kind`` or the run's ``features`` for contrastive models; the embedding for L1 models."""
    regression = not config.is_contrastive
    if regression:
        if kind == "projection":
            raise BrainAgeError(f"{model_path}: an L1 model has no projection head; its features are the embedding")
        kind = "embedding"
    else:
        kind = kind or config.features
    if kind not in ("projection", "embedding"):
        raise BrainAgeError(f"unknown feature kind {kind!r}; valid choices are: 'projection', 'embedding'")
    return kind


def _split_arrays(
    model: torch.nn.Module,
    info: dict,
    model_path: Path,
    cache: str | os.PathLike,
    split: str,
    kind: str,
    device: torch.device,
    batch_size: int,
    amp,
    channels_last: bool,
) -> dict[str, np.ndarray]:
    """The arrays of ``<split>.npz`` (see :func:`extract_features`); raises on NaN/inf features."""
    arrays = open_split(cache, split)
    features, raw = predict_split(
        model, arrays.volumes, kind, device, batch_size, amp, channels_last, name=f"{cache}/{split}"
    )
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise BrainAgeError(
            f"{model_path}: {int(bad.sum())} of {len(bad)} {split} subject(s) have NaN/inf features "
            f"(first: {arrays.participant_id[np.flatnonzero(bad)[0]]}); nothing was written"
        )
    entry = {
        "features": features,
        "age": arrays.ages.astype(np.float32),
        "site": arrays.sites.astype(str),
        "participant_id": arrays.participant_id.astype(str),
    }
    if arrays.sex is not None:
        entry["sex"] = arrays.sex.astype(str)
    if raw is not None:
        entry["prediction"] = (raw * float(info["age_std"]) + float(info["age_mean"])).astype(np.float32)
    return entry
