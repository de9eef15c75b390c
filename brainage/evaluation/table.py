"""Aggregating scores over seeds (or the challenge's folds) into the paper's Table 3 layout.

Each ``scores.json`` contributes its replicates: the per-fold scores when it holds ``folds``,
otherwise its one score set. Per method (and model) the table gives mean +- sample standard
deviation (``ddof=1``; blank with one replicate) of Int. MAE, BAcc (%), Ext. MAE and L_c,
where L_c is averaged over replicates (each replicate's own ``BAcc ** 0.3 * Ext. MAE``), as
the challenge server averages its per-fold scores; then the analysis columns site given age (%) and
sex BAcc (%). Reference rows (constant features, age oracle) come first; rows that are not
challenge-compliant are marked with a dagger; contrastive rows name the equation trained.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.evaluation.pipeline import read_scores
from brainage.io import atomic_open, read_json, save_table

__all__ = [
    "METHOD_LABELS",
    "PUBLISHED",
    "resolve_score_paths",
    "load_scores",
    "aggregate",
    "format_table",
    "published_table",
    "harmonization_note",
    "write_table",
]

METHOD_LABELS: dict[str, str] = {
    "ref_constant": "reference: constant features",
    "ref_age_oracle": "reference: age oracle (true age, z-scored)",
    "l1": "L1 baseline",
    "combat_l1": "ComBat + L1",
    "yaware": "y-aware",
    "thr": "L^thr",
    "exp": "L^exp",
}
COLUMNS = ["method", "model", "Int. MAE", "BAcc %", "Ext. MAE", "L_c"]
#: Analysis columns after the challenge's (not challenge scores).
ANALYSIS_COLUMNS = {"site given age %": "site_given_age_pct", "sex BAcc %": "sex_bacc_pct"}
METRICS = ("int_mae", "bacc_pct", "ext_mae", "challenge_score")
DECIMALS = {"int_mae": 2, "bacc_pct": 1, "ext_mae": 2, "challenge_score": 2}
#: Methods whose numbers need something the challenge server never gives a submission.
NOT_COMPLIANT: dict[str, str] = {
    "combat_l1": "harmonised with the internal-test subjects' site labels at test time; the challenge "
    "server gives a submission the image only",
}
DAGGER = " †"
#: The equation a contrastive row was trained with, by (method, formulation) (docs/losses.md).
EQUATIONS: dict[tuple[str, str], str] = {
    ("yaware", "paper"): "Eq. 9",
    ("yaware", "reference"): "Eq. 9",
    ("thr", "paper"): "Eq. 10",
    ("thr", "reference"): "reference-code threshold form",
    ("exp", "paper"): "Eq. 11",
    ("exp", "reference"): "reference-code form",
}

PUBLISHED_SOURCE = "published: Barbano et al., ISBI 2023, RAMP private test set, 3 folds (not computed here)"
# (method, model, Int. MAE, std, BAcc %, std, Ext. MAE, std, L_c); None where not reported.
PUBLISHED: tuple[tuple[Any, ...], ...] = (
    ("L1 baseline", "ResNet-18", 2.67, 0.05, 6.7, 0.1, 4.18, 0.01, 1.86),
    ("ComBat + L1", "ResNet-18", 4.15, 0.01, 4.5, 0.0, 4.76, 0.03, 1.88),
    ("L^exp [reference-code form] (rbf, sigma 2)", "ResNet-18", 2.55, 0.00, 5.1, 0.1, 3.76, 0.01, 1.54),
    ("L^thr [reference-code threshold form] (rbf, sigma 2)", "ResNet-18", 2.95, None, 5.73, None, 4.10, None, 1.74),
    ("y-aware [Eq. 9] (rbf, sigma 2)", "ResNet-18", 2.66, None, 6.60, None, 4.10, None, 1.82),
    ("y-aware [Eq. 9] (rbf, sigma 1)", "ResNet-18", 2.85, None, 6.63, None, 5.49, None, 2.43),
    ("L^exp [reference-code form] (rbf, sigma 1)", "ResNet-18", 2.82, None, 4.97, None, 3.88, None, 1.58),
    ("L^exp [reference-code form] (cauchy, gamma 2)", "ResNet-18", 2.67, None, 5.00, None, 4.55, None, 1.85),
)

_PATH_RE = re.compile(r"(?:^|/)(?P<method>[^/]+)/seed(?P<seed>-?\d+)/[^/]+\.json$")


def resolve_score_paths(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (every ``scores.json`` below) and glob patterns; sorted, unique."""
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            hits = sorted(p.rglob("scores.json"))
        elif p.is_file():
            hits = [p]
        else:
            hits = [Path(h) for h in sorted(glob.glob(str(item), recursive=True))]
        if not hits:
            raise InputNotFoundError(f"no scores.json found at {item}")
        found.extend(hits)
    return sorted(set(found))


