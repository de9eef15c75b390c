"""One evaluation run: feature folder -> scores.json, predictions.csv and figures.

This is what ``brainage evaluate`` executes. Besides the challenge scores it writes, per
subject, the predicted age, the brain-age gap and the age-bias-corrected gap, all as returned
by :func:`~brainage.evaluation.protocol.evaluate_features`. The correction line is never
fitted on the subjects it corrects:

- external test and training subjects: fitted on the whole internal test set;
- internal test subjects: cross-fitted over ``bias_cv`` folds of the internal test set.

Training-subject predictions are out-of-fold Ridge predictions (the probe's alpha, the probe's
folds), since the probe's own in-sample predictions on its training set are optimistic.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage.data.cache import SPLITS
from brainage.errors import BrainAgeError
from brainage.evaluation.features import FeatureSplit, load_feature_dir
from brainage.evaluation.metrics import mae
from brainage.evaluation.protocol import ProbeSettings, evaluate_features
from brainage.evaluation.reference import reference_features, reference_method_id
from brainage.io import check_fields, check_folder_path, read_json, read_table, save_json, save_table

__all__ = [
    "load_folds",
    "evaluate_folds",
    "run_evaluation",
    "read_scores",
    "recorded_probe_settings",
    "SCORE_KEYS",
    "SCORE_FIELDS",
]

log = logging.getLogger(__name__)

SCORE_KEYS = (
    "int_mae",
    "bacc",
    "ext_mae",
    "challenge_score",
    "int_rmse",
    "ext_rmse",
    "int_r",
    "ext_r",
    "bacc_chance",
    "site_given_age_bacc",
    "sex_bacc",
)
#: The kind of each ``scores.json`` field that readers use (see :func:`brainage.io.check_fields`).
SCORE_FIELDS: dict[str, str] = {
    **dict.fromkeys(SCORE_KEYS, "number"),
    "method": "string",
    "model": "string",
    "label": "string",
    "details": "string",
    "formulation": "string",
    "seed": "integer",
    "fold": "string",
    "n_features": "integer",
    "n_sites_train": "integer",
    "challenge_protocol": "boolean",
    "head": "object",
    "probe_settings": "object",
    "brain_age_gap": "object",
    "folds": "list",
}


def read_scores(path: str | os.PathLike) -> dict[str, Any]:
    """A ``scores.json`` of ``brainage evaluate``, its fields checked against :data:`SCORE_FIELDS`.

    Per-fold entries (``folds``) and the ``head`` scores are checked the same way.

    Raises:
        InputNotFoundError: no such file.
        BrainAgeError: unreadable, not a JSON object, or a field of another kind; the message
            names the file and the field.
    """
    path = Path(path)
    scores = check_fields(read_json(path, "scores.json"), SCORE_FIELDS, path)
    check_fields(scores.get("head") or {}, dict.fromkeys(("int_mae", "ext_mae"), "number"), f"{path}, head")
    for i, fold in enumerate(scores.get("folds") or []):
        if not isinstance(fold, dict):
            raise BrainAgeError(f"{path}: folds[{i}] is {fold!r}; expected a JSON object of scores")
        check_fields(fold, SCORE_FIELDS, f"{path}, folds[{i}]")
    return scores


def recorded_probe_settings(path: str | os.PathLike) -> ProbeSettings | None:
    """The probe settings a ``scores.json`` was evaluated with; None when it records none.

    Raises:
        BrainAgeError: the file cannot be read (see :func:`read_scores`), or its
            ``probe_settings`` do not describe valid settings; the message names the file.
    """
    stored = read_scores(path).get("probe_settings")
    if not stored:
        return None
    try:
        return ProbeSettings(**stored)
    except BrainAgeError as err:
        raise BrainAgeError(f"{path}, probe_settings: {err}") from None
    except (TypeError, ValueError) as err:  # unknown keys, or values that are not numbers
        raise BrainAgeError(
            f"{path}, probe_settings: expected the fields {sorted(ProbeSettings.__dataclass_fields__)} with "
            f"numbers and lists of numbers ({err})"
        ) from None


def load_folds(path: str | os.PathLike, id_table: str | os.PathLike | None = None) -> dict[str, dict[str, list[str]]]:
    """Read a fold file ``{fold: {"train": [...], "internal_test": [...], "external_test": [...]}}``.

    Entries are participant ids. Integer entries (the layout of the RAMP kit's
    ``cv_splits_indices.json``, row numbers of its ``train.tsv``) are mapped to participant ids
    through the ``participant_id`` column of ``id_table``, which is then required.
    """
    path = Path(path)
    raw = read_json(path, "fold file")
    if not raw:
        raise BrainAgeError(f"{path}: expected a non-empty mapping of fold name -> splits")
    ids_by_row: np.ndarray | None = None
    if id_table is not None:
        table = read_table(id_table, sep=None)
        if "participant_id" not in table.columns:
            raise BrainAgeError(f"{id_table}: no participant_id column (columns: {list(table.columns)})")
        ids_by_row = table["participant_id"].str.strip().to_numpy()
    folds: dict[str, dict[str, list[str]]] = {}
    for name, sets in raw.items():
        if not isinstance(sets, dict) or any(k not in sets for k in SPLITS):
            raise BrainAgeError(f"{path}: fold {name!r} must list {list(SPLITS)}")
        fold: dict[str, list[str]] = {}
        for split in SPLITS:
            if not isinstance(sets[split], list) or not sets[split]:
                raise BrainAgeError(
                    f"{path}: fold {name!r} {split} is {sets[split]!r}; expected a non-empty list of participant "
                    "ids (or row numbers)"
                )
            items = list(sets[split])
            if items and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                if ids_by_row is None:
                    raise BrainAgeError(
                        f"{path}: fold {name!r} lists row numbers, not participant ids; pass the "
                        "table they index (the kit's train.tsv) to map them"
                    )
                bad = [v for v in items if not 0 <= v < len(ids_by_row)]
                if bad:
                    raise BrainAgeError(f"{path}: fold {name!r} {split}: row {bad[0]} outside the id table")
                items = [str(ids_by_row[v]) for v in items]
            fold[split] = [str(v) for v in items]
        folds[str(name)] = fold
    return folds


def _sex(splits: Mapping[str, FeatureSplit], names: Sequence[str] = ("train", "internal_test")) -> tuple | None:
    """(train sex, internal sex) for the sex probe when both splits have every label, else None."""
    if any(splits[n].sex is None for n in names):
        return None
    return tuple(splits[n].sex for n in names)


def _stack(splits: Mapping[str, FeatureSplit]) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    ids = np.concatenate([s.participant_id for s in splits.values()])
    index = pd.Index(ids)
    if index.has_duplicates:
        dup = index[index.duplicated()][0]
        raise BrainAgeError(f"participant {dup!r} appears more than once across the feature files")
    x = np.concatenate([s.features for s in splits.values()])
    age = np.concatenate([s.age for s in splits.values()])
    site = np.concatenate(
        [s.site if s.site is not None else np.full(len(s), "", dtype=str) for s in splits.values()]
    ).astype(str)
    return index, x, age, site


def evaluate_folds(
    splits: Mapping[str, FeatureSplit],
    folds: Mapping[str, Mapping[str, Sequence[str]]],
    settings: ProbeSettings | None = None,
    allow_over_limit: bool = False,
    bias_cv: int = 5,
) -> list[dict[str, Any]]:
    """Run the protocol once per fold; subjects are looked up by participant id in every split."""
    index, x, age, site = _stack(splits)
    sex = np.concatenate([s.sex for s in splits.values()]) if all(s.sex is not None for s in splits.values()) else None
    results = []
    for name, sets in folds.items():
        triples = []
        for split in SPLITS:
            rows = index.get_indexer(list(sets[split]))
            if (rows < 0).any():
                missing = list(np.asarray(sets[split])[rows < 0][:3])
                raise BrainAgeError(f"fold {name!r} {split}: participant(s) {missing} not in the feature files")
            if split != "external_test" and (site[rows] == "").any():
                raise BrainAgeError(f"fold {name!r} {split}: some subjects have no site label")
            sites = site[rows] if split != "external_test" or (site[rows] != "").all() else None
            triples.append((x[rows], age[rows], sites))
        fold_sex = (
            None
            if sex is None
            else tuple(sex[index.get_indexer(list(sets[split]))] for split in ("train", "internal_test"))
        )
        res = evaluate_features(
            *triples,
            settings=settings,
            allow_over_limit=allow_over_limit,
            names=[f"fold {name} {s}" for s in SPLITS],
            bias_cv=bias_cv,
            sex=fold_sex,
        )
        res.pop("predictions")
        res["fold"] = name
        results.append(res)
    return results


def run_evaluation(
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    method: str | None = None,
    seed: int | None = None,
    model: str | None = None,
    label: str | None = None,
    details: str | None = None,
    settings: ProbeSettings | None = None,
    folds: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    bias_cv: int = 5,
    tsne: bool = False,
    allow_over_limit: bool = False,
    provenance: Mapping[str, Any] | None = None,
    reference: str | None = None,
    formulation: str | None = None,
) -> dict[str, Any]:
    """Evaluate one feature folder and write ``scores.json``, ``predictions.csv``, figures.

    ``scores.json`` holds the challenge scores on the split files as given; with ``folds``
    it also holds one score set per fold under ``"folds"`` (the table then aggregates those).
    ``reference`` (one of :data:`~brainage.evaluation.reference.REFERENCE_KINDS`) scores that
    reference's features instead of the folder's, for the same subjects (no figures).
    ``formulation`` (``paper`` / ``reference``) records which equation of the loss was trained.
    Returns the scores written.
    """
    _check_formulation(formulation)
    settings = settings or ProbeSettings()
    out_dir = check_folder_path(out_dir)  # before the probes run, not when their results are written
    splits = load_feature_dir(features_dir)
    if reference is not None:
        feats = reference_features(reference, {s: splits[s].age for s in SPLITS})
        splits = {s: dataclasses.replace(splits[s], features=feats[s], prediction=None) for s in SPLITS}
        method, model = method or reference_method_id(reference), ""  # no network behind a reference row
    res = evaluate_features(
        *(splits[s].triple() for s in SPLITS),
        settings=settings,
        allow_over_limit=allow_over_limit,
        names=[str(splits[s].path) for s in SPLITS],
        bias_cv=bias_cv,
        sex=_sex(splits),
    )
    preds_raw = res.pop("predictions")
    preds = {
        "train": preds_raw["train_oof"],
        "internal_test": preds_raw["internal"],
        "external_test": preds_raw["external"],
    }

    scores: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "model": model,
        "label": label,
        "details": details,
        "formulation": formulation,
        "reference": reference,
        "features_dir": str(features_dir),
        **res,
        **_head_scores(splits),
    }
    if folds:
        scores.update(_fold_scores(splits, folds, settings, allow_over_limit, bias_cv))
    from brainage import __version__

    scores["provenance"] = {"brainage_version": __version__, **dict(provenance or {})}

    table = _prediction_table(splits, preds, preds_raw["gap"], preds_raw["corrected_gap"])
    tag = " / ".join(str(v) for v in (method, f"seed {seed}" if seed is not None else None) if v)
    if reference is None:
        rs = settings.random_state if settings.random_state is not None else 0
        _write_figures(splits, preds, res, out_dir / "figures", tag, tsne, rs)
    save_table(out_dir / "predictions.csv", table)
    save_json(out_dir / "scores.json", scores)
    log.info(
        "%s: Int. MAE %.2f, BAcc %.1f %% (chance %.1f %%), Ext. MAE %.2f, L_c %.3f",
        tag or features_dir,
        scores["int_mae"],
        100 * scores["bacc"],
        100 * scores["bacc_chance"],
        scores["ext_mae"],
        scores["challenge_score"],
    )
    return scores


def _check_formulation(formulation: str | None) -> None:
    """Raise unless ``formulation`` is None or one of the loss equations' formulations."""
    from brainage.evaluation.table import EQUATIONS

    formulations = sorted({f for _, f in EQUATIONS})
    if formulation is not None and formulation not in formulations:
        raise BrainAgeError(f"unknown formulation {formulation!r}; valid choices are: {', '.join(formulations)}")


