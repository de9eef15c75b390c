"""Training configuration: one validated dataclass shared by the CLI, the workflow and checkpoints."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainage.errors import BrainAgeError, ConfigError, InputNotFoundError
from brainage.losses.names import FORMULATIONS, KERNELIZED_METHODS, KERNELS
from brainage.models.names import FEATURE_KINDS

__all__ = [
    "AUGMENTATIONS",
    "CHOICES",
    "CONTRASTIVE_METHODS",
    "REGRESSION_METHODS",
    "METHODS",
    "TRISTATE_OPTIONS",
    "WORKFLOW_KEYS",
    "TrainConfig",
    "check_augmentations",
    "load_config_file",
]

REGRESSION_METHODS: tuple[str, ...] = ("l1", "combat_l1")
"""L1 regression on the cache's images; ``combat_l1`` is the same model trained on the
ComBat-harmonised cache (the cache is chosen by the caller, the training is identical)."""
CONTRASTIVE_METHODS: tuple[str, ...] = KERNELIZED_METHODS
"""Kernel contrastive losses of :class:`brainage.losses.KernelizedContrastiveLoss`."""
METHODS: tuple[str, ...] = REGRESSION_METHODS + CONTRASTIVE_METHODS

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("step", "cosine", "constant")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
TRISTATE: tuple[str, ...] = ("auto", "on", "off")
TRISTATE_OPTIONS: tuple[str, ...] = ("channels_last", "data_on_device")
"""Options that take :data:`TRISTATE` values; YAML 1.1 reads an unquoted on/off as a boolean, so
``True``/``False`` are accepted for them as ``"on"``/``"off"``."""

CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "kernel": KERNELS,
    "formulation": FORMULATIONS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
    "features": FEATURE_KINDS,
    **{name: TRISTATE for name in TRISTATE_OPTIONS},
}
"""The valid values of every option that takes a name."""

SPATIAL_AUGMENTATIONS: tuple[str, ...] = (
    "RandFlip",
    "RandAxisFlip",
    "RandRotate",
    "RandZoom",
    "RandAffine",
    "Rand3DElastic",
    "RandGridDistortion",
    "RandSimulateLowResolution",
)
INTENSITY_AUGMENTATIONS: tuple[str, ...] = (
    "RandGaussianNoise",
    "RandRicianNoise",
    "RandShiftIntensity",
    "RandStdShiftIntensity",
    "RandScaleIntensity",
    "RandScaleIntensityFixedMean",
    "RandBiasField",
    "RandAdjustContrast",
    "RandGaussianSmooth",
    "RandGaussianSharpen",
    "RandHistogramShift",
    "RandGibbsNoise",
    "RandKSpaceSpikeNoise",
    "RandCoarseDropout",
    "RandCoarseShuffle",
)
AUGMENTATIONS: tuple[str, ...] = SPATIAL_AUGMENTATIONS + INTENSITY_AUGMENTATIONS
"""The MONAI array transforms ``augmentations`` may name: random spatial and intensity transforms of
one ``(1, X, Y, Z)`` volume that keep its shape. Any other name is refused, because MONAI resolves
some arguments of other transforms as importable names (``LoadImage(reader="subprocess.Popen",
...)`` runs a command) or takes code (``RandLambda``)."""


def _plain_value(value: Any) -> bool:
    """A number (finite), string, boolean, null, or a (nested) list of them."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (list, tuple)) and all(_plain_value(v) for v in value)


def check_augmentations(specs: Any) -> None:
    """Raise :class:`~brainage.errors.ConfigError` unless ``specs`` is a list of allowed transforms.

    Each entry is ``{"name": <one of AUGMENTATIONS>, **arguments}`` whose arguments are plain
    values (:func:`_plain_value`); the message names the entry and the refused transform.
    """
    if not isinstance(specs, list):
        raise ConfigError(
            f"augmentations must be a list of {{'name': <transform>, **arguments}} mappings, got {specs!r}"
        )
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(
                f"augmentations[{i}]: expected a mapping {{'name': <transform>, **arguments}}, got {spec!r}"
            )
        name = spec["name"]
        if name not in AUGMENTATIONS:
            hint = difflib.get_close_matches(name, AUGMENTATIONS, n=1)
            raise ConfigError(
                f"augmentations[{i}]: {name!r} is not an allowed augmentation"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; allowed are these MONAI random spatial and intensity transforms: {', '.join(AUGMENTATIONS)}"
            )
        for key, value in spec.items():
            if key != "name" and not _plain_value(value):
                raise ConfigError(
                    f"augmentations[{i}] ({name}): argument {key!r} must be a finite number, a "
                    f"string, a boolean, null or a list of them, got {value!r}"
                )


