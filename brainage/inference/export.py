"""A finished training run -> a :class:`~brainage.inference.bundle.ModelBundle` (``brainage export``).

Everything the bundle states is computed here from the run's own files:

- the network and its weights from ``model.pt``; the preprocessing from the training cache it
  records (``cache.json``, the masks) and from the OpenBHB folder the cache was built from (the
  source-grid mask);
- the readout (the regression head, or the challenge's Ridge probe fitted on the training
  subjects' features) and its predictions on the cache's held-out splits;
- the age-bias calibration ``pred = slope * age + intercept`` fitted on the **internal test**
  split (sites seen in training, subjects never used to train the network or the readout),
  with the errors of the bundle's own predictions on the internal and external test splits;
- the training cohort summary (ages, sex, sites) from the cache's training table;
- the QC ranges of the training subjects (:mod:`brainage.inference.qc`); while computing the
  intensity ranges from the source images, the bundle's preprocessing is run on them and must
  reproduce the cache's volumes (the check is recorded);
- the run's challenge scores from ``scores.json`` (``brainage evaluate``) when given.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from brainage import __version__
from brainage.data.cache import SPLITS, CacheSplit, TrainingCache, check_trained_cache, locate_trained_cache
from brainage.data.layouts import open_dataset, read_resources
from brainage.data.modalities import MODALITIES
from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.evaluation.brain_age_gap import AgeBiasCorrection, brain_age_gap, cross_fitted_corrected_gap
from brainage.evaluation.metrics import mae, pearson_r, rmse
from brainage.inference import qc
from brainage.inference.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, ModelBundle
from brainage.inference.cohort import cohort_summary
from brainage.inference.preprocessing import AFFINE_ATOL_MM, Preprocessing
from brainage.inference.readout import Readout, fit_ridge_readout
from brainage.inference.spatial import MAX_OBLIQUE_DEG, MIN_MASK_COVERAGE

__all__ = ["ExportError", "export_bundle"]

log = logging.getLogger(__name__)

#: Tolerances between stored features and the export's recomputation of a few rows: those of
#: the submission check on a GPU (TF32 convolutions, other batch compositions; configs/openbhb.yaml).
FEATURE_RTOL, FEATURE_ATOL = 0.02, 0.005
#: Largest relative difference between the bundle's preprocessing of a source image and the
#: cache's float16 volume: one float16 rounding step (2 ** -10), for values that fall on a
#: rounding boundary after float32 arithmetic in another order.
REPRODUCTION_RTOL = 2.0**-10
#: Folds of the internal test split's cross-fitted corrected gaps (as ``brainage evaluate --bias-cv``).
CALIBRATION_FOLDS = 5
#: Training rows whose network inputs are averaged at a time (bounded memory).
CHUNK = 16


class ExportError(BrainAgeError):
    """A run that cannot be exported; the message says why."""


def _open_run(run: Path, cache: str | os.PathLike | None):
    """``(model file, network, its metadata, cache folder, cache.json)`` of a finished, exportable run."""
    from brainage.training.checkpoint import load_model

    model_path = run / "model.pt" if run.is_dir() else run
    if not model_path.is_file():
        raise InputNotFoundError(f"{model_path} not found: the training run has not finished")
    model, info = load_model(model_path, "cpu")
    if info["config"].method == "combat_l1":
        raise ExportError(
            f"{model_path}: a combat_l1 model expects ComBat-harmonised images, which needs each new "
            "subject's site among the training sites; it cannot be applied to new scans"
        )
    identity = info.get("cache") or {}
    why = "its grid, masks, normalisation and held-out splits define the bundle"
    cache_path, meta = locate_trained_cache(identity, cache, model_path, why)
    if "harmonization" in meta:
        raise ExportError(f"{cache_path} is a ComBat-harmonised cache: its model needs each new subject's site")
    check_trained_cache(identity, cache_path, meta, model_path, why)
    missing = [k for k in ("modality", "downsample", "normalize", "shape", "source_shape", "affine") if k not in meta]
    if missing:
        raise ExportError(f"{cache_path}/cache.json has no {missing}: not a cache written by brainage preprocess")
    return model_path, model, info, cache_path, meta


def _source_preprocessing(cache: TrainingCache, meta: dict[str, Any], data: str | os.PathLike | None):
    """The bundle's :class:`Preprocessing` and the source data set (None when unavailable)."""
    modality, factor = meta["modality"], int(meta["downsample"])
    root = data if data is not None else meta.get("source")
    dataset = None
    if root is not None and Path(root).is_dir():
        dataset = open_dataset(root, layout="auto" if data is not None else meta.get("layout", "auto"))
        source_mask, source_affine = dataset.mask(modality), np.asarray(dataset.affine(modality), dtype=float)
    elif factor == 1:
        warnings.warn(
            f"the source data {root} is not available: the source mask is the cache's mask (downsample 1), "
            "and the bundle has no intensity QC ranges; pass --data to add them",
            UserWarning,
            stacklevel=3,
        )
        source_mask, source_affine = cache.mask, cache.affine
    else:
        raise InputNotFoundError(
            f"the OpenBHB folder the cache {cache.path} was built from ({root}) is not available: its source-grid mask "
            f"is needed to undo the block average by {factor}; pass --data"
        )
    try:
        prep = Preprocessing(
            modality,
            tuple(int(s) for s in meta["source_shape"]),
            source_affine,
            source_mask,
            MODALITIES[modality].threshold,
            factor,
            cache.mask,
            meta["normalize"],
        )
    except ValueError as err:
        raise ExportError(f"{root} does not hold the source of the cache {cache.path}: {err}") from err
    if not np.allclose(prep.affine, cache.affine, atol=AFFINE_ATOL_MM):
        raise ExportError(
            f"{root}: the {modality} mask's affine, block-averaged by {factor}, is not the affine of the "
            f"cache {cache.path}"
        )
    return prep, dataset


