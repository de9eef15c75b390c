"""Evaluation of a trained debiasing model: target accuracy and the privacy attacker.

Privacy follows Barbano, Tartaglione, Grangetto, "Bridging the Gap between Debiasing and
Privacy for Deep Learning", ICCV Workshops 2021: the attacker is a linear classifier trained
on the frozen features to predict the private (bias) attribute; its accuracy on held-out
data measures how much of the attribute the representation leaks (chance = 1 / #values).

The attacker here is scikit-learn's multinomial logistic regression on standardised
features. By default it is fitted on the validation split (Biased-MNIST: colours independent
of the digit, so the attacker cannot read the colour through the digit) and scored on the
unbiased test split. The reference code fitted it on the rho = 0.999 training set instead.
"""

from __future__ import annotations

import numpy as np

from .data.arrays import ArraySet

__all__ = ["accuracy", "group_accuracies", "fit_linear", "fit_attacker", "attacker_accuracy"]


def accuracy(logits_or_pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions; accepts logits ``(n, C)`` or predictions ``(n,)``."""
    pred = np.asarray(logits_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    labels = np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} differ in shape")
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
        raise ValueError("the attribute is unknown (-1) for some samples; a linear probe needs it")
    if np.unique(targets).size < 2:
        raise ValueError("a linear probe needs at least two values of the attribute")
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
