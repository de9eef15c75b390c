"""Brain age of new images with a model bundle (``brainage predict``).

For every image (:mod:`brainage.inference.inputs`): header checks for all images first
(:func:`~brainage.inference.spatial.inspect_image`), then, a batch at a time, the voxels onto
the model's source grid (resampled when needed), the bundle's preprocessing, the network and
the readout. Memory holds one batch of volumes (plus what ``workers`` prefetch).

Writes ``out`` (CSV, one row per image, columns :data:`PREDICTION_COLUMNS`), a summary
``<out>.json`` (counts, errors when ages are given, the command) and a figure ``<out>.png``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from brainage import __version__
from brainage.errors import BrainAgeError, OutputExistsError
from brainage.inference import qc
from brainage.inference.bundle import ModelBundle, open_model
from brainage.inference.inputs import Scan, collect_scans
from brainage.inference.preprocessing import Preprocessing
from brainage.inference.spatial import ImageHeader, ImageRefused, inspect_image, load_on_source_grid
from brainage.io import save_json, save_table

__all__ = ["PREDICTION_COLUMNS", "predict_brain_age"]

log = logging.getLogger(__name__)

PREDICTION_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "session_id",
    "path",
    "age",
    "sex",
    "predicted_age",
    "brain_age_gap",
    "corrected_predicted_age",
    "corrected_brain_age_gap",
    "resampled",
    "resampling",
    "mask_coverage",
    *qc.QC_MEASURES,
    "age_outside_training_range",
    "predicted_age_outside_training_range",
    "flagged",
    "flag_reasons",
    "error",
)


class _Images(Dataset):
    """Item ``i``: the network input of image ``i`` and its QC measures, or why it was refused."""

    def __init__(self, headers: Sequence[ImageHeader | None], prep: Preprocessing, reference: np.ndarray) -> None:
        self.headers, self.prep, self.reference = headers, prep, reference

    def __len__(self) -> int:
        return len(self.headers)

    def __getitem__(self, index: int) -> dict[str, Any]:
        header = self.headers[index]
        if header is None:
            return {"index": index, "error": "refused at the header check"}
        try:
            volume, resampling = load_on_source_grid(header, self.prep)
        except ImageRefused as err:
            return {"index": index, "error": str(err)}
        measures = qc.image_measures(volume, self.prep.source_mask)
        try:
            x = self.prep.apply(volume)
        except ValueError as err:  # a value beyond float16 (normalize="none")
            return {"index": index, "error": f"{header.path}: {err}"}
        measures["template_r"] = qc.template_r(x, self.prep.mask, self.reference)
        return {
            "index": index,
            "error": "",
            "input": x,
            "resampling": resampling,
            "mask_coverage": header.mask_coverage,
            **measures,
        }


def _as_list(batch: list) -> list:
    return batch


def _row(scan: Scan, item: dict[str, Any], predicted: float, bundle: ModelBundle, correction) -> dict[str, Any]:
    """One output row: ids, ages, gaps, QC and flags."""
    age = scan.age
    row: dict[str, Any] = {
        "participant_id": scan.participant_id,
        "session_id": scan.session_id,
        "path": str(scan.path),
        "age": age,
        "sex": scan.sex,
        "predicted_age": predicted,
        "brain_age_gap": predicted - age if math.isfinite(age) else math.nan,
        "corrected_predicted_age": math.nan,
        "corrected_brain_age_gap": math.nan,
        "resampled": bool(item.get("resampling")) if not item.get("error") else None,
        "resampling": item.get("resampling", ""),
        "mask_coverage": item.get("mask_coverage", math.nan),
        **{name: item.get(name, math.nan) for name in qc.QC_MEASURES},
        "error": item.get("error", ""),
    }
    if correction is not None and math.isfinite(predicted):
        row["corrected_predicted_age"] = float(correction.correct([predicted])[0])
        if math.isfinite(age):
            row["corrected_brain_age_gap"] = row["corrected_predicted_age"] - age
    if row["error"]:
        reasons = ["refused"]
        row["age_outside_training_range"], row["predicted_age_outside_training_range"] = None, None
    else:
        reasons = qc.measure_flags(row, bundle.spec["qc"]["reference"])
        outside_age, outside_predicted = qc.age_flags(age, predicted, bundle.age_range)
        row["age_outside_training_range"], row["predicted_age_outside_training_range"] = outside_age, outside_predicted
        reasons += ["age_outside_training_range"] * bool(outside_age)
        reasons += ["predicted_age_outside_training_range"] * outside_predicted
    row["flagged"], row["flag_reasons"] = bool(reasons), ";".join(reasons)
    return row


def _summary(table: pd.DataFrame, bundle: ModelBundle, command: str | None, device: torch.device) -> dict[str, Any]:
    done = table[table["error"] == ""]
    known = done[np.isfinite(done["age"].astype(float))]
    summary: dict[str, Any] = {
        "command": command,
        "brainage_version": __version__,
        "device": str(device),
        "bundle": bundle.name,
        "bundle_created_by": bundle.spec.get("created_by"),
        "model": {k: bundle.spec["model"][k] for k in ("method", "seed", "run")},
        "n_images": int(len(table)),
        "n_predicted": int(len(done)),
        "n_refused": int(len(table) - len(done)),
        "n_flagged": int(done["flagged"].sum()),
        "n_resampled": int(done["resampled"].astype(bool).sum()),
        "n_with_age": int(len(known)),
    }
    if len(known):
        gap = known["brain_age_gap"].to_numpy(float)
        corrected = known["corrected_brain_age_gap"].to_numpy(float)
        summary.update(
            mae=float(np.mean(np.abs(gap))),
            gap_mean=float(gap.mean()),
            corrected_gap_mean=float(corrected.mean()) if np.isfinite(corrected).all() else None,
            corrected_gap_std=float(corrected.std(ddof=1)) if len(known) > 1 and np.isfinite(corrected).all() else None,
        )
    return summary


def predict_brain_age(
    model: str | os.PathLike | ModelBundle,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    select: Sequence[str] = (),
    device: str = "auto",
    batch_size: int = 4,
    workers: int = 0,
    skip_invalid: bool = False,
    figure: str | os.PathLike | None | bool = True,
    progress: bool = True,
    command: str | None = None,
    export_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Predict the brain age of every image and write ``out`` (see the module docstring).

    Args:
        model: a bundle folder, a training run (exported in memory), or a loaded bundle.
        images: files, BIDS folders and tables (:func:`brainage.inference.inputs.collect_scans`).
        out: the CSV to write.
        select: BIDS entities / suffix choosing one image per subject and session.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``
            (:func:`brainage.device.resolve_device`).
        batch_size: images per forward pass (memory: that many volumes).
        workers: processes reading and resampling images ahead of the network (0: in this one).
        skip_invalid: write refused images as rows with an ``error`` instead of stopping.
        figure: the figure's path; ``True`` = ``out`` with ``.png``; ``False``/``None`` = none.
        export_options: options of :func:`~brainage.inference.export.export_bundle` for a run.

    Returns:
        The table written to ``out``.

    Raises:
        ImageRefused: an image that cannot be used (unless ``skip_invalid``); nothing is written.
        FileNotFoundError, ValueError: a missing input, a bad table or BIDS folder, a bad bundle.
    """
    from brainage.device import resolve_device

    if batch_size < 1 or workers < 0:
        raise BrainAgeError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    out = Path(out)
    figure_path = (out.with_suffix(".png") if figure is True else Path(figure)) if figure else None
    for path in (out, out.with_suffix(".json"), figure_path):
        if path is not None and path.is_dir():  # refused before anything is written
            raise OutputExistsError(f"{path} is a folder, but predict writes a file there; give a file name")
    bundle = model if isinstance(model, ModelBundle) else open_model(model, **(export_options or {}))
    prep = bundle.preprocessing
    scans = collect_scans(images, select)
    headers, errors = _inspect_headers(scans, prep)
    if errors and not skip_invalid:
        raise ImageRefused(
            f"{len(errors)} of {len(scans)} image(s) cannot be used; nothing was written "
            f"(--skip-invalid predicts the others): " + " | ".join(list(errors.values())[:5])
        )
    torch_device = resolve_device(device)
    network = bundle.build_network(torch_device)
    correction = bundle.calibration()
    if correction is None:
        log.warning("%s has no age-bias calibration: the corrected columns stay empty", bundle.name)
    loader = DataLoader(
        _Images(headers, prep, bundle.reference_mean), batch_size=batch_size, num_workers=workers, collate_fn=_as_list
    )
    rows = _predict_rows(loader, scans, errors, network, bundle, correction, torch_device, skip_invalid, progress)
    table = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    save_table(out, table)
    summary = _summary(table, bundle, command, torch_device)
    save_json(out.with_suffix(".json"), summary)
    if figure:
        from brainage.inference.figures import plot_prediction_summary

        if summary["n_predicted"]:
            line = (correction.slope_, correction.intercept_) if correction is not None else None
            plot_prediction_summary(
                table,
                figure_path,
                bundle.age_range,
                line,
                title=f"{bundle.spec['model']['method']} seed {bundle.spec['model']['seed']}",
            )
    log.info(
        "%s: %d image(s) predicted, %d flagged, %d refused",
        out,
        summary["n_predicted"],
        summary["n_flagged"],
        summary["n_refused"],
    )
    return table


