"""A trained run -> an OpenBHB challenge submission folder (estimator.py, weights.pth, metadata.pkl).

``estimator.py`` is :mod:`brainage.submission.ramp_estimator` copied verbatim: a plain-PyTorch
ResNet-18 whose state-dict keys are those of :class:`brainage.models.BrainAgeNet`, plus the
preprocessing of the training cache. ``weights.pth`` holds ``{"model": state_dict}`` (tensors
only; read with ``torch.load(..., weights_only=True)``). ``metadata.pkl`` holds plain data only:
the preprocessing parameters, the cache-grid mask as ``numpy.packbits`` bytes, the network's
hyper-parameters, the feature kind and where the run came from.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainage import __version__
from brainage.data.cache import load_cache_mask
from brainage.data.modalities import MODALITIES
from brainage.errors import BrainAgeError, InputNotFoundError, OutputExistsError
from brainage.io import atomic_dir
from brainage.submission import ramp_estimator

__all__ = ["SUBMISSION_FILES", "SubmissionBuildError", "build_submission", "submission_metadata"]

log = logging.getLogger(__name__)

SUBMISSION_FILES: tuple[str, ...] = ("estimator.py", "weights.pth", "metadata.pkl")


class SubmissionBuildError(BrainAgeError):
    """A run that cannot become a challenge submission; the message says why."""


def _cache_of(info: dict[str, Any], cache: str | os.PathLike | None, model_path: Path) -> tuple[Path, dict]:
    from brainage.data.cache import check_trained_cache, locate_trained_cache

    identity = info.get("cache") or {}
    try:
        path, meta = locate_trained_cache(
            identity, cache, model_path, "its grid, mask and normalisation go into the submission"
        )
    except FileNotFoundError as err:
        raise SubmissionBuildError(str(err)) from err
    if "harmonization" in meta:
        raise SubmissionBuildError(
            f"{path} is a ComBat-harmonised cache: harmonisation needs each subject's site, which the challenge "
            "server does not give to a submission, so this run cannot be submitted"
        )
    try:
        check_trained_cache(identity, path, meta, model_path, "the submission must carry that cache's preprocessing")
    except ValueError as err:
        raise SubmissionBuildError(str(err)) from err
    return path, meta


def submission_metadata(
    run: str | os.PathLike, cache: str | os.PathLike | None = None, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and the state dict of the submission of a finished run.

    Args:
        run: training run folder (with ``model.pt``) or a model file.
        cache: the cache the run was trained on (default: the path recorded in the model file).
        kind: ``"projection"`` or ``"embedding"``; default as ``brainage features`` (the run's
            ``features`` option; always the embedding for L1 models).

    Returns:
        (plain-data metadata dict, CPU float state dict with BrainAgeNet's keys).

    Raises:
        FileNotFoundError: no model file.
        SubmissionBuildError: a harmonised or missing cache, an impossible feature kind, more than
            10,000 features, a cache not made by ``brainage preprocess``.
    """
    from brainage.training.checkpoint import load_model

    run = Path(run)
    model_path = run / "model.pt" if run.is_dir() else run
    if not model_path.is_file():
        raise InputNotFoundError(f"{model_path} not found: the run has not finished training")
    model, info = load_model(model_path, "cpu")
    config = info["config"]
    if config.method == "combat_l1":
        raise SubmissionBuildError(
            f"{model_path}: a combat_l1 run was trained on ComBat-harmonised images; the server gives raw images "
            "and no site labels, so the harmonisation cannot be reproduced in a submission"
        )
    cache_path, cache_meta = _cache_of(info, cache, model_path)
    for key in ("modality", "downsample", "normalize", "shape", "source_shape"):
        if key not in cache_meta:
            raise SubmissionBuildError(
                f"{cache_path}/cache.json has no {key!r}: not a cache written by brainage preprocess"
            )
    kind = _feature_kind(config, kind, model_path)
    n_features = _n_features(model, kind, model_path)
    mask = load_cache_mask(cache_path)
    if list(mask.shape) != list(cache_meta["shape"]):
        raise SubmissionBuildError(
            f"{cache_path}/mask.nii.gz has shape {mask.shape}, cache.json says {cache_meta['shape']}"
        )

    network = {
        "width": float(config.width),
        "head": config.head,
        "projection_dim": int(config.projection_dim),
        "projection_hidden": None if config.projection_hidden is None else int(config.projection_hidden),
        "in_channels": 1,
    }
    meta = _metadata(run, config, info, cache_meta, mask, network, kind, n_features)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    _check_network_copy(model, state, network, kind, meta["cache_shape"])
    return meta, state


