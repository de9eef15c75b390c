"""OpenBHB challenge submission: frozen brain-age features from RAMP rows.

Written by ``brainage submission`` next to ``weights.pth`` and ``metadata.pkl``; it needs
only numpy, nibabel, scikit-learn and torch (not brainage, not MONAI).

How the challenge server drives it:

1. ``est = get_estimator()`` returns a one-step scikit-learn Pipeline;
2. ``est.fit(None, None)`` restores the network from ``weights.pth`` and the preprocessing
   from ``metadata.pkl`` and reads the masks named by ``VBM_MASK`` / ``QUASIRAW_MASK``;
3. the server sets ``indices`` on the feature step (row indices of the fold, or
   ``range(len(X))``, or None for all rows) and calls ``est.predict(X)`` on the whole
   memory-mapped array ``X`` (n, 3,659,572) float32; only the rows in ``indices`` are read,
   in that order, a batch at a time.

Per row: the modality's block of the row (vbm voxels | quasiraw voxels | surfaces | ROIs) is
put back on the mask grid (C order over the mask array, the mask image's own x, y, z axes),
averaged over ``factor``^3 blocks (ceil mode: edge blocks average the voxels they hold),
z-scored within the training cache's mask (float64 statistics), rounded to float16 as the
training cache stores it, and passed through the 3D ResNet-18 in float32.

``metadata.pkl`` holds plain data only (dicts, lists, strings, numbers, bytes); it is read
with an unpickler that refuses every class or function reference.
"""

from __future__ import annotations

import io
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel
import nibabel.filebasedimages
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn

FORMAT_VERSION = 1
MAX_FEATURES = 10_000
MASK_ENV = {"vbm": "VBM_MASK", "quasiraw": "QUASIRAW_MASK"}
MASK_THRESHOLDS = {"vbm": 0.05, "quasiraw": 0.0}
# Lengths of the blocks after the two voxel blocks: xhemi (8 x 163,842), vbm_roi (284),
# desikan_roi (7 x 68), destrieux_roi (7 x 148).
TAIL_LENGTH = 8 * 163_842 + 284 + 7 * 68 + 7 * 148
HERE = Path(__file__).resolve().parent


class SubmissionError(ValueError):
    """Input the submission cannot process; the message says what was expected."""


# --------------------------------------------------------------------------- network


class ResidualBlock(nn.Module):
    """Basic 3-D residual block: two 3x3x3 convolutions, identity or 1x1x1 projection shortcut.

    Same parameter names and operation order as MONAI's ``ResNetBlock`` with shortcut type
    "B" and ``bias_downsample=False`` (no bias in the shortcut convolution, as the reference).
    """

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(channels)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm3d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut
        return self.act(out)


class ResNet18Encoder(nn.Module):
    """3-D ResNet-18 (He et al., CVPR 2016) with a stride-2 7x7x7 stem and global average pooling.

    Maps ``(B, C, X, Y, Z)`` volumes to ``(B, int(512 * width))`` embeddings. Stage widths are
    ``int(w * width)`` for w in (64, 128, 256, 512), as MONAI's ``widen_factor``.
    """

    def __init__(self, width: float = 1.0, in_channels: int = 1) -> None:
        super().__init__()
        widths = [int(w * width) for w in (64, 128, 256, 512)]
        self.conv1 = nn.Conv3d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(widths[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        previous = widths[0]
        for i, (channels, stride) in enumerate(zip(widths, (1, 2, 2, 2))):  # noqa: B905 (no strict=: the server's Python may predate 3.10)
            stage = nn.Sequential(ResidualBlock(previous, channels, stride), ResidualBlock(channels, channels, 1))
            self.add_module(f"layer{i + 1}", stage)
            previous = channels
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.out_channels = widths[3]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).view(x.shape[0], -1)


class BrainAgeNetwork(nn.Module):
    """The trained model: encoder plus a projection head (contrastive) or a linear age head (L1).

    Args:
        width: encoder width factor.
        head: ``"projection"`` (Linear(E, H) - ReLU - Linear(H, P), L2-normalised output) or
            ``"regression"`` (Linear(E, 1)).
        projection_dim: P.
        projection_hidden: H (None: E).
        in_channels: input channels.
    """

    def __init__(
        self,
        width: float,
        head: str,
        projection_dim: int = 128,
        projection_hidden: int | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder(width, in_channels)
        dim = self.encoder.out_channels
        self.head_name = head
        if head == "projection":
            hidden = dim if projection_hidden is None else int(projection_hidden)
            self.head: nn.Module = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, int(projection_dim))
            )
        elif head == "regression":
            self.head = nn.Linear(dim, 1)
        else:
            raise SubmissionError(f"metadata: unknown head {head!r}; expected 'projection' or 'regression'")

    def features(self, x: Tensor, kind: str) -> Tensor:
        """``(B, P)`` unit-norm projections or ``(B, E)`` embeddings of ``(B, C, X, Y, Z)`` volumes."""
        embedding = self.encoder(x)
        if kind == "embedding":
            return embedding.float()
        if kind == "projection" and self.head_name == "projection":
            return F.normalize(self.head(embedding).float(), dim=1)
        raise SubmissionError(f"metadata: feature kind {kind!r} is not available from a {self.head_name} head")