def _inspect_headers(scans: Sequence[Scan], prep: Preprocessing) -> tuple[list[ImageHeader | None], dict[int, str]]:
    """Every scan's header (``None`` when refused) and why each refused scan was, by scan index."""
    headers: list[ImageHeader | None] = []
    errors: dict[int, str] = {}
    for i, scan in enumerate(scans):
        try:
            headers.append(inspect_image(scan.path, prep))
        except (ImageRefused, FileNotFoundError) as err:
            headers.append(None)
            errors[i] = str(err)
    return headers, errors


def _predict_rows(
    loader: DataLoader,
    scans: Sequence[Scan],
    errors: dict[int, str],
    network: torch.nn.Module,
    bundle: ModelBundle,
    correction,
    device: torch.device,
    skip_invalid: bool,
    progress: bool,
) -> list[dict[str, Any] | None]:
    """One output row per scan, in scan order: the network and readout on each batch of usable images.

    Raises:
        ImageRefused: an image refused while it is read (unless ``skip_invalid``).
    """
    from brainage.training.extract import predict_split

    rows: list[dict[str, Any] | None] = [None] * len(scans)
    with tqdm(total=len(scans), desc="predict", unit="image", disable=not progress) as bar:
        for batch in loader:
            ready = []
            for item in batch:
                if item["error"]:
                    message = errors.get(item["index"], item["error"])
                    if not skip_invalid:
                        raise ImageRefused(f"{message}; nothing was written (--skip-invalid predicts the others)")
                    rows[item["index"]] = _row(scans[item["index"]], {"error": message}, math.nan, bundle, None)
                else:
                    ready.append(item)
            if ready:
                volumes = np.stack([item.pop("input") for item in ready])
                features, head = predict_split(
                    network,
                    volumes,
                    bundle.readout.features,
                    device,
                    batch_size=len(ready),
                    name=str(scans[ready[0]["index"]].path),
                )
                for item, age in zip(ready, bundle.readout.predict(features, head), strict=True):
                    rows[item["index"]] = _row(scans[item["index"]], item, float(age), bundle, correction)
            bar.update(len(batch))
    return rows