def _split_outputs(
    model,
    splits: dict[str, CacheSplit],
    kind: str,
    device: torch.device,
    batch_size: int,
    features: str | os.PathLike | None,
    age_mean: float,
    age_std: float,
):
    """``{split: (features (n, p), raw head output (n,) or None)}``, computed or read from ``features``."""
    from brainage.training.extract import predict_split

    def compute(split: CacheSplit, rows=slice(None)):
        return predict_split(model, split.volumes[rows], kind, device, batch_size, name=str(split.table_path))

    if features is None:
        return {name: compute(split) for name, split in splits.items()}
    from brainage.evaluation.features import load_feature_dir

    stored = load_feature_dir(features)
    out = {}
    for name, split in splits.items():
        entry = stored[name]
        if list(entry.participant_id) != list(split.participant_id):
            raise ExportError(f"{entry.path}: its participants are not the {name} split of the cache, in order")
        raw = None if entry.prediction is None else (entry.prediction - age_mean) / age_std
        out[name] = (entry.features, raw)
    train = splits["train"]
    rows = slice(0, min(2, len(train)))
    check, _ = compute(train, rows)
    if check.shape[1] != out["train"][0].shape[1] or not np.allclose(
        check, out["train"][0][rows], rtol=FEATURE_RTOL, atol=FEATURE_ATOL
    ):
        raise ExportError(
            f"{features}: the stored {kind} features differ from this run's on the first training subjects "
            f"(beyond rtol {FEATURE_RTOL}, atol {FEATURE_ATOL}): they were extracted from another model or kind"
        )
    return out


