"""Evaluation of a trained debiasing model: target accuracy and the privacy attacker.

Privacy follows Barbano, Tartaglione, Grangetto, "Bridging the Gap between Debiasing and
Privacy for Deep Learning", ICCV Workshops 2021: the attacker is a linear classifier trained
on the frozen features to predict the private (bias) attribute; its accuracy on held-out
data measures how much of the attribute the representation leaks (chance = 1 / #values).

The attacker here is scikit-learn's multinomial logistic regression on standardised
features. By default it is fitted on the validation split (Biased-MNIST: colours independent
of the digit, so the attacker cannot read the colour through the digit) and scored on the
unbiased test split. The reference code fitted it on the rho = 0.999 training set instead.

For the 9-class ImageNet benchmark (Bahng et al., ReBias, ICML 2020) the "unbiased" accuracy is
the mean over texture clusterings of the unweighted mean accuracy over (class, texture
cluster) cells: :func:`texture_unbiased_accuracy`.
"""

from __future__ import annotations

import numpy as np

from brainage.errors import BrainAgeError

from .data.arrays import ArraySet

__all__ = [
    "accuracy",
    "group_accuracies",
    "fit_linear",
    "fit_attacker",
    "attacker_accuracy",
    "texture_cluster_scores",
    "texture_unbiased_accuracy",
]