# --------------------------------------------------------------------------- inputs


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"metadata.pkl refers to {module}.{name}; a submission's metadata must hold plain data only"
        )


def load_metadata(path: str | os.PathLike) -> dict:
    """Read ``metadata.pkl`` (plain data only) and check the keys the estimator uses."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a submission folder holds estimator.py, weights.pth, metadata.pkl")
    meta = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    required = (
        "format_version",
        "modality",
        "source_shape",
        "mask_threshold",
        "factor",
        "normalize",
        "cache_shape",
        "cache_mask_bits",
        "network",
        "feature_kind",
        "n_features",
    )
    missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise SubmissionError(f"{path}: missing metadata key(s) {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise SubmissionError(
            f"{path}: metadata format {meta['format_version']}, this estimator reads {FORMAT_VERSION}"
        )
    if meta["modality"] not in MASK_ENV:
        raise SubmissionError(f"{path}: modality {meta['modality']!r} is not one of {sorted(MASK_ENV)}")
    if meta["normalize"] not in ("zscore", "none"):
        raise SubmissionError(f"{path}: unknown normalisation {meta['normalize']!r}")
    if int(meta["n_features"]) > MAX_FEATURES:
        raise SubmissionError(
            f"{path}: the network gives {meta['n_features']} features; the challenge accepts at most {MAX_FEATURES}"
        )
    return meta


def unpack_mask(bits: bytes, shape: Sequence[int]) -> np.ndarray:
    """Boolean (X, Y, Z) mask from ``numpy.packbits`` of its C-order flattening."""
    n = int(np.prod(shape))
    flat = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=n)
    if flat.size != n:
        raise SubmissionError(
            f"metadata: the packed cache mask holds {flat.size} voxels, the grid {tuple(shape)} has {n}"
        )
    return flat.astype(bool).reshape(tuple(int(s) for s in shape))


def read_mask(modality: str) -> np.ndarray:
    """Boolean (X, Y, Z) mask of a modality from the image named by its environment variable."""
    variable = MASK_ENV[modality]
    path = os.environ.get(variable)
    if not path:
        raise SubmissionError(
            f"the environment variable {variable} is not set: the challenge server sets VBM_MASK and "
            f"QUASIRAW_MASK to the OpenBHB mask images; set both to run the submission locally"
        )
    if not Path(path).is_file():
        raise SubmissionError(f"{variable}={path}: no such mask image")
    # The kit's rule: float64 values (get_fdata), so float32(0.05) = 0.0500000007 is inside.
    try:
        data = nibabel.load(path).get_fdata()
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, zlib.error) as err:
        raise SubmissionError(
            f"{variable}={path}: the mask image cannot be read, truncated or not NIfTI ({type(err).__name__}: {err})"
        ) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SubmissionError(f"{variable}={path}: the mask image must be 3-D, got shape {data.shape}")
    return data > MASK_THRESHOLDS[modality]


def block_mean(volumes: np.ndarray, factor: int) -> np.ndarray:
    """Means of non-overlapping ``factor``^3 blocks of (n, X, Y, Z) volumes, ceil(X / factor) per axis."""
    volumes = np.asarray(volumes, dtype=np.float32)
    if factor == 1:
        return volumes
    pooled = F.avg_pool3d(torch.from_numpy(np.ascontiguousarray(volumes))[:, None], factor, factor, ceil_mode=True)
    return pooled[:, 0].numpy()


def normalise(volume: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """One (X, Y, Z) volume z-scored within ``mask`` (float64 statistics), zero outside, float32."""
    out = np.zeros(volume.shape, dtype=np.float32)
    values = volume[mask].astype(np.float64)
    if method == "zscore":
        std = values.std()
        values = (values - values.mean()) / std if std > 0 else np.zeros_like(values)
    out[mask] = values
    return out


def _state_mismatch(network: nn.Module, state: dict) -> list[str]:
    """Missing, unexpected and mis-shaped state-dict entries, summarised (empty when they match)."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the network"
        for k in own
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("size mismatch", shapes)):
        if items:
            problems.append(f"{len(items)} {label} entr{'y' if len(items) == 1 else 'ies'} (first: {items[0]})")
    return problems