def _replicate(rec: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    row = {
        k: rec.get(k)
        for k in (
            "int_mae",
            "bacc",
            "ext_mae",
            "challenge_score",
            "bacc_chance",
            "int_rmse",
            "ext_rmse",
            "int_r",
            "ext_r",
            "challenge_protocol",
            "site_given_age_bacc",
            "sex_bacc",
        )
    }
    missing = [k for k in ("int_mae", "bacc", "ext_mae", "challenge_score") if row[k] is None]
    if missing:
        raise BrainAgeError(f"{extra.get('path')}: scores lack {missing}")
    row.update(extra)
    return row


def load_scores(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per replicate: method_id, label, seed, fold, model, path and the scores.

    ``method`` and ``seed`` come from the JSON, else from a ``.../<method>/seed<N>/scores.json``
    path; ``label`` (the table's method column) from the JSON, else :data:`METHOD_LABELS`, with
    the JSON's ``details`` (e.g. the kernel) in brackets.
    """
    rows: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        rec = read_scores(path)
        m = _PATH_RE.search(path.as_posix())
        method = rec.get("method") or (m.group("method") if m else None)
        seed = rec.get("seed")
        if seed is None and m:
            seed = int(m.group("seed"))
        if method is None:
            raise BrainAgeError(
                f"{path}: no method recorded (pass --method to `brainage evaluate`, or keep the "
                "<method>/seed<N>/scores.json layout)"
            )
        label = _label(method, rec)
        probe = rec.get("probe_settings")
        # saga's seed: "0", ... ; "none" when unseeded (as the kit); "" when not recorded
        saga = (
            ""
            if not isinstance(probe, Mapping) or "random_state" not in probe
            else ("none" if probe["random_state"] is None else str(probe["random_state"]))
        )
        base = dict(
            method_id=method,
            label=label,
            seed=seed,
            model=rec.get("model") or "",
            path=str(path),
            saga_random_state=saga,
        )
        if rec.get("folds"):
            rows.extend(_replicate(f, fold=f.get("fold"), **base) for f in rec["folds"])
        else:
            rows.append(_replicate(rec, fold=None, **base))
    if not rows:
        raise BrainAgeError("no scores to aggregate")
    df = pd.DataFrame(rows)
    df["bacc_pct"] = 100.0 * df["bacc"].astype(float)
    df["bacc_chance_pct"] = 100.0 * df["bacc_chance"].astype(float)
    for key, column in (("site_given_age_bacc", "site_given_age_pct"), ("sex_bacc", "sex_bacc_pct")):
        df[column] = 100.0 * pd.to_numeric(df[key], errors="coerce").astype(float)
    return df


def _label(method: str, rec: Mapping[str, Any]) -> str:
    """Table name of a row: the label, [the equation trained], (details), and a dagger when not compliant."""
    label = rec.get("label") or METHOD_LABELS.get(method, method)
    equation = EQUATIONS.get((method, str(rec.get("formulation"))))
    if equation:
        label = f"{label} [{equation}]"
    if rec.get("details"):
        label = f"{label} ({rec['details']})"
    return label + (DAGGER if method in NOT_COMPLIANT else "")


def aggregate(replicates: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sample std (ddof=1) per (method, model) over replicates.

    Args:
        replicates: output of :func:`load_scores`.
        order: method ids in display order (others follow, sorted).
    """
    keys = list(METRICS) + ["bacc_chance_pct", *ANALYSIS_COLUMNS.values(), "int_rmse", "ext_rmse", "int_r", "ext_r"]
    out = []
    for (method, model), grp in replicates.groupby(["method_id", "model"], sort=False):
        row: dict[str, Any] = {
            "method_id": method,
            "method": str(grp["label"].iloc[0]),
            "model": model,
            "n_replicates": int(len(grp)),
            "seeds": ",".join(str(s) for s in sorted({int(s) for s in grp["seed"] if pd.notna(s)})),
            "folds": ",".join(sorted({str(f) for f in grp["fold"] if pd.notna(f)})),
            "challenge_protocol": all(pd.notna(v) and bool(v) for v in grp["challenge_protocol"]),
            "challenge_compliant": method not in NOT_COMPLIANT,
            "reference": str(method).startswith("ref_"),
        }
        for k in keys:
            vals = grp[k].astype(float).to_numpy()
            vals = vals[~np.isnan(vals)] if k in ANALYSIS_COLUMNS.values() else vals
            row[f"{k}_mean"] = float(np.mean(vals)) if len(vals) else float("nan")
            row[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        out.append(row)
    agg = pd.DataFrame(out)
    rank = {m: i for i, m in enumerate(order or list(METHOD_LABELS))}
    agg["_rank"] = [rank.get(m, len(rank)) for m in agg["method_id"]]
    return agg.sort_values(["_rank", "method_id", "model"]).drop(columns="_rank").reset_index(drop=True)


def _cell(mean: float | None, std: float | None, decimals: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:.{decimals}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{decimals}f}"
    return text


def format_table(agg: pd.DataFrame) -> pd.DataFrame:
    """The six Table 3 columns and the analysis columns as display strings (``mean ± std``)."""
    table = pd.DataFrame(
        {
            "method": agg["method"],
            "model": agg["model"],
            "Int. MAE": [_cell(m, s, 2) for m, s in zip(agg["int_mae_mean"], agg["int_mae_std"], strict=True)],
            "BAcc %": [_cell(m, s, 1) for m, s in zip(agg["bacc_pct_mean"], agg["bacc_pct_std"], strict=True)],
            "Ext. MAE": [_cell(m, s, 2) for m, s in zip(agg["ext_mae_mean"], agg["ext_mae_std"], strict=True)],
            "L_c": [
                _cell(m, s, 2) for m, s in zip(agg["challenge_score_mean"], agg["challenge_score_std"], strict=True)
            ],
        }
    )
    for column, key in ANALYSIS_COLUMNS.items():
        if f"{key}_mean" in agg:
            table[column] = [_cell(m, s, 1) for m, s in zip(agg[f"{key}_mean"], agg[f"{key}_std"], strict=True)]
    return table


def published_table() -> pd.DataFrame:
    """The published rows of openbhb.md, numeric columns named as in :func:`aggregate`."""
    rows = []
    for method, model, im, isd, b, bsd, em, esd, lc in PUBLISHED:
        rows.append(
            {
                "method_id": "",
                "method": method,
                "model": model,
                "int_mae_mean": im,
                "int_mae_std": isd,
                "bacc_pct_mean": b,
                "bacc_pct_std": bsd,
                "ext_mae_mean": em,
                "ext_mae_std": esd,
                "challenge_score_mean": lc,
                "challenge_score_std": None,
            }
        )
    df = pd.DataFrame(rows)
    display = pd.DataFrame(
        {
            "method": df["method"],
            "model": df["model"],
            "Int. MAE": [_cell(m, s, 2) for m, s in zip(df["int_mae_mean"], df["int_mae_std"], strict=True)],
            "BAcc %": [
                _cell(m, s, 2 if pd.isna(s) else 1)
                for m, s in zip(df["bacc_pct_mean"], df["bacc_pct_std"], strict=True)
            ],
            "Ext. MAE": [_cell(m, s, 2) for m, s in zip(df["ext_mae_mean"], df["ext_mae_std"], strict=True)],
            "L_c": [_cell(m, None, 2) for m in df["challenge_score_mean"]],
        }
    )
    return pd.concat([display, df.drop(columns=["method", "model"])], axis=1)


def harmonization_note(meta_path: str | os.PathLike | None) -> str | None:
    """The ComBat external-site strategy recorded in the harmonised cache's ``cache.json``.

    Reads ``harmonization``: a string, or a mapping whose ``external_strategy`` (a short key)
    and ``external_test`` (its description) are joined; falls back to a top-level
    ``external_strategy``. Returns None when ``meta_path`` is None or the entry is absent.

    Raises:
        InputNotFoundError: no file at ``meta_path``.
        BrainAgeError: the file is not a JSON object (see :func:`brainage.io.read_json`).
    """
    if meta_path is None:
        return None
    meta = read_json(meta_path, "the harmonised cache's cache.json")
    value = meta.get("harmonization", meta.get("external_strategy"))
    if isinstance(value, Mapping):
        key, text = value.get("external_strategy"), value.get("external_test")
        if isinstance(key, str) and isinstance(text, str):
            return f"{key}: {text}"
        for name in ("external_test", "external_strategy", "note"):
            if isinstance(value.get(name), str):
                return value[name]
        return None
    return value if isinstance(value, str) else None


def _saga_clause(replicates: pd.DataFrame) -> str:
    """How the site probe's saga solver was seeded, against the RAMP kit (which does not seed it)."""
    values = set(replicates["saga_random_state"]) - {""} if "saga_random_state" in replicates else set()
    if not values:
        return ""
    seeded = sorted(v for v in values if v != "none")
    if not seeded:
        return "; saga unseeded, as in the RAMP kit"
    text = f"; saga seeded (random_state {', '.join(seeded)}) while the RAMP kit leaves it unseeded"
    return text + (" (some runs unseeded)" if "none" in values else "")


def _notes(agg: pd.DataFrame, replicates: pd.DataFrame, reps: str, harmonization: str | None) -> list[str]:
    """How the table was made and how to read it, as Markdown bullet texts."""
    chance = agg["bacc_chance_pct_mean"]
    notes = [
        "Computed by `brainage evaluate` (OpenBHB protocol: Ridge and saga LogisticRegression "
        "probes, 5-fold grid searches, fitted on the training features only, no standardisation"
        f"{_saga_clause(replicates)}).",
        "Cells: mean ± sample standard deviation over replicates (no ± with one replicate). "
        "L_c = BAcc^0.3 × Ext. MAE per replicate, then averaged. Lower is better for every column.",
        f"Replicates: {reps}.",
        f"BAcc chance level (1 / number of training sites): {chance.min():.1f} %"
        + (f" to {chance.max():.1f} %" if chance.max() - chance.min() > 0.05 else "")
        + ".",
    ]
    refs = agg.loc[agg["reference"], "method"].tolist()
    if refs:
        notes.append(
            "Reference rows, scored by the same protocol code on one feature column: constant features "
            "(the mean predictor's MAE, chance BAcc) and the age oracle (the true age, z-scored with the "
            "training mean and sd: its BAcc is what age alone tells the site probe where sites recruit "
            "different ages). A method's BAcc between the oracle's and its own is age; only BAcc above "
            "the oracle's can be scanner information."
        )
    if any(f"{key}_mean" in agg for key in ANALYSIS_COLUMNS.values()):
        notes.append(
            "Analysis columns, not challenge scores: `site given age %` is the BAcc of the same site probe on "
            "the features minus a cubic spline of age fitted on the training split (the internal test "
            "split uses its true ages, which a submission never has): site information beyond age. "
            "`sex BAcc %` is the same probe for sex (chance 50 %), a second collateral attribute."
        )
    flagged = agg.loc[~agg["challenge_compliant"], ["method", "method_id"]]
    for row in flagged.itertuples():
        notes.append(f"†{row.method.replace(DAGGER, '')}: not challenge-compliant: {NOT_COMPLIANT[row.method_id]}.")
    if not agg["challenge_protocol"].all():
        off = ", ".join(agg.loc[~agg["challenge_protocol"], "method"])
        notes.append(f"Not challenge-compliant settings (probe grids/folds changed or > 10,000 features): {off}.")
    if harmonization and "combat_l1" in set(agg["method_id"]):
        notes.append(f"ComBat + L1, external (unseen) sites: {harmonization}")
    return notes


def write_table(
    replicates: pd.DataFrame,
    out_dir: str | os.PathLike,
    name: str = "openbhb_table",
    harmonization: str | None = None,
    figures: bool = True,
    provenance: str | None = None,
) -> dict[str, Path]:
    """Write ``<name>.csv``, ``<name>.md`` and (optionally) the summary figures.

    The CSV holds the computed rows then the published ones (``source`` tells them apart), with
    the six display columns first and the numeric mean/std columns after. The Markdown file
    holds the computed table, notes, and the published table under its own heading.
    """
    out_dir = Path(out_dir)
    agg = aggregate(replicates)
    shown = format_table(agg)
    computed = pd.concat([shown, agg.drop(columns=["method", "model"])], axis=1)
    computed["source"] = "computed (this run)"
    computed["harmonization"] = [harmonization if m == "combat_l1" else "" for m in agg["method_id"]]
    pub = published_table()
    pub["source"] = PUBLISHED_SOURCE
    pub["harmonization"] = ""
    csv = pd.DataFrame(computed.to_dict("records") + pub.to_dict("records"), columns=list(computed.columns))
    paths = {"csv": save_table(out_dir / f"{name}.csv", csv)}

    reps = "; ".join(
        f"{r.method}: {r.n_replicates} replicate(s)"
        + (f" (seeds {r.seeds})" if r.seeds else "")
        + (f" (folds {r.folds})" if r.folds else "")
        for r in agg.itertuples()
    )
    notes = _notes(agg, replicates, reps, harmonization)
    if provenance:
        notes.append(f"Made by: `{provenance}`")
    with atomic_open(out_dir / f"{name}.md", "w") as fh:
        fh.write("## OpenBHB evaluation (this run)\n\n")
        fh.write(shown.to_markdown(index=False) + "\n\n")
        fh.write("".join(f"- {n}\n" for n in notes))
        fh.write("\n## Published reference numbers (not computed here)\n\n")
        fh.write(
            "Barbano et al., ISBI 2023, Table 3: RAMP private test set of the OpenBHB "
            "challenge, 3 folds, full-resolution VBM, 300 epochs. Not comparable cell for "
            "cell with a run on other data, grids or training budgets.\n\n"
        )
        fh.write(pub[COLUMNS].to_markdown(index=False) + "\n")
    paths["md"] = out_dir / f"{name}.md"
    if figures:
        from brainage.evaluation.figures import plot_table_summary, plot_tradeoff

        paths["summary"] = plot_table_summary(agg, out_dir / f"{name}_summary.png")
        paths["tradeoff"] = plot_tradeoff(agg, out_dir / f"{name}_tradeoff.png")
    return paths
