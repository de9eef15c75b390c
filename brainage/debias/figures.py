"""Example images of a coloured data set (Biased-MNIST, corrupted digits, ...)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data.arrays import ArraySet

__all__ = ["example_grid", "plot_examples"]


def example_grid(data: ArraySet, per_class: int = 8, n_conflicting: int = 2, seed: int = 0) -> np.ndarray:
    """Indices ``(n_classes, per_class)`` of examples to show, -1 where a class has too few.

    Each row is a random draw from one class, so the mix of colours is the data set's; when the
    draw holds fewer than ``n_conflicting`` bias-conflicting samples and the class has some, the
    last slots are replaced by bias-conflicting ones, so that the rare colours of a strongly
    biased training set are visible too.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(data.labels)
    grid = np.full((classes.size, per_class), -1, dtype=np.int64)
    for row, y in enumerate(classes):
        members = rng.permutation(np.flatnonzero(data.labels == y))
        chosen = members[:per_class]
        conflicting = members[data.bias[members] != y]
        missing = min(n_conflicting, conflicting.size) - int(np.sum(data.bias[chosen] != y))
        if missing > 0:
            aligned_slots = np.flatnonzero(data.bias[chosen] == y)[::-1][:missing]
            extra = np.setdiff1d(conflicting, chosen)[:missing]
            chosen = chosen.copy()
            chosen[np.sort(aligned_slots)[: extra.size]] = extra
        grid[row, : chosen.size] = chosen
    return grid


def plot_examples(
    panels: dict[str, ArraySet], path: str | os.PathLike | None = None, per_class: int = 6, seed: int = 0
):
    """One panel per data set: rows = classes, columns = examples, titled with ``label/bias``.

    Args:
        panels: title -> data set (e.g. ``{"train rho=0.99": ..., "test rho=0.1": ...}``).
        path: when given, the PNG is written there atomically.

    Returns:
        the matplotlib Figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    grids = {title: example_grid(data, per_class, seed=seed) for title, data in panels.items()}
    n_rows = max(g.shape[0] for g in grids.values())
    fig, axes = plt.subplots(
        n_rows,
        per_class * len(panels),
        figsize=(0.75 * per_class * len(panels) + 0.5, 0.8 * n_rows + 0.6),
        squeeze=False,
    )
    for p, (title, data) in enumerate(panels.items()):
        grid = grids[title]
        for r in range(n_rows):
            for c in range(per_class):
                ax = axes[r, p * per_class + c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if r >= grid.shape[0] or grid[r, c] < 0:
                    continue
                i = grid[r, c]
                ax.imshow(data.images[i].transpose(1, 2, 0), interpolation="nearest")
                conflicting = data.bias[i] != data.labels[i]
                ax.set_title(
                    f"{data.labels[i]}/{data.bias[i]}", fontsize=6, color="red" if conflicting else "black", pad=1
                )
        axes[0, p * per_class].annotate(title, (0, 1.45), xycoords="axes fraction", fontsize=8, ha="left")
    fig.text(0.5, 0.005, "title = digit/colour index; red = bias-conflicting", ha="center", fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=0.9, wspace=0.08, hspace=0.35)
    if path is not None:
        from brainage.io import atomic_path

        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    return fig