def _calibration(split: CacheSplit, predicted: np.ndarray, readout: Readout) -> dict[str, Any]:
    fitted_on = (
        f"internal_test split of the training cache: {len(split)} subjects from "
        f"{len(set(split.sites))} sites seen in training, held out from network training"
        + (" and from the Ridge readout" if readout.kind == "ridge" else "")
    )
    spec: dict[str, Any] = {
        "fitted_on": fitted_on,
        "model": "predicted = slope * age + intercept (least squares)",
        "correction": "corrected = (predicted - intercept) / slope",
        "min_slope": 0.05,
    }
    try:
        fit = AgeBiasCorrection(min_slope=spec["min_slope"]).fit(split.ages, predicted)
    except ValueError as err:
        warnings.warn(f"no age-bias calibration: {err}", UserWarning, stacklevel=3)
        return {**spec, "slope": None, "intercept": None, "n": len(split), "error": str(err)}
    return {
        **spec,
        "slope": fit.slope_,
        "intercept": fit.intercept_,
        "n": fit.n_calibration_,
        "age_range": [float(split.ages.min()), float(split.ages.max())],
    }


def _split_errors(
    split: CacheSplit, predicted: np.ndarray, corrected: np.ndarray | None, age_range: tuple[float, float]
) -> dict[str, Any] | None:
    """Errors of the bundle's predictions on one cache split (None when it is empty).

    ``corrected``: the split's age-bias-corrected gaps, each from a line not fitted on that subject.
    """
    if len(split) == 0:
        return None
    age = split.ages.astype(float)
    gap = brain_age_gap(predicted, age)
    several = len(split) > 1
    out: dict[str, Any] = {
        "n": len(split),
        "n_sites": len(set(split.sites)),
        "n_outside_training_ages": int(((age < age_range[0]) | (age > age_range[1])).sum()),
        "mae": mae(age, predicted),
        "rmse": rmse(age, predicted),
        "r": pearson_r(age, predicted) if several else None,
        "gap_mean": float(gap.mean()),
        "gap_std": float(gap.std(ddof=1)) if several else None,
        "gap_age_r": pearson_r(age, gap) if several else None,
    }
    if corrected is not None:
        out.update(
            corrected_gap_mean=float(corrected.mean()),
            corrected_gap_std=float(corrected.std(ddof=1)) if several else None,
            corrected_gap_age_r=pearson_r(age, corrected) if several else None,
        )
    return out


def _held_out_errors(
    splits: dict[str, CacheSplit],
    predicted: dict[str, np.ndarray],
    calibration: dict[str, Any],
    age_range: tuple[float, float],
) -> dict[str, Any]:
    """:func:`_split_errors` of the test splits; the internal subjects' corrected gaps are cross-fitted.

    The calibration line is fitted on the whole internal test split, so its own corrected gaps
    would be in-sample (mean 0 and uncorrelated with age by construction): as ``brainage
    evaluate`` does, each internal subject is corrected by a line fitted on the other folds.
    """
    internal, external = splits["internal_test"], splits["external_test"]
    corrected: dict[str, np.ndarray | None] = {"internal_test": None, "external_test": None}
    if calibration.get("slope") is not None:
        corrected["external_test"] = (predicted["external_test"] - calibration["intercept"]) / calibration[
            "slope"
        ] - external.ages.astype(float)
        try:
            corrected["internal_test"] = cross_fitted_corrected_gap(
                internal.ages, predicted["internal_test"], n_splits=CALIBRATION_FOLDS
            )
        except ValueError as err:
            log.info("no cross-fitted corrected gap on the internal test split: %s", err)
    return {
        name: _split_errors(splits[name], predicted[name], corrected[name], age_range)
        for name in ("internal_test", "external_test")
    }


def _masked_rows(volumes: np.ndarray, mask: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float64)[mask] for v in volumes[start:stop]])


