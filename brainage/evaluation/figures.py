"""Evaluation figures (PNG), drawn with matplotlib's object API on the Agg canvas.

No pyplot state is touched, so these functions are safe in workers and tests; every file is
written through :func:`brainage.io.atomic_path`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from brainage.io import atomic_path

__all__ = [
    "plot_predicted_vs_true",
    "plot_per_site_mae",
    "plot_embedding",
    "plot_table_summary",
    "plot_tradeoff",
]

SPLIT_STYLE = {
    "train": dict(color="0.6", marker="o", label="train (out-of-fold)"),
    "internal_test": dict(color="tab:blue", marker="^", label="internal test"),
    "external_test": dict(color="tab:red", marker="s", label="external test"),
}
SPLIT_NAMES = {"train": "train", "internal_test": "internal test", "external_test": "external test"}


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def _site_colors(sites: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    names = sorted(set(sites))
    cmap = colormaps["tab20" if len(names) <= 20 else "turbo"]
    if len(names) <= 20:
        return {s: cmap(i % 20) for i, s in enumerate(names)}
    return {s: cmap(i / max(len(names) - 1, 1)) for i, s in enumerate(names)}


def plot_predicted_vs_true(
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Scatter of predicted (y) vs true (x) age in years, one colour per split.

    Args:
        splits: ``{split: (true ages (n,), predicted ages (n,))}``.
    """
    fig, (ax,) = _figure(5.5, 5.0)
    lo, hi = np.inf, -np.inf
    for name, (age, pred) in splits.items():
        style = dict(SPLIT_STYLE.get(name, dict(label=name, marker="o")))
        alpha = 0.35 if name == "train" else 0.8
        ax.scatter(age, pred, s=12, alpha=alpha, **style)
        lo = min(lo, float(np.min(age)), float(np.min(pred)))
        hi = max(hi, float(np.max(age)), float(np.max(pred)))
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--", label="identity")
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years, Ridge probe)")
    ax.set_title(title or "Predicted vs true age")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_per_site_mae(
    per_site: Mapping[str, Mapping[str, Mapping[str, float]] | None], path: str | os.PathLike, title: str = ""
) -> Path:
    """Horizontal bars of MAE (years) per site, coloured by split.

    Args:
        per_site: ``{split: {site: {"n": count, "mae": years}}}``; None entries are skipped.
    """
    rows = [
        (split, site, v["mae"], v["n"])
        for split, sites in per_site.items() if sites
        for site, v in sites.items()
    ]
    fig, (ax,) = _figure(6.0, max(2.5, 0.22 * len(rows) + 1.2))
    labels = [f"{site} (n={n})" for _, site, _, n in rows]
    colors = [SPLIT_STYLE.get(split, {}).get("color", "tab:gray") for split, *_ in rows]
    ax.barh(np.arange(len(rows)), [r[2] for r in rows], color=colors)
    ax.set_yticks(np.arange(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("MAE (years)")
    from matplotlib.patches import Patch

    handles = [
        Patch(color=SPLIT_STYLE.get(split, {}).get("color", "tab:gray"), label=SPLIT_NAMES.get(split, split))
        for split in per_site if per_site[split]
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or "MAE per site")
    return _save(fig, path)


def plot_embedding(
    features: Mapping[str, np.ndarray],
    sites: Mapping[str, np.ndarray | None],
    path: str | os.PathLike,
    method: str = "pca",
    random_state: int = 0,
    max_points: int = 3000,
    title: str = "",
) -> Path:
    """2-D projection of the features, coloured by site, one marker per split.

    PCA is fitted on the training features and applied to every split; t-SNE embeds the
    (sub-sampled to ``max_points``) union of the splits.

    Args:
        features: ``{split: (n, p) features}``.
        sites: ``{split: (n,) site labels or None}``.
        method: ``"pca"`` or ``"tsne"``.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"unknown embedding method {method!r}; expected 'pca' or 'tsne'")
    names = list(features)
    blocks = [np.asarray(features[n], dtype=np.float64) for n in names]
    labels = [
        np.asarray(sites[n]).astype(str) if sites.get(n) is not None else np.full(len(b), "unknown")
        for n, b in zip(names, blocks)
    ]
    split_of = np.concatenate([np.full(len(b), n) for n, b in zip(names, blocks)])
    x = np.concatenate(blocks)
    site_of = np.concatenate(labels)
    rng = np.random.default_rng(random_state)
    keep = np.arange(len(x))
    if len(x) > max_points:
        keep = np.sort(rng.choice(len(x), size=max_points, replace=False))
    if method == "pca":
        from sklearn.decomposition import PCA

        ref = blocks[names.index("train")] if "train" in names else x
        pca = PCA(n_components=2, random_state=random_state).fit(ref)
        emb = pca.transform(x[keep])
        axis = [f"PC{i + 1} ({100 * r:.1f} % var.)" for i, r in enumerate(pca.explained_variance_ratio_)]
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(keep) - 1) / 3)))
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(x[keep])
        axis = ["t-SNE 1", "t-SNE 2"]
    split_of, site_of = split_of[keep], site_of[keep]
    colors = _site_colors(site_of)
    fig, (ax,) = _figure(7.0, 5.5)
    for name in names:
        marker = SPLIT_STYLE.get(name, {}).get("marker", "o")
        sel = split_of == name
        ax.scatter(emb[sel, 0], emb[sel, 1], s=10, marker=marker, alpha=0.7,
                   c=[colors[s] for s in site_of[sel]], linewidths=0)
    for name in names:
        marker = SPLIT_STYLE.get(name, {}).get("marker", "o")
        ax.scatter([], [], marker=marker, color="k", label=SPLIT_NAMES.get(name, name))
    if len(colors) <= 20:
        for s, c in colors.items():
            ax.scatter([], [], marker="o", color=c, label=f"site {s}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.set_title(title or f"Feature embedding ({method.upper()}), coloured by site ({len(colors)} sites)")
    return _save(fig, path)


def plot_table_summary(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Bars (mean +- std over replicates) of Int. MAE, BAcc %, Ext. MAE and L_c per method.

    Args:
        table: the computed rows of the aggregated table, with ``method`` and
            ``<metric>_mean`` / ``<metric>_std`` columns for int_mae, bacc_pct, ext_mae,
            challenge_score.
    """
    panels = [("int_mae", "Int. MAE (years)"), ("bacc_pct", "BAcc (%)"),
              ("ext_mae", "Ext. MAE (years)"), ("challenge_score", "L_c (lower is better)")]
    fig, axes = _figure(12.0, 3.4, ncols=4)
    pos = np.arange(len(table))
    for ax, (key, label) in zip(axes, panels):
        std = table[f"{key}_std"].fillna(0.0).to_numpy()
        ax.bar(pos, table[f"{key}_mean"].to_numpy(), yerr=std, capsize=3, color="tab:blue")
        ax.set_xticks(pos, table["method"].tolist(), rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    if "bacc_chance_pct_mean" in table:
        axes[1].axhline(float(table["bacc_chance_pct_mean"].mean()), color="k", ls="--", lw=1, label="chance")
        axes[1].legend(fontsize=7)
    return _save(fig, path)


def plot_tradeoff(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """BAcc (%) vs Ext. MAE per method with iso-L_c curves: lower-left is better."""
    fig, (ax,) = _figure(5.5, 4.5)
    b = table["bacc_pct_mean"].to_numpy()
    e = table["ext_mae_mean"].to_numpy()
    ax.errorbar(b, e, xerr=table["bacc_pct_std"].fillna(0.0), yerr=table["ext_mae_std"].fillna(0.0),
                fmt="o", capsize=3)
    for name, xi, yi in zip(table["method"], b, e):
        ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    bx = np.linspace(max(min(b.min() * 0.8, b.min() - 1), 0.1), max(b.max() * 1.2, b.max() + 1), 200)
    levels = np.quantile(table["challenge_score_mean"].to_numpy(), [0.0, 0.5, 1.0])
    for lc in np.unique(np.round(levels, 3)):
        ax.plot(bx, lc / (bx / 100.0) ** 0.3, color="0.7", lw=0.8, ls=":")
        ax.annotate(f"L_c={lc:.2f}", (bx[-1], lc / (bx[-1] / 100.0) ** 0.3), fontsize=7, color="0.4")
    ax.set_xlabel("BAcc of the site probe (%), internal test")
    ax.set_ylabel("Ext. MAE (years)")
    ax.set_title("Site leakage vs external error")
    return _save(fig, path)
