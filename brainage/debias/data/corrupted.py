"""Corrupted-CIFAR10 and its offline analogues, built with the LfF protocol.

Nam et al., "Learning from Failure: Training Debiased Classifier from Biased Classifier"
(LfF), NeurIPS 2020, https://arxiv.org/abs/2007.02561: every class is paired with one image
corruption (the bias); a fraction of the training images gets one of the other corruptions
instead (bias-conflicting). The corruption functions are the ImageNet-C ones of Hendrycks &
Dietterich (ICLR 2019), taken from the ``imagecorruptions`` package instead of being rewritten.

Note: ``imagecorruptions`` implements the ImageNet-C parameterisation; LfF used the
CIFAR-10-C one, whose strengths differ at a given severity. Use the distributed DFA folders
(:func:`brainage.debias.data.read_dfa`) to compare with published numbers; the generator is
for building the benchmark from a CIFAR-10 copy, or from digits, offline.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from brainage.errors import BrainAgeError

__all__ = [
    "PROTOCOLS",
    "corruption_function",
    "assign_corruptions",
    "corrupt_images",
    "make_corrupted",
    "write_dfa_split",
    "to_rgb32",
]

#: LfF corruption sets; index i is the bias of class i. ``None`` = the original image.
PROTOCOLS: dict[str, tuple[str | None, ...]] = {
    "type0": (
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "spatter",
        "elastic_transform",
        "jpeg_compression",
        "pixelate",
        "saturate",
    ),
    "type1": (
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "speckle_noise",
        "gaussian_blur",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        None,
    ),
}


@functools.lru_cache(maxsize=1)
def _imagecorruptions():
    """Import ``imagecorruptions`` 1.1.2 beside current setuptools and scikit-image.

    Two incompatibilities of the released package are bridged here, locally:
    it imports ``pkg_resources`` (removed from setuptools >= 81) only for
    ``resource_filename`` (to find its frost images), so a stand-in module providing that one
    function is visible during the import only; and it calls
    ``skimage.filters.gaussian(..., multichannel=True)`` (argument removed in scikit-image
    0.19), so its module-level ``gaussian`` is wrapped to translate it to ``channel_axis=-1``.
    """
    shim_installed = False
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            spec = importlib.util.find_spec(package)
            return os.path.join(os.path.dirname(spec.origin), resource)

        shim.resource_filename = resource_filename
        sys.modules["pkg_resources"] = shim
        shim_installed = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions
            import imagecorruptions.corruptions as corruptions
    except ImportError as err:  # an optional dependency of the package
        raise ImportError(
            f"the corruptions come from imagecorruptions ({err}): pip install 'brainage[debias]'"
        ) from err
    finally:
        if shim_installed:
            sys.modules.pop("pkg_resources", None)

    original = corruptions.gaussian

    def gaussian(image, *args, multichannel=None, **kwargs):
        if multichannel is not None and "channel_axis" not in kwargs:
            kwargs["channel_axis"] = -1 if multichannel else None
        return original(image, *args, **kwargs)

    if not getattr(original, "_brainage_wrapped", False):
        gaussian._brainage_wrapped = True
        corruptions.gaussian = gaussian
    return imagecorruptions


def corruption_function(name: str | None, severity: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``uint8 (H, W, 3) -> uint8 (H, W, 3)`` applying one corruption.

    Args:
        name: an ``imagecorruptions`` name, or ``None`` for the identity ("Original").
        severity: 1 (mild) .. 5 (strong).
    """
    if not 1 <= int(severity) <= 5:
        raise BrainAgeError(f"severity must be in 1..5, got {severity}")
    if name is None:
        return lambda image: np.asarray(image, dtype=np.uint8).copy()
    ic = _imagecorruptions()
    if name not in ic.get_corruption_names("all"):
        raise BrainAgeError(f"unknown corruption {name!r}")

    def apply(image: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = ic.corrupt(np.asarray(image, dtype=np.uint8), corruption_name=name, severity=int(severity))
        return np.clip(np.asarray(out), 0, 255).astype(np.uint8)

    return apply


def assign_corruptions(labels: np.ndarray, aligned_ratio: float, n_bias: int = 10, seed: int = 0) -> np.ndarray:
    """Bias label (corruption index) of each sample under the LfF ratio rule.

    Within class ``y`` the shares are ``aligned_ratio`` for corruption ``y`` and
    ``(1 - aligned_ratio) / (n_bias - 1)`` for each other corruption; the samples (shuffled
    with ``seed``) are cut at the rounded cumulative shares, in corruption-index order.
    ``aligned_ratio = 1 / n_bias`` gives the unbiased assignment used for validation and test.

    Returns:
        ``int64 (n,)`` corruption indices.
    """
    if not 0.0 <= aligned_ratio <= 1.0:
        raise BrainAgeError(f"aligned_ratio must lie in [0, 1], got {aligned_ratio}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_bias):
        raise BrainAgeError(f"labels must lie in [0, {n_bias}) to pair each class with a corruption")
    rng = np.random.default_rng(seed)
    bias = np.empty_like(labels)
    for y in range(n_bias):
        idx = rng.permutation(np.flatnonzero(labels == y))
        shares = np.full(n_bias, (1.0 - aligned_ratio) / (n_bias - 1))
        shares[y] = aligned_ratio
        milestones = np.round(idx.size * np.cumsum(shares)).astype(np.int64)
        milestones[-1] = idx.size
        bias[idx] = np.searchsorted(milestones, np.arange(idx.size), side="right")
    return bias


def to_rgb32(images: np.ndarray) -> np.ndarray:
    """Grey ``(n, H, W)`` or RGB ``(n, 3, H, W)`` uint8 -> RGB ``(n, 3, 32, 32)``, zero-padded.

    ``imagecorruptions`` needs images of at least 32 x 32; MNIST digits are padded by 2 pixels
    on each side, as in the LeNet-5 input.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise BrainAgeError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = np.repeat(images[:, None], 3, axis=1)
    if images.ndim != 4 or images.shape[1] != 3:
        raise BrainAgeError(f"images must be (n, H, W) grey or (n, 3, H, W) RGB, got {images.shape}")
    h, w = images.shape[2:]
    if h > 32 or w > 32:
        return images
    top, left = (32 - h) // 2, (32 - w) // 2
    return np.pad(images, ((0, 0), (0, 0), (top, 32 - h - top), (left, 32 - w - left)))


def corrupt_images(
    images: np.ndarray,
    bias: np.ndarray,
    protocol: str = "type0",
    severity: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """Apply corruption ``PROTOCOLS[protocol][bias[i]]`` to image ``i``.

    Args:
        images: ``uint8 (n, 3, H, W)``, H and W >= 32.
        bias: ``(n,)`` corruption indices.
    """
    if protocol not in PROTOCOLS:
        raise BrainAgeError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise BrainAgeError(f"images must be uint8 (n, 3, H, W), got {images.dtype} {images.shape}")
    if min(images.shape[2:]) < 32:
        raise BrainAgeError(
            f"the corruption functions need images of at least 32x32, got {images.shape[2:]}; see to_rgb32"
        )
    functions = [corruption_function(name, severity) for name in PROTOCOLS[protocol]]
    out = np.empty_like(images)
    iterator = range(images.shape[0])
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"corrupting ({protocol}, severity {severity})")
    for i in iterator:
        hwc = images[i].transpose(1, 2, 0)
        out[i] = functions[int(bias[i])](hwc).transpose(2, 0, 1)
    return out


def make_corrupted(
    images: np.ndarray,
    labels: np.ndarray,
    conflict_pct: float,
    protocol: str = "type0",
    severity: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One corrupted split: ``(images uint8 (n, 3, H, W), labels, bias)``.

    Args:
        conflict_pct: percentage of bias-conflicting samples (0.5, 1, 2, 5 for training; 90
            gives the unbiased split, every corruption equally likely).
    """
    if not 0.0 <= conflict_pct <= 100.0:
        raise BrainAgeError(f"conflict_pct must lie in [0, 100], got {conflict_pct}")
    if protocol not in PROTOCOLS:
        raise BrainAgeError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    labels = np.asarray(labels, dtype=np.int64)
    bias = assign_corruptions(labels, 1.0 - conflict_pct / 100.0, len(PROTOCOLS[protocol]), seed)
    return corrupt_images(to_rgb32(images), bias, protocol, severity, progress), labels, bias


def write_dfa_split(
    folder: str | os.PathLike, images: np.ndarray, labels: np.ndarray, bias: np.ndarray, by_alignment: bool
) -> int:
    """Write images as PNG in the DFA layout.

    Args:
        folder: ``<root>/<pct>`` when ``by_alignment`` (files go to ``align/`` or ``conflict/``),
            else ``<root>/valid`` or ``<root>/test``.
        by_alignment: split into ``align``/``conflict`` by ``label == bias``.

    Returns:
        the number of files written. Each file is ``<class>/<index>_<label>_<bias>.png`` and is
        written atomically.
    """
    from PIL import Image

    from brainage.io import atomic_path

    folder = Path(folder)
    for i, (img, y, b) in enumerate(zip(images, labels, bias, strict=True)):
        sub = folder
        if by_alignment:
            sub = sub / ("align" if y == b else "conflict")
        path = sub / str(int(y)) / f"{i:06d}_{int(y)}_{int(b)}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(tmp, format="PNG")
    return len(images)