def _row_indices(indices: Any, n_rows: int) -> np.ndarray:
    if indices is None:
        return np.arange(n_rows)
    rows = np.asarray(indices)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise SubmissionError(f"indices must be None or a 1-D sequence of row numbers, got {indices!r:.200}")
    rows = rows.astype(np.int64)
    bad = (rows < 0) | (rows >= n_rows)
    if bad.any():
        raise SubmissionError(f"indices hold row {int(rows[bad][0])}, outside the {n_rows} rows of X")
    return rows


# --------------------------------------------------------------------------- estimator


class BrainAgeFeatures(BaseEstimator, TransformerMixin):
    """Features of RAMP rows from the trained network (the pipeline's only step).

    Args:
        weights: path of ``weights.pth`` (None: next to this file).
        metadata: path of ``metadata.pkl`` (None: next to this file).
        batch_size: rows read and processed together (bounds memory).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or a torch device string.
        indices: rows of ``X`` to process, in order (None: all); set by the server.

    Fitted attributes: ``metadata_``, ``network_``, ``device_``, ``source_mask_``,
    ``cache_mask_``, ``block_``, ``row_length_``, ``n_features_out_``.
    """

    def __init__(
        self,
        weights: str | None = None,
        metadata: str | None = None,
        batch_size: int = 8,
        device: str = "auto",
        indices: Sequence[int] | None = None,
    ) -> None:
        self.weights = weights
        self.metadata = metadata
        self.batch_size = batch_size
        self.device = device
        self.indices = indices

    def fit(self, X: Any = None, y: Any = None) -> BrainAgeFeatures:
        """Restore the network and the preprocessing; ``X`` and ``y`` are ignored (None on the server)."""
        meta = load_metadata(self.metadata or HERE / "metadata.pkl")
        if int(self.batch_size) < 1:
            raise SubmissionError(f"batch_size must be >= 1, got {self.batch_size}")
        masks = {m: read_mask(m) for m in MASK_ENV}
        modality = meta["modality"]
        source = masks[modality]
        if tuple(source.shape) != tuple(meta["source_shape"]):
            raise SubmissionError(
                f"{MASK_ENV[modality]}: the mask grid is {tuple(source.shape)} but the network was trained on the "
                f"{modality} grid {tuple(meta['source_shape'])}; rebuild the submission from a run on the OpenBHB grid"
            )
        cache_mask = unpack_mask(meta["cache_mask_bits"], meta["cache_shape"])
        expected = block_mean(source[None].astype(np.float32), int(meta["factor"]))[0] >= 0.5
        if expected.shape != cache_mask.shape or not np.array_equal(expected, cache_mask):
            differ = int((expected != cache_mask).sum()) if expected.shape == cache_mask.shape else -1
            raise SubmissionError(
                f"{MASK_ENV[modality]}: this mask, block-averaged by {meta['factor']}, does not give the training "
                f"cache's mask ({differ} voxels differ): the run was trained with another mask"
            )
        counts = {m: int(masks[m].sum()) for m in MASK_ENV}
        start = 0 if modality == "vbm" else counts["vbm"]

        network = BrainAgeNetwork(**meta["network"])
        weights_path = Path(self.weights or HERE / "weights.pth")
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path} not found")
        try:
            payload = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise SubmissionError(f"{weights_path}: not a readable torch state-dict file ({err})") from err
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
            raise SubmissionError(f"{weights_path}: expected a dict with the state dict under the key 'model'")
        problems = _state_mismatch(network, payload["model"])
        if problems:
            raise SubmissionError(
                f"{weights_path} does not match the network described by metadata.pkl ({meta['network']}): "
                + "; ".join(problems)
            )
        network.load_state_dict(payload["model"], strict=True)
        device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        )
        self.network_ = network.to(device).eval()
        self.device_ = device
        self.metadata_ = meta
        self.source_mask_ = source
        self.cache_mask_ = cache_mask
        self.block_ = (start, start + counts[modality])
        self.row_length_ = counts["vbm"] + counts["quasiraw"] + TAIL_LENGTH
        self.n_features_out_ = int(meta["n_features"])
        return self

    def _check_rows(self, X: Any) -> None:
        shape = getattr(X, "shape", None)
        if shape is None or len(shape) != 2:
            raise SubmissionError(f"X must be a 2-D array of RAMP rows (n, {self.row_length_}), got shape {shape}")
        if int(shape[1]) != self.row_length_:
            raise SubmissionError(
                f"X rows hold {shape[1]} values; with the masks in VBM_MASK and QUASIRAW_MASK a RAMP row holds "
                f"{self.row_length_} (vbm voxels, quasiraw voxels, then {TAIL_LENGTH} surface and ROI values)"
            )

    def volumes(self, X: Any, rows: np.ndarray) -> np.ndarray:
        """Network inputs (b, X', Y', Z') float32 of ``rows`` of ``X``, as the training cache holds them."""
        order = np.argsort(rows, kind="stable")
        start, stop = self.block_
        block = np.asarray(X[rows[order], start:stop], dtype=np.float32)
        block = block[np.argsort(order, kind="stable")]
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise SubmissionError(
                f"X row {int(rows[~finite][0])} holds NaN or inf in its {self.metadata_['modality']} voxels"
            )
        full = np.zeros((len(rows),) + self.source_mask_.shape, dtype=np.float32)
        full[:, self.source_mask_] = block
        pooled = block_mean(full, int(self.metadata_["factor"]))
        out = np.empty(pooled.shape, dtype=np.float32)
        for i, volume in enumerate(pooled):
            out[i] = normalise(volume, self.cache_mask_, self.metadata_["normalize"]).astype(np.float16)
        return out

    def transform(self, X: Any) -> np.ndarray:
        """Features (len(indices), p) float32 of the rows in ``indices`` (all rows when None)."""
        check_is_fitted(self, "network_")
        self._check_rows(X)
        rows = _row_indices(self.indices, int(X.shape[0]))
        kind = self.metadata_["feature_kind"]
        features = np.empty((len(rows), self.n_features_out_), dtype=np.float32)
        with torch.inference_mode():
            for first in range(0, len(rows), int(self.batch_size)):
                batch = rows[first : first + int(self.batch_size)]
                x = torch.from_numpy(self.volumes(X, batch))[:, None].to(self.device_)
                out = self.network_.features(x, kind)
                if out.shape[1] != self.n_features_out_:
                    raise SubmissionError(
                        f"the network gives {out.shape[1]} features, metadata.pkl announces {self.n_features_out_}"
                    )
                features[first : first + len(batch)] = out.cpu().numpy()
        if not np.isfinite(features).all():
            raise SubmissionError("the network produced NaN or inf features")
        return features

    def predict(self, X: Any) -> np.ndarray:
        """Same as :meth:`transform` (the server calls ``Pipeline.predict``)."""
        return self.transform(X)


def get_estimator() -> Pipeline:
    """The submission as the challenge server loads it."""
    return Pipeline([("features", BrainAgeFeatures())])
