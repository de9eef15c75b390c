"""The portable model bundle: one folder that holds everything needed to apply a trained model.

Layout (format ``brainage-model-bundle``, version :data:`BUNDLE_VERSION`)::

    bundle/
      bundle.json            what the model is and expects (written last: a bundle is finished
                             when it has one): network, readout, preprocessing, age-bias
                             calibration, training cohort, QC ranges, evaluation, provenance,
                             and the SHA-256 of every other file
      weights.pt             torch.save dict of tensors (torch.load(..., weights_only=True)):
                             "model" (BrainAgeNet state dict), "readout_coef" (ridge readouts)
      source_mask.nii.gz     the mask on the source grid (uint8, with its affine)
      mask.nii.gz            the mask on the model grid
      reference_mean.nii.gz  the training cohort's mean network input (float32, model grid)
      MODEL_CARD.md          the model card, written from bundle.json

The network is rebuilt from the recorded ``network`` keyword arguments through
:class:`brainage.models.BrainAgeNet` and its weights loaded strictly (every missing,
unexpected or mis-shaped entry is named).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from brainage.errors import BrainAgeError, InputNotFoundError, OutputExistsError
from brainage.inference.preprocessing import AFFINE_ATOL_MM, Preprocessing
from brainage.inference.readout import Readout
from brainage.io import atomic_dir, check_fields, read_json

__all__ = [
    "BUNDLE_FILES",
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "BundleError",
    "ModelBundle",
    "is_bundle",
    "open_model",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "brainage-model-bundle"
BUNDLE_VERSION = 1
WEIGHTS_FORMAT = "brainage-bundle-weights"
BUNDLE_FILES: tuple[str, ...] = (
    "bundle.json",
    "weights.pt",
    "source_mask.nii.gz",
    "mask.nii.gz",
    "reference_mean.nii.gz",
    "MODEL_CARD.md",
)


class BundleError(BrainAgeError):
    """A bundle that cannot be used: incomplete, altered, of a newer format, or inconsistent."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_image(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    img.set_sform(img.affine, code="mni")
    img.set_qform(img.affine, code="mni")
    nib.save(img, path)