def _head_scores(splits: Mapping[str, FeatureSplit]) -> dict[str, Any]:
    """``{"head": ...}``: the MAEs (years) of the network's own regression head when both test splits have it."""
    if not all(splits[s].prediction is not None for s in ("internal_test", "external_test")):
        return {}
    return {
        "head": {
            "note": "the network's own regression head, not the challenge's Ridge probe",
            "int_mae": mae(splits["internal_test"].age, splits["internal_test"].prediction),
            "ext_mae": mae(splits["external_test"].age, splits["external_test"].prediction),
        }
    }


def _fold_scores(
    splits: Mapping[str, FeatureSplit],
    folds: Mapping[str, Mapping[str, Sequence[str]]],
    settings: ProbeSettings,
    allow_over_limit: bool,
    bias_cv: int,
) -> dict[str, Any]:
    """``folds`` (one score set per fold) and ``folds_summary`` (mean and sample std of the four challenge scores)."""
    fold_scores = evaluate_folds(splits, folds, settings=settings, allow_over_limit=allow_over_limit, bias_cv=bias_cv)
    summary = {
        key: {
            "mean": float(np.mean([f[key] for f in fold_scores])),
            "std": float(np.std([f[key] for f in fold_scores], ddof=1)) if len(fold_scores) > 1 else None,
        }
        for key in ("int_mae", "bacc", "ext_mae", "challenge_score")
    }
    return {"folds": fold_scores, "folds_summary": summary}


