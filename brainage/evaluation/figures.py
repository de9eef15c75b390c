"""Evaluation figures (PNG), drawn with matplotlib's object API on the Agg canvas.

No pyplot state is touched, so these functions are safe in workers and tests; every file is
written through :func:`brainage.io.atomic_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from brainage.errors import BrainAgeError
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


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(ncols * nrows)]
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def _site_colors(n: int) -> list[tuple]:
    """``n`` colours for sorted site indices: tab20 up to 20 sites, else sampled from turbo."""
    from matplotlib import colormaps

    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


def site_order(sites: Mapping[str, Sequence[str] | None]) -> tuple[list[str], list[str]]:
    """Colour order of the embedding figure: ``(seen, external_only)`` site labels.

    ``seen``: sorted sites of every split but ``external_test``; ``external_only``: sorted
    sites found only in ``external_test``. A site's index in ``seen + external_only`` is its
    position on the figure's colour bar.
    """
    seen = sorted({str(v) for n, s in sites.items() if n != "external_test" and s is not None for v in s})
    ext = sites.get("external_test")
    external_only = sorted({str(v) for v in ext} - set(seen)) if ext is not None else []
    return seen, external_only


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
    rows = [(split, site, v["mae"], v["n"]) for split, sites in per_site.items() if sites for site, v in sites.items()]
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
        for split in per_site
        if per_site[split]
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
    (sub-sampled to ``max_points``) union of the splits. Colours follow :func:`site_order`
    (sites of train / internal test sorted, then the sites found only in the external test
    set), keyed by a colour bar with the site labels as ticks (every k-th when they do not
    all fit, external-only ones in red below a line). External-test subjects are drawn as
    larger black-edged squares; a legend above the axes names the split markers.

    Args:
        features: ``{split: (n, p) features}``.
        sites: ``{split: (n,) site labels or None}``.
        method: ``"pca"`` or ``"tsne"``.
    """
    if method not in ("pca", "tsne"):
        raise BrainAgeError(f"unknown embedding method {method!r}; expected 'pca' or 'tsne'")
    names = list(features)
    emb, axis, split_of, site_of = _embed(features, sites, method, random_state, max_points)
    seen, external_only = site_order(sites)
    order = seen + external_only
    n_sites = len(order)

    height = 5.5 if n_sites <= 40 else 6.5
    fig, (ax,) = _figure(7.5, height)
    cmap, norm = _site_colormap(seen, external_only)
    handles = _scatter_splits(ax, names, emb, split_of, site_of, sites, order, cmap, norm)
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        fontsize=7,
        frameon=False,
        handletextpad=0.2,
        columnspacing=1.0,
    )
    if n_sites:
        _site_colorbar(fig, ax, cmap, norm, seen, external_only, height)
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    what = f"{len(seen)} train/internal" + (f" + {len(external_only)} external" if external_only else "")
    shown = "PCA" if method == "pca" else "t-SNE"
    ax.set_title(title or f"Feature embedding ({shown}) coloured by site ({what} sites)", fontsize=10, pad=18)
    return _save(fig, path)