@dataclass(eq=False)
class ModelBundle:
    """A trained model with everything needed to apply it to new images.

    Attributes:
        spec: the content of ``bundle.json`` (without ``files``).
        state: the network's state dict (CPU tensors).
        preprocessing: grids, masks and intensity steps of the input.
        readout: network output -> age.
        reference_mean: ``(X', Y', Z')`` float32 mean network input of the training cohort.
        path: the folder it was read from (None when built in memory).
    """

    spec: dict[str, Any]
    state: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    readout: Readout
    reference_mean: np.ndarray
    path: Path | None = None

    @property
    def name(self) -> str:
        """How messages and outputs refer to the bundle."""
        return str(self.path) if self.path is not None else f"{self.spec['model']['run']} (exported in memory)"

    @property
    def age_range(self) -> tuple[float, float]:
        """The training cohort's age range (years)."""
        ages = self.spec["training_cohort"]["age"]
        return float(ages["min"]), float(ages["max"])

    def build_network(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """:class:`brainage.models.BrainAgeNet` from the recorded configuration, weights loaded, eval mode.

        Raises:
            BundleError: the configuration or the weights do not fit this version's network.
        """
        from brainage.models import BrainAgeNet
        from brainage.training.checkpoint import CheckpointError, load_state_strict

        where = self.path / "weights.pt" if self.path is not None else self.name
        kwargs = self.spec["network"]["kwargs"]
        try:
            network = BrainAgeNet(**kwargs)
        except (TypeError, ValueError) as err:
            raise BundleError(
                f"{self.name}: the recorded network BrainAgeNet({kwargs}) cannot be built ({err})"
            ) from err
        try:
            load_state_strict(network, self.state, where)
        except CheckpointError as err:
            raise BundleError(f"{err} (bundle written by {self.spec.get('created_by')})") from err
        return network.to(device).eval()

    def calibration(self):
        """The age-bias correction fitted at export (:class:`~brainage.evaluation.AgeBiasCorrection`), or None."""
        from brainage.evaluation.brain_age_gap import AgeBiasCorrection

        spec = self.spec.get("calibration") or {}
        if spec.get("slope") is None:
            return None
        correction = AgeBiasCorrection(min_slope=float(spec.get("min_slope", 0.05)))
        correction.slope_ = float(spec["slope"])
        correction.intercept_ = float(spec["intercept"])
        correction.n_calibration_ = int(spec["n"])
        return correction

    # ------------------------------------------------------------------ files

    def save(self, out: str | os.PathLike) -> Path:
        """Write the bundle folder atomically (an existing bundle at ``out`` is replaced).

        Raises:
            FileExistsError: ``out`` exists and is not a bundle (nor empty).
        """
        from brainage.inference.card import render_model_card

        out = Path(out)
        if out.exists():
            content = {p.name for p in out.iterdir()} if out.is_dir() else None
            if content is None or (content and not is_bundle(out)):
                raise OutputExistsError(f"{out} exists and is not a model bundle; choose a new or empty folder")
        prep = self.preprocessing
        with atomic_dir(out) as tmp:
            payload: dict[str, Any] = {"format": WEIGHTS_FORMAT, "version": BUNDLE_VERSION, "model": self.state}
            if self.readout.coef is not None:
                payload["readout_coef"] = torch.from_numpy(np.asarray(self.readout.coef, dtype=np.float64))
            torch.save(payload, tmp / "weights.pt")
            _save_image(tmp / "source_mask.nii.gz", prep.source_mask.astype(np.uint8), prep.source_affine)
            _save_image(tmp / "mask.nii.gz", prep.mask.astype(np.uint8), prep.affine)
            _save_image(tmp / "reference_mean.nii.gz", self.reference_mean.astype(np.float32), prep.affine)
            (tmp / "MODEL_CARD.md").write_text(render_model_card(self.spec))
            files = {name: _sha256(tmp / name) for name in BUNDLE_FILES if name != "bundle.json"}
            (tmp / "bundle.json").write_text(json.dumps({**self.spec, "files": files}, indent=2, sort_keys=True) + "\n")
        self.path = out
        log.info("model bundle written to %s", out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelBundle:
        """Read and verify a bundle folder.

        Raises:
            FileNotFoundError: no ``bundle.json``.
            BundleError: another format, a newer version, a file missing or altered (checksum),
                inconsistent masks and grids.
        """
        path = Path(path)
        index = path / "bundle.json"
        if not index.is_file():
            raise InputNotFoundError(f"{index} not found: {path} is not a finished model bundle (brainage export)")
        spec = read_json(index, "the bundle.json of a model bundle")
        if spec.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{index}: format {spec.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        if spec.get("format_version") != BUNDLE_VERSION:
            raise BundleError(
                f"{index}: format version {spec.get('format_version')!r}; this brainage reads "
                f"{BUNDLE_VERSION} (written by {spec.get('created_by')})"
            )
        _check_spec(spec, index)
        files = spec.pop("files", {})
        for name in BUNDLE_FILES[1:]:
            file = path / name
            if not file.is_file():
                raise BundleError(f"{path}: {name} is missing")
            if files.get(name) != _sha256(file):
                raise BundleError(
                    f"{file}: its SHA-256 differs from the one in bundle.json: the file was altered "
                    "or replaced after export"
                )
        payload = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT or "model" not in payload:
            raise BundleError(f"{path / 'weights.pt'}: not a bundle weights file")
        source_mask = _read_mask(path / "source_mask.nii.gz", spec["preprocessing"]["source_grid"]["affine"])
        mask = _read_mask(path / "mask.nii.gz", spec["preprocessing"]["model_grid"]["affine"])
        try:
            prep = Preprocessing.from_spec(spec["preprocessing"], source_mask, mask)
        except ValueError as err:
            raise BundleError(f"{index}: {err}") from err
        coef = payload.get("readout_coef")
        try:
            readout = Readout.from_spec(spec["readout"], None if coef is None else coef.numpy())
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(
                f"{index}: the readout entry {spec['readout']} is incomplete or malformed ({err})"
            ) from err
        reference = np.asarray(nib.load(path / "reference_mean.nii.gz").dataobj, dtype=np.float32)
        if reference.shape != prep.shape:
            raise BundleError(f"{path / 'reference_mean.nii.gz'}: shape {reference.shape}, model grid {prep.shape}")
        return cls(spec, payload["model"], prep, readout, reference, path)


#: The entries of ``bundle.json`` that loading and predicting read, as (keys, kind), parents first.
_SPEC_FIELDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("model",), "object"),
    (("model", "method"), "string"),
    (("model", "seed"), "integer"),
    (("network",), "object"),
    (("network", "kwargs"), "object"),
    (("preprocessing",), "object"),
    (("preprocessing", "source_grid"), "object"),
    (("preprocessing", "source_grid", "affine"), "list"),
    (("preprocessing", "model_grid"), "object"),
    (("preprocessing", "model_grid", "affine"), "list"),
    (("readout",), "object"),
    (("training_cohort",), "object"),
    (("training_cohort", "age"), "object"),
    (("training_cohort", "age", "min"), "number"),
    (("training_cohort", "age", "max"), "number"),
    (("qc",), "object"),
    (("qc", "reference"), "object"),
)
_CALIBRATION_FIELDS = {"slope": "number", "intercept": "number", "n": "integer", "min_slope": "number"}


def _check_spec(spec: dict[str, Any], index: Path) -> None:
    """Refuse a ``bundle.json`` (edited by hand) that lacks an entry or has one of another kind."""
    for keys, kind in _SPEC_FIELDS:
        parent = spec
        for key in keys[:-1]:
            parent = parent[key]
        where = f"{index}, {'.'.join(keys[:-1])}" if len(keys) > 1 else index
        if parent.get(keys[-1]) is None:
            raise BundleError(f"{where}: no {keys[-1]!r} entry; re-export the bundle with `brainage export`")
        check_fields(parent, {keys[-1]: kind}, where)
    calibration = check_fields(spec, {"calibration": "object"}, index).get("calibration") or {}
    check_fields(calibration, _CALIBRATION_FIELDS, f"{index}, calibration")
    if calibration.get("slope") is not None and (calibration.get("intercept") is None or calibration.get("n") is None):
        raise BundleError(f"{index}, calibration: a slope without its intercept and n")


def _read_mask(path: Path, affine: list) -> np.ndarray:
    img = nib.load(path)
    if not np.allclose(img.affine, np.asarray(affine, dtype=float), atol=AFFINE_ATOL_MM):
        raise BundleError(f"{path}: its affine differs from the grid recorded in bundle.json")
    return np.asarray(img.dataobj) > 0


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished bundle folder (has a ``bundle.json`` of this format)."""
    index = Path(path) / "bundle.json"
    try:
        return index.is_file() and read_json(index).get("format") == BUNDLE_FORMAT
    except BrainAgeError:
        return False


def open_model(path: str | os.PathLike, **export_options: Any) -> ModelBundle:
    """A bundle folder, or a training run (folder with ``model.pt``, or the file) exported in memory.

    Args:
        export_options: passed to :func:`brainage.inference.export.export_bundle` for a run.

    Raises:
        FileNotFoundError: neither a bundle nor a finished run.
    """
    path = Path(path)
    if (path / "bundle.json").is_file():
        return ModelBundle.load(path)
    if (path.is_dir() and (path / "model.pt").is_file()) or (path.is_file() and path.suffix == ".pt"):
        from brainage.inference.export import export_bundle

        log.info("%s is a training run, not a bundle: exporting it in memory (brainage export saves it)", path)
        return export_bundle(path, **export_options)
    raise InputNotFoundError(f"{path}: neither a model bundle (bundle.json) nor a finished training run (model.pt)")
