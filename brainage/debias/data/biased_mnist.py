"""Biased-MNIST: MNIST digits whose background colour is spuriously correlated with the class.

Implements the construction of Bahng et al., "Learning De-biased Representations with Biased
Representations" (ReBias), ICML 2020, https://arxiv.org/abs/1910.02806, used unchanged by
EnD (Tartaglione et al., CVPR 2021) and by FairKL (Barbano et al., "Unbiased Supervised
Contrastive Learning", ICLR 2023, https://arxiv.org/abs/2211.05568).
"""

from __future__ import annotations

import math

import numpy as np

from brainage.errors import BrainAgeError

__all__ = [
    "PALETTES",
    "make_biased_mnist",
    "split_per_class",
    "colour_counts",
    "validate_digits",
]

_REBIAS = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [225, 225, 0],
    [225, 0, 225],
    [0, 255, 255],
    [255, 128, 0],
    [255, 0, 128],
    [128, 0, 255],
    [128, 128, 128],
]

#: Background colours (RGB), row ``c`` = the colour that is the bias of class ``c``.
#: ``"rebias"`` is the palette of ReBias and EnD; ``"iclr"`` is the ICLR 2023 FairKL code's,
#: which replaces the grey of colour 9 with [50, 255, 128].
PALETTES: dict[str, np.ndarray] = {
    "rebias": np.array(_REBIAS, dtype=np.uint8),
    "iclr": np.array(_REBIAS[:9] + [[50, 255, 128]], dtype=np.uint8),
}

N_COLOURS = 10


def validate_digits(
    images: np.ndarray,
    labels: np.ndarray,
    source: str = "images",
    n_classes: int = 10,
    label_source: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Check a digit array set and return it as ``(uint8 (n, H, W), int64 (n,))``.

    Args:
        images: grey images, ``uint8`` of shape ``(n, H, W)``.
        labels: class labels of shape ``(n,)`` in ``[0, n_classes)``.
        source: the file or object the arrays came from, named in error messages.
        n_classes: number of classes.
        label_source: the file the labels came from when it is not ``source`` (an IDX
            labels file), named in the errors about the labels; default ``source``.

    Raises:
        ValueError: wrong dtype, wrong number of dimensions, length mismatch, labels that
            are not integers or fall outside the class range.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise BrainAgeError(f"{source}: digit images must be uint8 grey levels, got dtype {images.dtype}")
    if images.ndim != 3:
        raise BrainAgeError(f"{source}: digit images must have shape (n, H, W), got {images.shape}")
    label_source = source if label_source is None else label_source
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise BrainAgeError(
            f"{label_source}: labels must have shape ({images.shape[0]},) to match the images, got {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise BrainAgeError(f"{label_source}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)]
        raise BrainAgeError(
            f"{label_source}: labels must lie in [0, {n_classes}); found {np.unique(bad)[:10].tolist()}"
        )
    return images, labels