def _embed(
    features: Mapping[str, np.ndarray],
    sites: Mapping[str, np.ndarray | None],
    method: str,
    random_state: int,
    max_points: int,
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """The 2-D embedding of at most ``max_points`` subjects of all splits.

    Returns:
        ``(m, 2)`` coordinates, the two axis labels, and the ``(m,)`` split and site label of each point.
    """
    names = list(features)
    blocks = [np.asarray(features[n], dtype=np.float64) for n in names]
    labels = [
        np.asarray(sites[n]).astype(str) if sites.get(n) is not None else np.full(len(b), "unknown")
        for n, b in zip(names, blocks, strict=True)
    ]
    split_of = np.concatenate([np.full(len(b), n) for n, b in zip(names, blocks, strict=True)])
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
    return emb, axis, split_of[keep], site_of[keep]


def _site_colormap(seen: list[str], external_only: list[str]):
    """A listed colormap with one colour per site of ``seen + external_only``, and its integer boundaries."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    n_sites = len(seen) + len(external_only)
    if n_sites <= 20:
        palette = _site_colors(max(n_sites, 1))
    else:  # seen sites along turbo; the few unseen ones in distinct qualitative colours
        from matplotlib import colormaps

        palette = _site_colors(len(seen)) + [colormaps["tab10"](i % 10) for i in range(len(external_only))]
    cmap = ListedColormap(palette)
    norm = BoundaryNorm(np.arange(max(n_sites, 1) + 1) - 0.5, cmap.N)
    return cmap, norm


def _scatter_splits(
    ax,
    names: list[str],
    emb: np.ndarray,
    split_of: np.ndarray,
    site_of: np.ndarray,
    sites: Mapping[str, np.ndarray | None],
    order: list[str],
    cmap,
    norm,
) -> list:
    """One scatter per split (site colours, or grey without site labels); returns the legend handles."""
    from matplotlib.lines import Line2D

    index = {name: i for i, name in enumerate(order)}
    handles = []
    unlabelled_shown = False
    for name in names:
        external = name == "external_test"
        marker = SPLIT_STYLE.get(name, {}).get("marker", "o")
        # external-test subjects (unseen sites): bigger markers with a black edge
        edge = dict(s=22, edgecolors="k", linewidths=0.6) if external else dict(s=10, linewidths=0)
        sel = split_of == name
        if sel.any() and sites.get(name) is not None:
            site_idx = np.array([index[v] for v in site_of[sel]])
            ax.scatter(
                emb[sel, 0],
                emb[sel, 1],
                marker=marker,
                alpha=0.8,
                c=site_idx,
                cmap=cmap,
                norm=norm,
                zorder=3 if external else 2,
                **edge,
            )
        elif sel.any():  # a split without site labels: grey
            ax.scatter(
                emb[sel, 0], emb[sel, 1], marker=marker, alpha=0.8, color="0.55", zorder=3 if external else 2, **edge
            )
            unlabelled_shown = True
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker=marker,
                markersize=6 if external else 5,
                markerfacecolor="0.75",
                markeredgecolor="k" if external else "0.75",
                markeredgewidth=0.8 if external else 0,
                label=SPLIT_NAMES.get(name, name) + (" (unseen sites)" if external else ""),
            )
        )
    if unlabelled_shown:
        handles.append(Line2D([], [], ls="", marker="o", markersize=5, color="0.55", label="no site label"))
    return handles


def _site_colorbar(fig: Figure, ax, cmap, norm, seen: list[str], external_only: list[str], height: float) -> None:
    """The site colour bar: labels as ticks (every k-th where they do not fit), external-only sites in red."""
    from matplotlib.cm import ScalarMappable

    order = seen + external_only
    n_sites = len(order)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05, pad=0.02, aspect=40)
    # one tick label per site where they fit (~8 pt each), else every k-th
    step = max(1, int(np.ceil(n_sites / max(1, int((height - 1.4) * 72 / 8)))))
    ticks = list(range(0, n_sites, step))
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([order[i][:14] for i in ticks], fontsize=6)
    for tick, i in zip(cbar.ax.get_yticklabels(), ticks, strict=False):
        if i >= len(seen):
            tick.set_color("tab:red")
    if external_only:
        cbar.ax.axhline(len(seen) - 0.5, color="k", lw=1.5)
    label = "site (sorted" + (f"; 1 label in {step}" if step > 1 else "") + ")"
    if external_only:
        label += "; red, below the line: external-test sites"
    cbar.set_label(label, fontsize=7)
    cbar.ax.invert_yaxis()


def plot_table_summary(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Bars (mean +- std over replicates) per row: Int. MAE, BAcc %, Ext. MAE, L_c, then the
    analysis columns site given age % and sex BAcc % when present.

    Args:
        table: the computed rows of the aggregated table, with ``method`` and
            ``<metric>_mean`` / ``<metric>_std`` columns for int_mae, bacc_pct, ext_mae,
            challenge_score (and site_given_age_pct, sex_bacc_pct).
    """
    panels = [
        ("int_mae", "Int. MAE (years)"),
        ("bacc_pct", "BAcc (%)"),
        ("ext_mae", "Ext. MAE (years)"),
        ("challenge_score", "L_c (lower is better)"),
    ]
    panels += [
        (key, title)
        for key, title in (
            ("site_given_age_pct", "site given age BAcc (%), analysis"),
            ("sex_bacc_pct", "sex BAcc (%), analysis"),
        )
        if f"{key}_mean" in table and table[f"{key}_mean"].notna().any()
    ]
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig, axes = _figure(4.0 * ncols, 3.8 * nrows, ncols=ncols, nrows=nrows)
    pos = np.arange(len(table))
    colors = ["0.6" if ref else "tab:blue" for ref in table.get("reference", pd.Series(False, index=table.index))]
    for ax, (key, label) in zip(axes, panels, strict=False):
        std = table[f"{key}_std"].fillna(0.0).to_numpy()
        ax.bar(pos, table[f"{key}_mean"].fillna(0.0).to_numpy(), yerr=std, capsize=3, color=colors)
        ax.set_xticks(pos, table["method"].tolist(), rotation=35, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    if "bacc_chance_pct_mean" in table:
        for ax, key in zip(axes, [k for k, _ in panels], strict=False):
            if key in ("bacc_pct", "site_given_age_pct"):
                ax.axhline(float(table["bacc_chance_pct_mean"].mean()), color="k", ls="--", lw=1, label="chance")
                ax.legend(fontsize=7)
    return _save(fig, path)


METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def plot_tradeoff(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """BAcc (%) vs Ext. MAE per method with iso-L_c curves: lower-left is better.

    One colour and marker per method, named in the legend; error bars: one sample std. Rows
    that are not challenge-compliant (``challenge_compliant`` False) are hollow and marked in
    the legend; reference rows (``reference`` True) are vertical lines at their BAcc (chance
    for constant features, the age-confounding floor for the age oracle).
    """
    from matplotlib import colormaps

    fig, (ax,) = _figure(7.5, 4.5)
    refs = table["reference"].to_numpy(dtype=bool) if "reference" in table else np.zeros(len(table), bool)
    compliant = (
        table["challenge_compliant"].to_numpy(dtype=bool)
        if "challenge_compliant" in table
        else np.ones(len(table), bool)
    )
    rows = table[~refs]
    b = rows["bacc_pct_mean"].to_numpy(dtype=float)
    e = rows["ext_mae_mean"].to_numpy(dtype=float)
    bs = rows["bacc_pct_std"].fillna(0.0).to_numpy(dtype=float)
    es = rows["ext_mae_std"].fillna(0.0).to_numpy(dtype=float)
    methods = [str(m) for m in rows["method"]]
    models = [str(m) for m in rows["model"]] if "model" in rows else [""] * len(rows)
    # the model is named only where one method appears with several models
    labels = [f"{m} ({mod})" if methods.count(m) > 1 and mod else m for m, mod in zip(methods, models, strict=True)]
    palette = colormaps["tab10"]
    for i, (name, xi, yi, xs, ys, ok) in enumerate(zip(labels, b, e, bs, es, compliant[~refs], strict=True)):
        color = palette(i % 10)
        ax.errorbar(
            [xi],
            [yi],
            xerr=[xs],
            yerr=[ys],
            fmt=METHOD_MARKERS[i % len(METHOD_MARKERS)],
            color=color,
            markersize=7,
            capsize=3,
            markerfacecolor=color if ok else "none",
            label=name if ok else f"{name} (not challenge-compliant)",
        )
    for k, (_, ref) in enumerate(table[refs].iterrows()):
        ax.axvline(
            float(ref["bacc_pct_mean"]), color="0.35", ls=("--", "-.", ":")[k % 3], lw=1, label=f"{ref['method']}: BAcc"
        )
    bx = np.linspace(max(min(b.min() * 0.8, b.min() - 1), 0.1), max(b.max() * 1.2, b.max() + 1), 200)
    levels = np.quantile(rows["challenge_score_mean"].to_numpy(), [0.0, 0.5, 1.0])
    for lc in np.unique(np.round(levels, 3)):
        ax.plot(bx, lc / (bx / 100.0) ** 0.3, color="0.7", lw=0.8, ls=":", zorder=0)
        ax.annotate(f"L_c={lc:.2f}", (bx[-1], lc / (bx[-1] / 100.0) ** 0.3), fontsize=7, color="0.4")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, title="method", title_fontsize=8)
    ax.set_xlabel("BAcc of the site probe (%), internal test")
    ax.set_ylabel("Ext. MAE (years)")
    ax.set_title("Site leakage vs external error (lower left is better)", fontsize=10)
    return _save(fig, path)