def accuracy(logits_or_pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions; accepts logits ``(n, C)`` or predictions ``(n,)``."""
    pred = np.asarray(logits_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    labels = np.asarray(labels)
    if pred.shape != labels.shape:
        raise BrainAgeError(f"predictions {pred.shape} and labels {labels.shape} differ in shape")
    return float(np.mean(pred == labels)) if labels.size else float("nan")


def group_accuracies(pred: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> dict[str, float]:
    """Accuracy on bias-aligned (label == bias) and bias-conflicting samples separately.

    Returns:
        ``{"aligned": ..., "conflicting": ...}``; NaN for an empty group.
    """
    pred = np.asarray(pred)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    aligned = np.asarray(bias) == np.asarray(labels)
    out = {}
    for name, mask in (("aligned", aligned), ("conflicting", ~aligned)):
        out[name] = float(np.mean(pred[mask] == labels[mask])) if mask.any() else float("nan")
    return out


def fit_linear(features: np.ndarray, targets: np.ndarray, seed: int = 0, max_iter: int = 2000):
    """Fit a linear classifier ``features (n, D) -> targets (n,)`` on frozen features.

    Returns:
        a fitted scikit-learn pipeline (StandardScaler + multinomial LogisticRegression).

    Raises:
        ValueError: fewer than two target values, or unknown (negative) targets.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    targets = np.asarray(targets)
    if np.any(targets < 0):
        raise BrainAgeError("the attribute is unknown (-1) for some samples; a linear probe needs it")
    if np.unique(targets).size < 2:
        raise BrainAgeError("a linear probe needs at least two values of the attribute")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    clf.fit(np.asarray(features, dtype=np.float64), targets)
    return clf


def fit_attacker(features: np.ndarray, private: np.ndarray, seed: int = 0, max_iter: int = 2000):
    """The privacy attacker: :func:`fit_linear` on the private (bias) attribute."""
    return fit_linear(features, private, seed, max_iter)


def attacker_accuracy(
    train_features: np.ndarray, train_set: ArraySet, test_features: np.ndarray, test_set: ArraySet, seed: int = 0
) -> float:
    """Accuracy on ``test_set.bias`` of an attacker fitted on ``train_set.bias``."""
    clf = fit_attacker(train_features, train_set.bias, seed)
    return float(clf.score(np.asarray(test_features, dtype=np.float64), test_set.bias))


def _as_predictions(logits_or_pred, labels) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(logits_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    labels = np.asarray(labels)
    if pred.ndim != 1 or pred.shape != labels.shape:
        raise BrainAgeError(
            f"expected logits (n, C) or predictions (n,) matching labels (n,); got {np.shape(logits_or_pred)} "
            f"and {labels.shape}"
        )
    for name, arr in (("predictions", pred), ("labels", labels)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise BrainAgeError(f"{name} must be integers, got {arr.dtype}")
    if labels.size and labels.min() < 0:
        raise BrainAgeError("labels must be non-negative")
    return pred, labels


def texture_cluster_scores(logits_or_pred, labels, clusters, min_cell: int = 10) -> list[float]:
    """Per clustering, the unweighted mean accuracy over the (class, cluster) cells of >= ``min_cell`` images.

    See :func:`texture_unbiased_accuracy` (whose value is the mean of this list).
    """
    pred, labels = _as_predictions(logits_or_pred, labels)
    n = labels.size
    if isinstance(clusters, np.ndarray):
        rows = [clusters] if clusters.ndim == 1 else list(clusters) if clusters.ndim == 2 else None
        if rows is None:
            raise BrainAgeError(
                f"clusters must be (R, n) or a list of R arrays of length n, got shape {clusters.shape}"
            )
    else:
        rows = list(clusters)
    if not rows:
        raise BrainAgeError("no texture clustering given")
    if int(min_cell) < 1:
        raise BrainAgeError(f"min_cell must be at least 1, got {min_cell}")
    correct = pred == labels
    n_classes = int(labels.max()) + 1 if n else 0
    scores = []
    for r, row in enumerate(rows, start=1):
        row = np.asarray(row)
        if row.shape != (n,):
            raise BrainAgeError(f"clustering {r}: expected {n} cluster labels (one per image), got shape {row.shape}")
        if n and not np.issubdtype(row.dtype, np.integer):
            raise BrainAgeError(f"clustering {r}: cluster labels must be integers, got {row.dtype}")
        if n and row.min() < 0:
            raise BrainAgeError(f"clustering {r}: cluster labels must be non-negative, found {int(row.min())}")
        n_clusters = int(row.max()) + 1 if n else 0
        cell = labels.astype(np.int64) * n_clusters + row.astype(np.int64)
        size = np.bincount(cell, minlength=n_classes * n_clusters)
        hits = np.bincount(cell, weights=correct.astype(np.float64), minlength=n_classes * n_clusters)
        kept = size >= min_cell
        if not kept.any():
            largest = int(size.max()) if size.size else 0
            raise BrainAgeError(
                f"clustering {r}: no (class, cluster) cell has at least {min_cell} images "
                f"(largest cell: {largest}); the metric is undefined"
            )
        scores.append(float(np.mean(hits[kept] / size[kept])))
    return scores


def texture_unbiased_accuracy(logits_or_pred, labels, clusters, min_cell: int = 10) -> float:
    """The "unbiased" accuracy of the 9-class ImageNet benchmark (Bahng et al., ReBias, ICML 2020).

    ReBias clusters the validation images by texture (k-means on texture features, 9 clusters,
    R = 3 clusterings). For each clustering: count the images and the correct top-1
    predictions of every (class, cluster) cell, keep the cells holding at least ``min_cell``
    (10) images, and average the per-cell accuracies over the kept cells **without weighting by
    cell size**. The metric is the mean of the R clustering scores. Rare class/texture
    combinations therefore count as much as the frequent (biased) ones.

    Args:
        logits_or_pred: logits ``(n, C)`` or predicted classes ``(n,)``.
        labels: target classes ``(n,)``.
        clusters: integer cluster labels ``(R, n)`` (or a list of R arrays of length n), in the
            order of ``labels``.
        min_cell: the smallest cell that counts (ReBias: 10).

    Raises:
        ValueError: shapes that do not match, negative or non-integer labels, or a clustering
            with no cell of ``min_cell`` images (the message names the clustering, 1-based, and
            its largest cell).
    """
    return float(np.mean(texture_cluster_scores(logits_or_pred, labels, clusters, min_cell)))
