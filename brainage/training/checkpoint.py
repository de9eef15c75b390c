"""Checkpoints (resumable training state) and model files (final weights), without pickle.

Both are ``torch.save`` dicts of tensors and plain values, written atomically and read back
with ``torch.load(..., weights_only=True)``; every problem becomes a :class:`CheckpointError`
that names the file and what did not match.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.io import save_torch
from brainage.models import BrainAgeNet
from brainage.training.config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_FORMAT",
    "CheckpointError",
    "build_model",
    "load_file",
    "load_model",
    "load_state_strict",
    "network_kwargs",
    "save_file",
]

CHECKPOINT_FORMAT = "brainage-train-checkpoint"
MODEL_FORMAT = "brainage-model"
_UNPICKLER = "WeightsUnpickler error:"  # where torch's weights-only UnpicklingError names the cause
VERSION = 1


class CheckpointError(BrainAgeError):
    """A checkpoint or model file that cannot be used: unreadable, foreign or mismatched."""


def network_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The :class:`BrainAgeNet` keyword arguments of the network a config trains (JSON-ready)."""
    return {
        "widen_factor": float(config.width),
        "head": config.head,
        "projection_dim": int(config.projection_dim),
        "projection_hidden": None if config.projection_hidden is None else int(config.projection_hidden),
    }


def build_model(config: TrainConfig) -> BrainAgeNet:
    """The network a config trains (the caller seeds torch first for reproducible weights)."""
    return BrainAgeNet(**network_kwargs(config))


def save_file(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write a checkpoint or model dict atomically (the previous file survives a crash)."""
    return save_torch(path, payload)


def _reason(err: Exception) -> str:
    """The gist of torch's error for an unreadable file, on one line: its type and first non-empty line.

    For the weights-only unpickler it is the first sentence after ``WeightsUnpickler error:`` (the
    rest is advice on loading untrusted files, which brainage never does).
    """
    text = str(err)
    if _UNPICKLER in text:
        text = text.split(_UNPICKLER, 1)[1].strip().split(". ", 1)[0]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def load_file(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a checkpoint (``kind=CHECKPOINT_FORMAT``) or model file (``MODEL_FORMAT``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable (truncated, corrupted, pickled objects), another kind of
            file, or a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise CheckpointError(
            f"{path}: cannot be read as a {kind} file ({_reason(err)}); it is corrupted or was not written by brainage"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != kind:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {kind!r} file, found {found!r}")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: format version {payload.get('version')!r}, this brainage reads {VERSION}")
    for key in ("config", "model"):
        if key not in payload:
            raise CheckpointError(f"{path}: incomplete {kind} file, no {key!r} entry")
    return payload


def config_of(payload: dict[str, Any], path: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint or model file."""
    try:
        return TrainConfig.from_dict(dict(payload["config"]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid stored training config ({err})") from err


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``load_state_dict`` that reports missing, unexpected and mis-shaped entries by name.

    Raises:
        CheckpointError: any mismatch between ``state`` and ``model``.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} entr(ies), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} entr(ies), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
        raise CheckpointError(f"{path}: weights do not match the network: " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[BrainAgeNet, dict[str, Any]]:
    """Restore a trained model from ``model.pt`` (or from a training checkpoint).

    Returns:
        The network in eval mode on ``device`` and the file's metadata (``config`` as a
        :class:`TrainConfig`, ``age_mean``/``age_std`` in years, ``cache`` identity, ``epoch``).

    Raises:
        FileNotFoundError, CheckpointError: see :func:`load_file`.
    """
    path = Path(path)
    try:
        payload = load_file(path, MODEL_FORMAT)
    except CheckpointError as err:
        try:
            payload = load_file(path, CHECKPOINT_FORMAT)
        except CheckpointError:
            raise err from None
    config = config_of(payload, path)
    model = build_model(config)
    load_state_strict(model, payload["model"], path)
    model.to(device).eval()
    info = {k: v for k, v in payload.items() if k not in ("model", "optimizer", "scheduler", "rng")}
    info["config"] = config
    return model, info