def _prediction_table(
    splits: Mapping[str, FeatureSplit],
    preds: Mapping[str, np.ndarray],
    gap: Mapping[str, np.ndarray],
    corrected: Mapping[str, np.ndarray],
) -> pd.DataFrame:
    """One row per subject: ids, split, site, age, predicted age, gap, corrected gap (and head output)."""
    rows = []
    for split in SPLITS:
        sp = splits[split]
        frame = pd.DataFrame(
            {
                "participant_id": sp.participant_id,
                "split": split,
                "site": sp.site if sp.site is not None else "",
                "age": sp.age,
                "predicted_age": preds[split],
                "gap": gap[split],
                "corrected_gap": corrected[split],
            }
        )
        if sp.prediction is not None:
            frame["head_predicted_age"] = sp.prediction
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def _write_figures(
    splits: Mapping[str, FeatureSplit],
    preds: Mapping[str, np.ndarray],
    res: Mapping[str, Any],
    fig_dir: Path,
    tag: str,
    tsne: bool,
    random_state: int,
) -> None:
    """Predicted vs true age, MAE per site, and the embedding(s) coloured by site."""
    from brainage.evaluation import figures

    figures.plot_predicted_vs_true(
        {s: (splits[s].age, preds[s]) for s in SPLITS},
        fig_dir / "predicted_vs_true.png",
        title=f"Predicted vs true age {tag}".strip(),
    )
    figures.plot_per_site_mae(
        {"internal_test": res["int_per_site_mae"], "external_test": res["ext_per_site_mae"]},
        fig_dir / "per_site_mae.png",
        title=f"MAE per site {tag}".strip(),
    )
    feats = {s: splits[s].features for s in SPLITS}
    sites = {s: splits[s].site for s in SPLITS}
    figures.plot_embedding(feats, sites, fig_dir / "embedding_pca.png", method="pca", random_state=random_state)
    if tsne:
        figures.plot_embedding(feats, sites, fig_dir / "embedding_tsne.png", method="tsne", random_state=random_state)