def _feature_kind(config, kind: str | None, model_path: Path) -> str:
    """The submission's feature kind: always the embedding for L1 runs, else ``kind`` or the run's ``features``."""
    if not config.is_contrastive:
        if kind == "projection":
            raise SubmissionBuildError(
                f"{model_path}: an L1 model has no projection head; its features are the embedding"
            )
        kind = "embedding"
    kind = kind or config.features
    if kind not in ("projection", "embedding"):
        raise SubmissionBuildError(f"unknown feature kind {kind!r}; valid choices are: 'projection', 'embedding'")
    return kind


def _n_features(model: torch.nn.Module, kind: str, model_path: Path) -> int:
    """Feature columns of ``kind``; raises above the challenge's limit."""
    n_features = int(model.output_dim if kind == "projection" else model.embedding_dim)
    if n_features > ramp_estimator.MAX_FEATURES:
        raise SubmissionBuildError(
            f"{model_path}: {kind} features have {n_features} dimensions; the challenge accepts at most "
            f"{ramp_estimator.MAX_FEATURES}"
        )
    return n_features


def _metadata(
    run: Path,
    config,
    info: dict[str, Any],
    cache_meta: dict[str, Any],
    mask: np.ndarray,
    network: dict[str, Any],
    kind: str,
    n_features: int,
) -> dict[str, Any]:
    """``metadata.pkl``'s plain data: preprocessing, network, features and where the run came from.

    ``mask`` is the cache-grid mask, ``(X, Y, Z)`` bool, stored as ``numpy.packbits`` bytes.
    """
    modality = cache_meta["modality"]
    return {
        "format_version": ramp_estimator.FORMAT_VERSION,
        "created_by": f"brainage {__version__}",
        "run": run.resolve().name,  # the folder's name only: metadata.pkl goes to the challenge server
        "method": config.method,
        "seed": int(config.seed),
        "epochs": int(info.get("epoch", config.epochs)),
        "modality": modality,
        "mask_file": MODALITIES[modality].mask_file,
        "mask_threshold": float(MODALITIES[modality].threshold),
        "source_shape": [int(s) for s in cache_meta["source_shape"]],
        "factor": int(cache_meta["downsample"]),
        "normalize": str(cache_meta["normalize"]),
        "cache_shape": [int(s) for s in cache_meta["shape"]],
        "cache_dtype": "float16",
        "cache_signature": cache_meta.get("signature"),
        "cache_mask_bits": np.packbits(mask.ravel(order="C")).tobytes(),
        "n_cache_mask_voxels": int(mask.sum()),
        "network": network,
        "feature_kind": kind,
        "n_features": n_features,
        "age_mean": float(info.get("age_mean", float("nan"))),
        "age_std": float(info.get("age_std", float("nan"))),
    }


def _check_network_copy(
    model: torch.nn.Module, state: dict[str, torch.Tensor], network: dict[str, Any], kind: str, shape: list[int]
) -> None:
    """Load ``state`` into the estimator's network and compare its output with the project's on one input."""
    copy = ramp_estimator.BrainAgeNetwork(**network)
    try:
        copy.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SubmissionBuildError(f"the estimator's network does not accept the run's weights: {err}") from err
    copy.eval()
    side = [min(int(s), 40) for s in shape]
    x = torch.randn((2, 1, *side), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = model.features(x, kind)
        theirs = copy.features(x, kind)
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise SubmissionBuildError(
            f"the estimator's network differs from the project's on a test input (max |diff| "
            f"{(ours - theirs).abs().max().item():.3g}): estimator.py is out of date with brainage.models"
        )


def build_submission(
    run: str | os.PathLike,
    out: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    kind: str | None = None,
) -> Path:
    """Write ``out/`` = estimator.py + weights.pth + metadata.pkl for a finished run, atomically.

    The files are written to a temporary sibling folder that replaces ``out`` by a rename; an
    existing ``out`` must be an earlier submission (or empty).

    Returns:
        ``out``.

    Raises:
        FileExistsError: ``out`` exists and is neither empty nor a submission folder.
        See :func:`submission_metadata` for the rest.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputExistsError(f"{out} exists and is not a folder")
        content = {p.name for p in out.iterdir()}
        if content and not content <= set(SUBMISSION_FILES) | {"__pycache__"}:
            raise OutputExistsError(
                f"{out} holds other files ({sorted(content - set(SUBMISSION_FILES))[:5]}); "
                "choose an empty or new folder"
            )
    meta, state = submission_metadata(run, cache, kind)
    with atomic_dir(out) as tmp:
        (tmp / "estimator.py").write_text(Path(ramp_estimator.__file__).read_text())
        torch.save({"model": state}, tmp / "weights.pth")
        (tmp / "metadata.pkl").write_bytes(pickle.dumps(meta, protocol=4))
    log.info(
        "submission %s: %s %s features (%d) from %s, %s grid /%d",
        out,
        meta["method"],
        meta["feature_kind"],
        meta["n_features"],
        run,
        meta["modality"],
        meta["factor"],
    )
    return out