def _choice(value: Any, valid: tuple[str, ...], name: str) -> None:
    if value not in valid:
        hint = difflib.get_close_matches(str(value), valid, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise BrainAgeError(f"unknown {name} {value!r}{extra}; valid choices are: {', '.join(map(repr, valid))}")


@dataclass
class TrainConfig:
    """Everything that determines a training run (the cache and the output folder aside).

    Defaults are the recipe of Barbano et al. (ISBI 2023) except ``epochs`` (300 there) and the
    method, which has no default. Two runs with equal configs on the same cache and device
    type produce the same weights on CPU.

    Attributes:
        method: one of :data:`METHODS`.
        seed: seeds the initial weights, the batch order (per epoch) and the augmentations.
        epochs: passes over the training split.
        batch_size: subjects per optimisation step (over all processes under DDP).
        views: views per subject for the contrastive losses (ignored by L1 methods, which see
            each subject once per step).
        augmentations: MONAI array transforms applied independently to each view, as
            ``{"name": "RandFlip", **kwargs}`` dicts (e.g. ``{"name": "RandGaussianNoise",
            "prob": 0.5, "std": 0.1}``); only the names in :data:`AUGMENTATIONS`. Empty (the
            reference) makes all views identical, and the trainer then runs one forward pass per
            subject and repeats its output.
        width: ``widen_factor`` of the ResNet-18 (1 = the published network).
        projection_dim: size of the normalised projection (128 in the paper).
        projection_hidden: hidden size of the projection head; ``None`` = the embedding size.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum ``momentum``, Nesterov off).
        lr: learning rate at the first epoch.
        weight_decay: L2 penalty of the optimiser (coupled, as ``torch.optim.Adam``).
        momentum: SGD momentum.
        schedule: ``"step"`` (times ``step_gamma`` every ``step_size`` epochs: the reference
            0.9 / 10), ``"cosine"`` (to 0 at the last epoch) or ``"constant"``.
        kernel, sigma, temperature, formulation: of the contrastive loss; sigma in years.
        standardize_ages: L1 methods regress ``(age - mean) / std`` of the training split and
            map predictions back to years; the L1 loss is then in units of that std, which only
            rescales the gradient, while the initial output already predicts the mean age.
        features: what ``brainage features`` extracts for contrastive models by default
            (``"projection"``, as the reference, or ``"embedding"``); L1 models always give
            the embedding.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"auto"`` = bf16 autocast on CUDA and fp32 on CPU; ``"bf16"`` is refused on
            the CPU (random NaN gradients of bf16 conv3d backward with torch 2.13).
        channels_last: ``channels_last_3d`` memory format; ``"auto"`` = on for CUDA.
        data_on_device: keep the whole training split on the device; ``"auto"`` = when it fits
            in half of the free device memory (host RAM for the CPU).
        sync_batchnorm: synchronise BatchNorm statistics across processes (CUDA + DDP only);
            off by default, so statistics are per process as with the reference's DataParallel.
        num_threads: CPU threads of torch (``None`` leaves torch's default).
        eval_batch_size: subjects per forward pass in feature extraction.
        progress: show a progress bar.
    """

    method: str
    seed: int = 0
    epochs: int = 300
    batch_size: int = 32
    views: int = 2
    augmentations: list[dict[str, Any]] = field(default_factory=list)
    width: float = 1.0
    projection_dim: int = 128
    projection_hidden: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 5e-5
    momentum: float = 0.9
    schedule: str = "step"
    step_size: int = 10
    step_gamma: float = 0.9
    kernel: str = "rbf"
    sigma: float = 2.0
    temperature: float = 0.1
    formulation: str = "reference"
    standardize_ages: bool = True
    features: str = "projection"
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    data_on_device: str = "auto"
    sync_batchnorm: bool = False
    num_threads: int | None = None
    eval_batch_size: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        for name in TRISTATE_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, bool):  # YAML 1.1 reads an unquoted on/off as a boolean
                setattr(self, name, "on" if value else "off")
        for name, valid in CHOICES.items():
            _choice(getattr(self, name), valid, name)
        for name in ("seed",):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise BrainAgeError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "views", "projection_dim", "step_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BrainAgeError(f"{name} must be a positive integer, got {value!r}")
        for name in ("width", "lr", "sigma", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a finite positive number, got {value!r}")
        if int(512 * self.width) < 1:
            raise BrainAgeError(f"width {self.width} leaves no channel in the last ResNet stage (512 * width < 1)")
        for name in ("weight_decay", "momentum"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite non-negative number, got {value!r}")
        if not 0 < self.step_gamma <= 1:
            raise BrainAgeError(f"step_gamma must be in (0, 1], got {self.step_gamma!r}")
        if self.projection_hidden is not None and (
            not isinstance(self.projection_hidden, int) or self.projection_hidden < 1
        ):
            raise BrainAgeError(f"projection_hidden must be a positive integer or null, got {self.projection_hidden!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise BrainAgeError(f"num_threads must be a positive integer or null, got {self.num_threads!r}")
        if not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise BrainAgeError(f"unknown device {self.device!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")
        check_augmentations(self.augmentations)

    @property
    def is_contrastive(self) -> bool:
        return self.method in CONTRASTIVE_METHODS

    @property
    def head(self) -> str:
        """The network head the method trains: ``"projection"`` or ``"regression"``."""
        return "projection" if self.is_contrastive else "regression"

    @property
    def n_views(self) -> int:
        """Views per subject actually used: ``views`` for contrastive methods, 1 for L1."""
        return self.views if self.is_contrastive else 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (stored in checkpoints and ``config.json``)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def check_keys(cls, values: dict[str, Any], source: str = "") -> None:
        """Raise ValueError for keys that are not options, with close matches and the valid names.

        Args:
            values: option mapping.
            source: where the mapping came from (a file), put at the start of the message.
        """
        names = cls.field_names()
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = {k: difflib.get_close_matches(str(k), names, n=1) for k in unknown}
            described = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise BrainAgeError(
                f"{source + ': ' if source else ''}unknown training option(s) {described}; "
                f"valid options are: {', '.join(names)}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are an error that lists the valid ones.

        Raises:
            ValueError: unknown keys, a missing ``method`` or an invalid value.
        """
        if not isinstance(values, dict):
            raise BrainAgeError(f"a training config must be a mapping, got {type(values).__name__}")
        cls.check_keys(values)
        if "method" not in values:
            raise BrainAgeError(f"the training config needs a method; valid methods are: {', '.join(METHODS)}")
        types = cls.field_types()
        coerced = {k: _coerce(k, v, types[k]) for k, v in values.items()}
        return cls(**coerced)

    def differences(self, other: TrainConfig, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: ``{name: (self's, other's)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


# Fields that change how a run executes but not the weights it ends with on a given device:
# a run may be resumed with different values.
RUNTIME_FIELDS: tuple[str, ...] = ("device", "data_on_device", "num_threads", "eval_batch_size", "progress", "features")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Accept ints for float fields (YAML ``1`` for ``1.0``); everything else is checked later."""
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise BrainAgeError(f"{name} must be true or false, got {value!r}")
    return value


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (or, by the ``.json`` suffix, JSON) mapping of training options.

    A file with a top-level ``train:`` section (a workflow config) is read from that section,
    ignoring the workflow-only keys ``methods``, ``seeds`` and ``threads``. YAML is read with
    ``yaml.safe_load``: tags that build Python objects (``!!python/...``) are refused.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not UTF-8, not valid YAML/JSON, not a mapping, a key that is not a training
            option or an invalid value; the message names the file.
    """
    from brainage.io import read_text

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"training config {path} not found")
    try:
        text = read_text(path)
    except BrainAgeError as err:
        raise ConfigError(str(err)) from None
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from err
    else:
        values = _safe_load_yaml(text, path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a training config must be a mapping of options, got {type(values).__name__}")
    if "train" in values and isinstance(values["train"], dict):
        values = {k: v for k, v in values["train"].items() if k not in WORKFLOW_KEYS}
    TrainConfig.check_keys(values, source=str(path))
    try:  # the values themselves, so that an error names this file
        TrainConfig.from_dict({"method": METHODS[0], **values})
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err
    return values


def _safe_load_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError as err:
        raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or pass a .json file") from err
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(
            f"{path}: a YAML tag that is not plain data ({err}); a config holds numbers, strings, "
            "booleans, lists and mappings only"
        ) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err


WORKFLOW_KEYS: tuple[str, ...] = ("methods", "seeds", "threads")
"""Keys of the workflow's ``train:`` section that are not :class:`TrainConfig` options."""