def make_biased_mnist(
    images: np.ndarray,
    labels: np.ndarray,
    rho: float,
    seed: int = 0,
    palette: str = "rebias",
    shuffle_other_colours: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour grey digits so that the background colour agrees with the class a fraction rho of the time.

    The rule of ReBias (``_update_bias_indices`` of its ``colour_mnist.py``): for every class
    ``y`` with ``n_y`` samples, the samples are shuffled; the first ``int(n_y * rho)`` get
    background colour ``y`` (bias-aligned); the remaining ``k`` are cut in consecutive chunks
    of ``ceil(k / 9)`` (the last one possibly smaller), and chunk ``i`` gets colour
    ``other[i]``, where ``other`` is the list ``(y+1) % 10, ..., (y+9) % 10`` shuffled once
    per class. Each conflicting colour thus gets ``ceil(k / 9)`` samples, one fewer, or none,
    and which colours those are varies with the class and the seed. The digit is binarised:
    every non-zero pixel becomes white (255, 255, 255), every zero pixel takes the colour.

    Both shuffles are seeded by ``seed``, from two separate streams: the sample shuffles
    (which samples are bias-aligned) do not depend on ``shuffle_other_colours``, and the
    colour order of a class does not depend on the other classes.

    Args:
        images: ``uint8`` grey digits, shape ``(n, H, W)`` (MNIST: 28 x 28).
        labels: ``(n,)`` integer classes in ``[0, 10)``.
        rho: fraction of bias-aligned samples per class, in ``[0, 1]``; 0.1 gives colours
            independent of the class (the unbiased test set), 1.0 the fully biased one.
        seed: seed of the per-class shuffles.
        palette: ``"rebias"`` (ReBias/EnD) or ``"iclr"`` (ICLR 2023 code, colour 9 changed).
        shuffle_other_colours: ``False`` gives the chunks the colours ``y+1, ..., y+9`` in
            that order instead of ReBias's shuffled order (the behaviour of this function
            before it followed ReBias, kept only to reproduce data made with it).

    Returns:
        ``(rgb, labels, bias)``: ``rgb`` ``uint8`` of shape ``(n, 3, H, W)``, the labels as
        ``int64`` and ``bias`` the ``int64`` colour index of each sample, in input order.

    Raises:
        ValueError: bad shapes/dtypes, labels outside ``[0, 10)``, rho outside ``[0, 1]``,
            an unknown palette.
    """
    images, labels = validate_digits(images, labels, n_classes=N_COLOURS)
    rho = float(rho)
    if not (0.0 <= rho <= 1.0) or math.isnan(rho):
        raise BrainAgeError(f"rho must lie in [0, 1], got {rho}")
    if palette not in PALETTES:
        raise BrainAgeError(f"unknown palette {palette!r}; choose one of {sorted(PALETTES)}")
    colours = PALETTES[palette]
    rng = np.random.default_rng(seed)
    # One permutation of the nine other colours per class, drawn for every class whether or
    # not it has conflicting samples, from a stream of its own.
    colour_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    offsets_per_class = [1 + colour_rng.permutation(N_COLOURS - 1) for _ in range(N_COLOURS)]

    bias = np.empty(labels.shape[0], dtype=np.int64)
    for y in range(N_COLOURS):
        idx = np.flatnonzero(labels == y)
        if idx.size == 0:
            continue
        idx = rng.permutation(idx)
        n_aligned = int(idx.size * rho)
        bias[idx[:n_aligned]] = y
        rest = idx[n_aligned:]
        if rest.size:
            chunk = math.ceil(rest.size / (N_COLOURS - 1))
            offsets = offsets_per_class[y] if shuffle_other_colours else 1 + np.arange(N_COLOURS - 1)
            bias[rest] = (y + offsets[np.arange(rest.size) // chunk]) % N_COLOURS

    foreground = images != 0
    rgb = np.where(
        foreground[:, None, :, :],
        np.uint8(255),
        colours[bias][:, :, None, None],
    ).astype(np.uint8)
    return rgb, labels, bias


def colour_counts(labels: np.ndarray, bias: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Contingency table ``(n_classes, n_colours)``: samples of class ``y`` with colour ``c``."""
    table = np.zeros((n_classes, N_COLOURS), dtype=np.int64)
    np.add.at(table, (np.asarray(labels), np.asarray(bias)), 1)
    return table


def split_per_class(labels: np.ndarray, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Split sample indices into named parts with a fixed number of samples per class.

    Args:
        labels: ``(n,)`` integer classes.
        sizes: ordered mapping part name -> samples per class, e.g.
            ``{"train": 420, "val": 30, "test": 50}``; a class with fewer samples than the
            total raises.
        seed: seed of the per-class shuffles.

    Returns:
        part name -> sorted ``int64`` indices into ``labels``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in sizes}
    need = sum(sizes.values())
    for y in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == y))
        if idx.size < need:
            raise BrainAgeError(
                f"class {int(y)} has {idx.size} samples, fewer than the {need} requested per class {dict(sizes)}"
            )
        start = 0
        for name, size in sizes.items():
            parts[name].append(idx[start : start + size])
            start += size
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}