def _reference_mean(train: CacheSplit, mask: np.ndarray, progress: bool) -> tuple[np.ndarray, list[float]]:
    """The training cohort's mean network input (model grid) and each subject's leave-one-out ``template_r``."""
    n = len(train)
    total = np.zeros(int(mask.sum()), dtype=np.float64)
    bar = tqdm(total=2 * n, desc="export: reference image", unit="vol", disable=not progress)
    for start in range(0, n, CHUNK):
        total += _masked_rows(train.volumes, mask, start, min(n, start + CHUNK)).sum(axis=0)
        bar.update(min(n, start + CHUNK) - start)
    mean = np.zeros(mask.shape, dtype=np.float32)
    mean[mask] = total / n
    r_values = []
    for start in range(0, n, CHUNK):
        for row in _masked_rows(train.volumes, mask, start, min(n, start + CHUNK)):
            others = (total - row) / (n - 1) if n > 1 else total
            x, y = row - row.mean(), others - others.mean()
            denominator = math.sqrt(float(x @ x) * float(y @ y))
            r_values.append(float(x @ y) / denominator if denominator > 0 else math.nan)
        bar.update(min(n, start + CHUNK) - start)
    bar.close()
    return mean, r_values


def _source_measures(
    train: CacheSplit, prep: Preprocessing, dataset, max_subjects: int, progress: bool
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """QC measures of up to ``max_subjects`` training images, and the check that the bundle reproduces the cache."""
    values: dict[str, list[float]] = {name: [] for name in ("signal_in_mask", "intensity_mean", "intensity_std")}
    if dataset is None or len(train) == 0 or max_subjects < 1:
        return values, {"n": 0, "note": "source images not available at export"}
    index = {pid: i for i, pid in enumerate(dataset.participants["participant_id"].astype(str))}
    rows = sorted({int(r) for r in np.linspace(0, len(train) - 1, min(len(train), max_subjects))})
    worst = 0.0
    for row in tqdm(rows, desc="export: source images", unit="vol", disable=not progress):
        pid = str(train.participant_id[row])
        if pid not in index:
            raise ExportError(f"participant {pid!r} of {train.table_path} is not in the source data {dataset.root}")
        volume = dataset.volume(index[pid], prep.modality)
        for name, value in qc.image_measures(volume, prep.source_mask).items():
            values[name].append(value)
        ours = prep.apply(volume).astype(np.float32)
        cached = np.asarray(train.volumes[row], dtype=np.float32)
        excess = np.abs(ours - cached) - REPRODUCTION_RTOL * np.maximum(np.abs(ours), np.abs(cached))
        if excess.max() > 0:
            voxel = tuple(int(v) for v in np.unravel_index(int(excess.argmax()), excess.shape))
            raise ExportError(
                f"the bundle's preprocessing of participant {pid!r} (source {dataset.root}) differs from its volume in "
                f"the cache {train.table_path.parent} at voxel {voxel}: {ours[voxel]} vs {cached[voxel]}; the source "
                "data changed since the cache was built, or the cache was made another way"
            )
        worst = max(worst, float(np.abs(ours - cached).max()))
    return values, {
        "n": len(rows),
        "max_abs_difference": worst,
        "rule": f"bundle preprocessing of the source image == cache volume (rtol {REPRODUCTION_RTOL:g})",
    }


def _scores(path: str | os.PathLike, config, n_features: int) -> dict[str, Any]:
    from brainage.evaluation.pipeline import SCORE_KEYS, read_scores

    path = Path(path)
    scores = read_scores(path)
    for key, value in (("method", config.method), ("seed", config.seed)):
        if scores.get(key) is not None and scores[key] != value:
            raise ExportError(f"{path}: scores of {key} {scores[key]!r}, but the run has {key} {value!r}")
    if scores.get("n_features") not in (None, n_features):
        warnings.warn(
            f"{path}: the scores were computed on {scores['n_features']} features, the bundle's readout "
            f"uses {n_features}",
            UserWarning,
            stacklevel=3,
        )
    keep = SCORE_KEYS + (
        "n_train",
        "n_internal",
        "n_external",
        "n_features",
        "n_sites_train",
        "alpha",
        "challenge_protocol",
        "head",
        "probe_settings",
        "ext_per_site_mae",
    )
    gap = scores.get("brain_age_gap") or {}
    return {
        "file": path.name,
        **{k: scores.get(k) for k in keep},
        "brain_age_gap": {
            k: gap.get(k)
            for k in ("slope", "intercept", "n_calibration", "corrected_gap_stats", "gap_age_r", "fitted_on")
        },
    }


def _run_name(run: Path) -> str:
    """The run's folder relative to the working directory when inside it, else its name (no local paths)."""
    folder = (run if run.is_dir() else run.parent).resolve()
    try:
        return str(folder.relative_to(Path.cwd().resolve()))
    except ValueError:
        return folder.name


def _probe_settings(scores: str | os.PathLike | None):
    """The probe settings ``scores.json`` was evaluated with (the challenge's when absent)."""
    from brainage.evaluation.pipeline import recorded_probe_settings
    from brainage.evaluation.protocol import ProbeSettings

    return (recorded_probe_settings(scores) if scores is not None else None) or ProbeSettings()


def export_bundle(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    scores: str | os.PathLike | None = None,
    features: str | os.PathLike | None = None,
    kind: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    qc_subjects: int = 256,
    progress: bool = True,
    command: str | Sequence[str] | None = None,
) -> ModelBundle:
    """Build the bundle of a finished run (see the module docstring) and write it to ``out`` if given.

    Args:
        run: training run folder (``model.pt``) or a model file.
        out: bundle folder to write (replaced if it is a bundle); ``None`` keeps it in memory.
        cache: the training cache (default: the path recorded in the model file).
        data: the OpenBHB folder the cache was built from (default: the path in ``cache.json``).
        scores: the run's ``scores.json`` (``brainage evaluate``): challenge scores for the card,
            and the probe settings of the Ridge readout.
        features: the run's feature folder (``brainage features``), to skip recomputing them; a
            few rows are recomputed and compared.
        kind: features of contrastive models (default: the run's ``features`` option).
        device: ``auto``, ``cpu``, ``cuda``...; default: the run's.
        batch_size: subjects per forward pass (default: the run's ``eval_batch_size``).
        qc_subjects: training images read from the source data for the QC intensity ranges.
        command: the command line, recorded as provenance.

    Raises:
        FileNotFoundError: no model, cache or (for a downsampled cache) source data.
        ExportError: a harmonised run, a cache or data of another run, a preprocessing that does
            not reproduce the cache, scores of another run.
    """
    from brainage.device import resolve_device
    from brainage.training.checkpoint import network_kwargs

    run = Path(run)
    model_path, model, info, cache_path, meta = _open_run(run, cache)
    config = info["config"]
    training_cache = TrainingCache(cache_path)
    prep, dataset = _source_preprocessing(training_cache, meta, data)
    kind = _feature_kind(config, kind, model_path)
    torch_device = resolve_device(device or config.device)
    model.to(torch_device)
    splits = {name: training_cache.split(name) for name in SPLITS}
    readout, predicted, n_features = _fit_readout(model, info, splits, kind, torch_device, batch_size, features, scores)
    calibration = _calibration(splits["internal_test"], predicted["internal_test"], readout)

    reference_mean, measures, reproduction = _training_image_qc(splits["train"], prep, dataset, qc_subjects, progress)
    resources = read_resources(dataset.root) if dataset is not None else {}
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    cohort = cohort_summary(splits["train"].table)
    spec = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created_by": f"brainage {__version__}",
        "network": {
            "class": "brainage.models.BrainAgeNet",
            "kwargs": network_kwargs(config),
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "model": {
            "method": config.method,
            "seed": int(config.seed),
            "epochs": int(info.get("epoch", config.epochs)),
            "run": _run_name(run),
            "training_config": config.to_dict(),
        },
        "readout": {**readout.to_spec(), "n_features": n_features},
        "preprocessing": prep.to_spec(),
        "calibration": calibration,
        "training_cohort": cohort,
        "qc": _qc_spec(measures, reproduction, cohort),
        "evaluation": {
            "bundle": _held_out_errors(splits, predicted, calibration, (cohort["age"]["min"], cohort["age"]["max"])),
            "scores": _scores(scores, config, n_features) if scores is not None else None,
        },
        "provenance": _provenance(command, model_path, cache_path, meta, info, dataset, resources),
    }
    bundle = ModelBundle(spec, state, prep, readout, reference_mean)
    if out is not None:
        bundle.save(out)
    return bundle


def _feature_kind(config, kind: str | None, model_path: Path) -> str:
    """The readout's features: ``kind`` or the run's ``features`` for contrastive runs, the embedding for L1 runs."""
    if config.is_contrastive:
        kind = kind or config.features
    elif kind == "projection":
        raise ExportError(f"{model_path}: an L1 model has no projection head")
    else:
        kind = "embedding"
    return kind


def _fit_readout(
    model,
    info: dict[str, Any],
    splits: dict[str, CacheSplit],
    kind: str,
    device: torch.device,
    batch_size: int | None,
    features: str | os.PathLike | None,
    scores: str | os.PathLike | None,
) -> tuple[Readout, dict[str, np.ndarray], int]:
    """The readout (Ridge on the training features, or the regression head) and its ``(n,)`` ages (years) per split.

    Returns:
        The readout, ``{split: predicted ages}`` and the number of feature columns.
    """
    config = info["config"]
    age_mean, age_std = float(info.get("age_mean", 0.0)), float(info.get("age_std", 1.0))
    outputs = _split_outputs(
        model, splits, kind, device, batch_size or config.eval_batch_size, features, age_mean, age_std
    )
    if config.is_contrastive:
        train = splits["train"]
        readout = fit_ridge_readout(
            outputs["train"][0],
            train.ages,
            kind,
            settings=_probe_settings(scores),
            fitted_on=f"train split of the training cache ({len(train)} subjects, the network's training subjects)",
        )
    else:
        readout = Readout("head", kind, age_mean=age_mean, age_std=age_std)
    predicted = {name: readout.predict(*outputs[name]) for name in SPLITS}
    return readout, predicted, int(outputs["train"][0].shape[1])


def _training_image_qc(
    train: CacheSplit, prep: Preprocessing, dataset, qc_subjects: int, progress: bool
) -> tuple[np.ndarray, dict[str, list[float]], dict[str, Any]]:
    """The mean training input (model grid), the training subjects' QC measures, the preprocessing check.

    See :func:`_reference_mean` and :func:`_source_measures`; ``template_r`` joins the measures.
    """
    reference_mean, template_r = _reference_mean(train, prep.mask, progress)
    measures, reproduction = _source_measures(train, prep, dataset, qc_subjects, progress)
    measures["template_r"] = template_r
    return reference_mean, measures, reproduction


def _qc_spec(measures: dict[str, list[float]], reproduction: dict[str, Any], cohort: dict[str, Any]) -> dict[str, Any]:
    """The ``qc`` entry of ``bundle.json``: rules, the training ranges of each measure, the training age range."""
    return {
        "rules": dict(qc.QC_RULES),
        "reference": {name: qc.summarize(values) for name, values in measures.items()},
        "age_range": [cohort["age"]["min"], cohort["age"]["max"]],
        "preprocessing_check": reproduction,
        "max_oblique_deg": MAX_OBLIQUE_DEG,
        "min_mask_coverage": MIN_MASK_COVERAGE,
    }


def _provenance(
    command: str | Sequence[str] | None,
    model_path: Path,
    cache_path: Path,
    meta: dict[str, Any],
    info: dict[str, Any],
    dataset,
    resources: dict[str, Any],
) -> dict[str, Any]:
    """The ``provenance`` entry of ``bundle.json``: the command and the names (never local paths) of the inputs."""
    identity = info.get("cache") or {}
    return {
        "command": command if isinstance(command, str) or command is None else " ".join(command),
        "model_file": model_path.name,
        "cache": cache_path.resolve().name,
        "cache_signature": meta.get("signature"),
        "cache_fingerprint": identity.get("fingerprint"),
        "data": Path(dataset.root).resolve().name if dataset is not None else None,
        "data_layout": getattr(dataset, "layout", None),
        "synthetic_data": bool(resources.get("synthetic", False)),
    }
