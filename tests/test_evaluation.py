"""OpenBHB evaluation: challenge score, probes, metrics, brain-age gap, table, figures, CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, SITES, three_splits, write_feature_dir
from scipy import stats
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, KFold

from brainage.cli import main
from brainage.evaluation import (
    AgeBiasCorrection,
    brain_age_gap,
    challenge_score,
    cross_fitted_corrected_gap,
    evaluate_features,
    mae,
    pearson_r,
    per_site_mae,
    rmse,
)
from brainage.evaluation.pipeline import run_evaluation
from brainage.evaluation.protocol import ProbeSettings, collateral_scores, residualize_on_age
from brainage.evaluation.table import load_scores, write_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ challenge score


def test_challenge_score_check_values_of_the_protocol():
    assert round(challenge_score(0.067, 4.18), 2) == 1.86
    assert round(challenge_score(0.051, 3.76), 2) == 1.54


def test_challenge_score_by_hand():
    assert challenge_score(1.0, 3.5) == pytest.approx(3.5)
    assert challenge_score(0.0, 3.5) == 0.0
    # 0.001 ** 0.3 = 10 ** -0.9
    assert challenge_score(0.001, 10.0) == pytest.approx(10.0 * 10.0**-0.9, rel=1e-12)
    # (1/64) ** 0.3 = 2 ** -1.8 = 0.287 (openbhb.md: best L_c at chance is 0.287 x Ext. MAE)
    assert challenge_score(1 / 64, 1.0) == pytest.approx(2.0**-1.8)
    assert round(2.0**-1.8, 3) == 0.287


@pytest.mark.parametrize(
    "bacc, ext, message",
    [
        (6.7, 4.18, "percentage"),
        (-0.01, 4.0, "fraction"),
        (float("nan"), 4.0, "fraction"),
        (0.5, -1.0, "ext_mae"),
        (0.5, float("inf"), "ext_mae"),
    ],
)
def test_challenge_score_rejects_out_of_range(bacc, ext, message):
    with pytest.raises(ValueError, match=message):
        challenge_score(bacc, ext)


# ------------------------------------------------------------------ metrics


def test_metrics_against_numpy_and_scipy():
    rng = np.random.default_rng(1)
    t = rng.uniform(10, 70, 50)
    p = t + rng.normal(0, 4, 50)
    assert mae(t, p) == pytest.approx(np.abs(p - t).sum() / 50)
    assert rmse(t, p) == pytest.approx(math.sqrt(((p - t) ** 2).sum() / 50))
    assert pearson_r(t, p) == pytest.approx(stats.pearsonr(t, p)[0], abs=1e-12)
    assert math.isnan(pearson_r(t, np.full(50, 3.0)))
    with pytest.raises(ValueError, match="length"):
        mae(t, p[:-1])


def test_per_site_mae_by_hand():
    out = per_site_mae([10, 20, 30, 40, 50], [12, 20, 27, 40, 41], ["s2", "s1", "s2", "s1", "s3"])
    assert list(out) == ["s1", "s2", "s3"]
    assert out["s1"] == {"n": 2, "mae": 0.0}
    assert out["s2"] == {"n": 2, "mae": 2.5}
    assert out["s3"] == {"n": 1, "mae": 9.0}


# ------------------------------------------------------------------ probes


def test_evaluate_features_matches_the_probes_run_directly():
    train, internal, external = three_splits(seed=0)
    res = evaluate_features(train, internal, external)

    grid = 10.0 ** np.arange(-2, 3)
    age = GridSearchCV(Ridge(), {"alpha": grid}, cv=5, scoring="r2").fit(train[0], train[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        site = GridSearchCV(
            LogisticRegression(solver="saga", max_iter=150, random_state=0),
            {"C": grid},
            cv=5,
            scoring="balanced_accuracy",
        ).fit(train[0], train[2])
    p_in, p_ex = age.predict(internal[0]), age.predict(external[0])
    bacc = balanced_accuracy_score(internal[2], site.predict(internal[0]))
    ext = np.mean(np.abs(p_ex - external[1]))

    assert res["int_mae"] == pytest.approx(np.mean(np.abs(p_in - internal[1])), rel=1e-9)
    assert res["ext_mae"] == pytest.approx(ext, rel=1e-9)
    assert res["bacc"] == pytest.approx(bacc, abs=1e-12)
    assert res["challenge_score"] == pytest.approx(bacc**0.3 * ext, rel=1e-9)
    assert res["alpha"] == pytest.approx(age.best_params_["alpha"])
    assert res["C"] == pytest.approx(site.best_params_["C"])
    assert res["int_rmse"] == pytest.approx(np.sqrt(np.mean((p_in - internal[1]) ** 2)), rel=1e-9)
    assert res["ext_r"] == pytest.approx(stats.pearsonr(external[1], p_ex)[0], abs=1e-9)
    assert res["int_r"] == pytest.approx(stats.pearsonr(internal[1], p_in)[0], abs=1e-9)
    frame = pd.DataFrame({"s": internal[2], "e": np.abs(p_in - internal[1])})
    assert set(res["int_per_site_mae"]) == set(SITES) == set(frame["s"])
    for s, v in frame.groupby("s")["e"].mean().items():
        assert res["int_per_site_mae"][s]["mae"] == pytest.approx(v, rel=1e-9)
    assert set(res["ext_per_site_mae"]) == {"x", "y"}
    assert res["bacc_chance"] == pytest.approx(0.25)
    assert res["challenge_protocol"] is True
    # planted strengths: age in one feature with 1-year noise, site one-hot at 3 sigma
    assert res["int_mae"] < 1.5 and res["ext_mae"] < 1.5
    assert res["bacc"] > 0.8
    # out-of-fold training predictions are not the in-sample ones
    assert res["predictions"]["train_oof"].shape == (200,)
    assert not np.allclose(res["predictions"]["train_oof"], age.predict(train[0]))


def test_features_without_site_information_give_chance_bacc():
    train, internal, external = three_splits(seed=2, site_strength=0.0, n=(240, 240, 60))
    res = evaluate_features(train, internal, external)
    assert res["bacc_chance"] == 0.25
    assert abs(res["bacc"] - 0.25) < 0.1
    assert res["int_mae"] < 1.5


def test_external_sites_are_optional_and_row_order_is_kept():
    train, internal, external = three_splits(seed=3)
    res = evaluate_features(train, internal, (external[0], external[1], None))
    assert res["ext_per_site_mae"] is None
    assert res["predictions"]["external"].shape == (80,)
    ext_mae = np.mean(np.abs(res["predictions"]["external"] - external[1]))
    assert res["ext_mae"] == pytest.approx(ext_mae)


def test_bad_inputs_are_named():
    train, internal, external = three_splits(seed=4, n=(60, 30, 20))
    x = train[0].copy()
    x[17, 2] = np.nan
    with pytest.raises(ValueError, match=r"^train: .*NaN.*row 17"):
        evaluate_features((x, train[1], train[2]), internal, external)
    # each message starts with the split it is about; planted features have 1 + 4 + 4 = 9 columns
    with pytest.raises(ValueError, match=r"^train: all 60 training subjects come from one site \('a'\)"):
        evaluate_features((train[0], train[1], np.full(60, "a")), internal, external)
    with pytest.raises(ValueError, match="^train: 60 feature rows but 59 ages"):
        evaluate_features((train[0], train[1][:-1], train[2]), internal, external)
    with pytest.raises(ValueError, match="^internal_test: 8 feature columns but train has 9"):
        evaluate_features(train, (internal[0][:, :-1], internal[1], internal[2]), external)
    with pytest.raises(ValueError, match="^internal_test: sites are required"):
        evaluate_features(train, (internal[0], internal[1], None), external)
    with pytest.raises(ValueError, match=r"^train: features must be 2-D .*got shape \(60,\)"):
        evaluate_features((train[0][:, 0], train[1], train[2]), internal, external)


def test_more_than_ten_thousand_features_is_refused_unless_allowed():
    rng = np.random.default_rng(5)

    def wide(n, sites):
        age = rng.uniform(10, 60, n)
        x = rng.normal(0, 1, (n, 10_001)).astype(np.float32)
        x[:, 0] = age
        return x, age, rng.choice(sites, n)

    train, internal, external = wide(20, ["a", "b"]), wide(12, ["a", "b"]), wide(6, ["z"])
    with pytest.raises(ValueError, match="at most 10000"):
        evaluate_features(train, internal, external)
    with pytest.warns(UserWarning, match="exceed the challenge limit"):
        res = evaluate_features(train, internal, external, allow_over_limit=True)
    assert res["challenge_protocol"] is False
    assert res["n_features"] == 10_001


# ------------------------------------------------------------------ brain-age gap


def test_bias_correction_on_an_exact_line():
    age = np.array([10.0, 20.0, 40.0, 70.0])
    corr = AgeBiasCorrection().fit(age, 0.5 * age + 10.0)
    assert corr.slope_ == pytest.approx(0.5)
    assert corr.intercept_ == pytest.approx(10.0)
    assert corr.correct([30.0, 10.0]) == pytest.approx([40.0, 0.0])
    assert corr.corrected_gap([30.0], [35.0]) == pytest.approx([5.0])
    assert brain_age_gap([30.0, 25.0], [20.0, 30.0]) == pytest.approx([10.0, -5.0])
    with pytest.raises(ValueError, match="hardly follows"):
        AgeBiasCorrection().fit(age, np.full(4, 30.0) + 0.01 * age)


def test_bias_correction_removes_the_gap_age_correlation_on_held_out_data():
    rng = np.random.default_rng(6)

    def regressed(n):
        age = rng.uniform(8, 85, n)
        return age, 0.6 * age + 0.4 * 35.0 + rng.normal(0, 4, n)

    cal_age, cal_pred = regressed(1500)
    new_age, new_pred = regressed(1500)
    raw_r = stats.pearsonr(new_age, new_pred - new_age)[0]
    assert raw_r < -0.5
    corr = AgeBiasCorrection().fit(cal_age, cal_pred)
    fixed = corr.corrected_gap(new_pred, new_age)
    assert abs(stats.pearsonr(new_age, fixed)[0]) < 0.08
    assert abs(np.mean(fixed)) < 0.5

    cross = cross_fitted_corrected_gap(new_age, new_pred, n_splits=5, random_state=0)
    assert abs(stats.pearsonr(new_age, cross)[0]) < 0.08
    # each subject corrected by a line fitted on the other folds only
    expected = np.empty_like(new_age)
    for fit, apply in KFold(5, shuffle=True, random_state=0).split(new_age):
        a, b = np.polyfit(new_age[fit], new_pred[fit], 1)
        expected[apply] = (new_pred[apply] - b) / a - new_age[apply]
    np.testing.assert_allclose(cross, expected, rtol=1e-10)
    a_all, b_all = np.polyfit(new_age, new_pred, 1)
    assert not np.allclose(cross, (new_pred - b_all) / a_all - new_age)


# ------------------------------------------------------------------ aggregation and table


def write_scores(path, method, seed, int_mae, bacc, ext_mae, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = dict(
        method=method,
        seed=seed,
        model="ResNet-18",
        int_mae=int_mae,
        bacc=bacc,
        ext_mae=ext_mae,
        challenge_score=bacc**0.3 * ext_mae,
        bacc_chance=0.25,
        int_rmse=1.0,
        ext_rmse=1.0,
        int_r=0.9,
        ext_r=0.9,
        challenge_protocol=True,
        **extra,
    )
    path.write_text(json.dumps(rec))
    return path


def test_aggregation_mean_and_std_by_hand_and_table_layout(tmp_path):
    ev = tmp_path / "evaluation"
    paths = [
        write_scores(ev / "l1/seed0/scores.json", "l1", 0, 2.0, 0.10, 4.0, site_given_age_bacc=0.05, sex_bacc=0.6),
        write_scores(ev / "l1/seed1/scores.json", "l1", 1, 3.0, 0.20, 4.0, site_given_age_bacc=0.07, sex_bacc=0.8),
        write_scores(ev / "l1/seed2/scores.json", "l1", 2, 4.0, 0.30, 4.0, site_given_age_bacc=0.09, sex_bacc=None),
        write_scores(
            ev / "exp/seed0/scores.json", "exp", 0, 2.5, 0.05, 3.0, details="rbf, sigma 2", formulation="reference"
        ),
        write_scores(ev / "combat_l1/seed0/scores.json", "combat_l1", 0, 4.0, 0.04, 5.0),
        write_scores(ev / "reference/age-oracle/scores.json", "ref_age_oracle", None, 0.1, 0.12, 0.2),
    ]
    meta = tmp_path / "cache.json"
    meta.write_text(
        json.dumps({"harmonization": {"external_strategy": "none", "external_test": "left unharmonised on purpose"}})
    )
    from brainage.evaluation.table import harmonization_note

    written = write_table(load_scores(paths), tmp_path / "tables", harmonization=harmonization_note(meta))
    csv = pd.read_csv(written["csv"])
    assert list(csv.columns[:6]) == ["method", "model", "Int. MAE", "BAcc %", "Ext. MAE", "L_c"]
    ours = csv[csv["source"] == "computed (this run)"].set_index("method_id")
    assert list(ours.index) == ["ref_age_oracle", "l1", "combat_l1", "exp"]
    assert ours.loc["ref_age_oracle", "method"] == "reference: age oracle (true age, z-scored)"
    assert bool(ours.loc["ref_age_oracle", "reference"]) and not bool(ours.loc["l1", "reference"])
    l1 = ours.loc["l1"]
    assert l1["n_replicates"] == 3
    assert l1["int_mae_mean"] == pytest.approx(3.0) and l1["int_mae_std"] == pytest.approx(1.0)
    assert l1["bacc_pct_mean"] == pytest.approx(20.0) and l1["bacc_pct_std"] == pytest.approx(10.0)
    assert l1["ext_mae_std"] == pytest.approx(0.0)
    lcs = [0.1**0.3 * 4, 0.2**0.3 * 4, 0.3**0.3 * 4]
    assert l1["challenge_score_mean"] == pytest.approx(sum(lcs) / 3)
    m = sum(lcs) / 3
    assert l1["challenge_score_std"] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in lcs) / 2))
    assert l1["Int. MAE"] == "3.00 ± 1.00" and l1["BAcc %"] == "20.0 ± 10.0"
    # analysis columns: over the replicates that have them (sex: 2 of 3)
    assert l1["site given age %"] == "7.0 ± 2.0" and l1["sex BAcc %"] == "70.0 ± 14.1"
    assert pd.isna(ours.loc["exp", "site given age %"])  # not recorded: empty cell
    assert ours.loc["exp", "Int. MAE"] == "2.50"  # one replicate: no ±
    assert ours.loc["exp", "method"] == "L^exp [reference-code form] (rbf, sigma 2)"
    assert ours.loc["combat_l1", "method"] == "ComBat + L1 †" and not bool(ours.loc["combat_l1", "challenge_compliant"])
    assert "left unharmonised on purpose" in ours.loc["combat_l1", "harmonization"]
    published = csv[csv["source"].str.startswith("published")]
    assert len(published) == 8
    assert published["source"].str.contains("not computed here").all()
    assert published.iloc[0]["L_c"] == "1.86" and published.iloc[0]["challenge_score_mean"] == pytest.approx(1.86)

    md = written["md"].read_text()
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header == ["method", "model", "Int. MAE", "BAcc %", "Ext. MAE", "L_c", "site given age %", "sex BAcc %"]
    assert "†ComBat + L1: not challenge-compliant: harmonised with the internal-test subjects' site labels" in md
    assert "Reference rows" in md and "Analysis columns, not challenge scores" in md
    assert "Published reference numbers (not computed here)" in md
    assert md.index("this run") < md.index("Published")
    assert "left unharmonised on purpose" in md
    for key in ("summary", "tradeoff"):
        data = written[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_table_reads_method_and_seed_from_the_path_and_aggregates_folds(tmp_path):
    p = write_scores(
        tmp_path / "thr/seed7/scores.json",
        None,
        None,
        1.0,
        0.5,
        2.0,
        folds=[
            dict(
                fold=f"f{i}",
                int_mae=1.0 + i,
                bacc=0.5,
                ext_mae=2.0,
                challenge_score=0.5**0.3 * 2.0,
                bacc_chance=0.25,
                challenge_protocol=True,
            )
            for i in range(3)
        ],
    )
    reps = load_scores([p])
    assert list(reps["method_id"]) == ["thr"] * 3 and list(reps["seed"]) == [7] * 3
    assert list(reps["int_mae"]) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="no method recorded"):
        load_scores([write_scores(tmp_path / "loose.json", None, None, 1.0, 0.5, 2.0)])


# ------------------------------------------------------------------ CLI end to end


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    feats = write_feature_dir(base / "features" / "l1" / "seed3", seed=3)
    folds = {
        f"fold{k}": {
            "train": [f"tra{i:03d}" for i in range(200) if i % 3 != k] + [f"int{i:03d}" for i in range(60)],
            "internal_test": [f"tra{i:03d}" for i in range(200) if i % 3 == k],
            "external_test": [f"ext{i:03d}" for i in range(80)],
        }
        for k in range(3)
    }
    (base / "folds.json").write_text(json.dumps(folds))
    out = base / "evaluation" / "l1" / "seed3"
    code = main(
        [
            "evaluate",
            "--features",
            str(feats),
            "--out",
            str(out),
            "--method",
            "l1",
            "--seed",
            "3",
            "--folds",
            str(base / "folds.json"),
        ]
    )
    assert code == 0
    return base, feats, out, folds


def test_cli_evaluate_writes_scores_predictions_and_figures(evaluated):
    base, feats, out, _ = evaluated
    scores = json.loads((out / "scores.json").read_text())
    assert scores["method"] == "l1" and scores["seed"] == 3
    command = scores["provenance"]["command"]
    assert command.startswith("brainage evaluate --features ") and "--method l1 --seed 3" in command
    for key in ("int_mae", "bacc", "ext_mae", "challenge_score", "int_rmse", "ext_rmse", "int_r", "ext_r"):
        assert math.isfinite(scores[key])
    assert scores["head"]["int_mae"] == pytest.approx(1.0)  # the stored prediction is age + 1

    pred = pd.read_csv(out / "predictions.csv", dtype={"participant_id": str})
    assert list(pred.columns[:7]) == ["participant_id", "split", "site", "age", "predicted_age", "gap", "corrected_gap"]
    assert pred["split"].value_counts().to_dict() == {"train": 200, "internal_test": 120, "external_test": 80}
    internal = pred[pred["split"] == "internal_test"]
    external = pred[pred["split"] == "external_test"]
    np.testing.assert_allclose(pred["gap"], pred["predicted_age"] - pred["age"])
    assert np.mean(np.abs(internal["gap"])) == pytest.approx(scores["int_mae"])
    assert np.mean(np.abs(external["gap"])) == pytest.approx(scores["ext_mae"])
    # external corrected gap: line fitted on the internal test set only
    a, b = np.polyfit(internal["age"], internal["predicted_age"], 1)
    np.testing.assert_allclose(
        external["corrected_gap"], (external["predicted_age"] - b) / a - external["age"], rtol=1e-8, atol=1e-8
    )
    gap = scores["brain_age_gap"]
    assert gap["slope"] == pytest.approx(a, rel=1e-6) and gap["intercept"] == pytest.approx(b, rel=1e-6)
    assert gap["corrected_gap_stats"]["external_test"]["mean"] == pytest.approx(
        np.mean((external["predicted_age"] - b) / a - external["age"]), abs=1e-6
    )
    # internal corrected gap: not the in-sample fit
    assert not np.allclose(internal["corrected_gap"], (internal["predicted_age"] - b) / a - internal["age"])
    for name in ("predicted_vs_true", "per_site_mae", "embedding_pca"):
        data = (out / "figures" / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_cli_folds_are_scored_on_their_own_subjects(evaluated):
    base, feats, out, folds = evaluated
    scores = json.loads((out / "scores.json").read_text())
    assert [f["fold"] for f in scores["folds"]] == ["fold0", "fold1", "fold2"]
    splits = {s: np.load(feats / f"{s}.npz") for s in ("train", "internal_test", "external_test")}
    ids = np.concatenate([splits[s]["participant_id"] for s in splits])
    x = np.concatenate([splits[s]["features"] for s in splits])
    age = np.concatenate([splits[s]["age"] for s in splits])
    site = np.concatenate([splits[s]["site"] for s in splits])
    pos = {p: i for i, p in enumerate(ids)}
    fold = folds["fold1"]
    rows = {k: [pos[p] for p in v] for k, v in fold.items()}
    grid = 10.0 ** np.arange(-2, 3)
    probe = GridSearchCV(Ridge(), {"alpha": grid}, cv=5, scoring="r2").fit(x[rows["train"]], age[rows["train"]])
    expected = np.mean(np.abs(probe.predict(x[rows["internal_test"]]) - age[rows["internal_test"]]))
    assert scores["folds"][1]["int_mae"] == pytest.approx(expected, rel=1e-9)
    assert scores["folds"][1]["n_internal"] == len(rows["internal_test"])
    assert scores["folds"][1]["n_sites_train"] == len(set(site[rows["train"]]))
    mean = np.mean([f["ext_mae"] for f in scores["folds"]])
    assert scores["folds_summary"]["ext_mae"]["mean"] == pytest.approx(mean)


def test_cli_table_end_to_end(evaluated, tmp_path):
    base, feats, out, _ = evaluated
    code = main(["table", "--scores", str(base / "evaluation" / "*" / "seed*" / "scores.json"), "--out", str(tmp_path)])
    assert code == 0
    csv = pd.read_csv(tmp_path / "openbhb_table.csv")
    row = csv[csv["source"] == "computed (this run)"].iloc[0]
    assert row["method"] == "L1 baseline" and row["n_replicates"] == 3 and row["folds"] == "fold0,fold1,fold2"
    md = (tmp_path / "openbhb_table.md").read_text()
    assert "| L1 baseline" in md.split("## Published")[0] and "| L1 baseline" in md.split("## Published")[1]


def test_fold_file_with_row_numbers_needs_the_id_table(tmp_path):
    from brainage.evaluation.pipeline import load_folds

    path = tmp_path / "cv.json"
    path.write_text(json.dumps({"f": {"train": [0, 2], "internal_test": [1], "external_test": [3]}}))
    with pytest.raises(ValueError, match="row numbers"):
        load_folds(path)
    (tmp_path / "train.tsv").write_text("participant_id\tage\nA\t1\nB\t2\nC\t3\nD\t4\n")
    assert load_folds(path, tmp_path / "train.tsv") == {
        "f": {"train": ["A", "C"], "internal_test": ["B"], "external_test": ["D"]}
    }


@pytest.mark.parametrize(
    "kind, message",
    [
        (
            "nan",
            r"internal_test\.npz: features contain NaN or inf in 1 row\(s\), first at row 5 \(participant int005\)",
        ),
        ("one_site", r"train\.npz: all 200 training subjects come from one site .*site probe"),
        ("missing", r"missing feature file\(s\) \['external_test\.npz'\]"),
    ],
)
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, kind, message):
    feats = write_feature_dir(
        tmp_path / "f", nan_row=5 if kind == "nan" else None, one_site=kind == "one_site", head=False
    )
    if kind == "missing":
        (feats / "external_test.npz").unlink()
    out = tmp_path / "out"
    assert main(["evaluate", "--features", str(feats), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "brainage evaluate: error:" in err
    assert re.search(message, err), err
    assert not out.exists() or not any(out.rglob("*"))


# ------------------------------------------------------------------ workflow


@pytest.mark.slow
def test_evaluate_rule_dry_run_on_hand_made_features(tmp_path):
    write_feature_dir(tmp_path / "results" / "default" / "features" / "exp" / "seed1")
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    target = "results/default/evaluation/exp/seed1/scores.json"
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "-p", "--cores", "1", target],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr + res.stdout
    assert "rule evaluate:" in res.stdout
    assert "brainage evaluate --features results/default/features/exp/seed1" in res.stdout
    assert "--method exp --seed 1" in res.stdout


def test_embedding_figures_pca_and_tsne(tmp_path):
    from brainage.evaluation.figures import plot_embedding

    train, internal, external = three_splits(seed=8, n=(60, 30, 20))
    feats = {"train": train[0], "internal_test": internal[0], "external_test": external[0]}
    sites = {"train": train[2], "internal_test": internal[2], "external_test": None}
    for method in ("pca", "tsne"):
        path = plot_embedding(feats, sites, tmp_path / f"{method}.png", method=method)
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    with pytest.raises(ValueError, match="umap"):
        plot_embedding(feats, sites, tmp_path / "x.png", method="umap")
    assert not (tmp_path / "x.png").exists()


def test_cli_leaves_the_corrected_gap_empty_when_predictions_ignore_age(tmp_path):
    rng = np.random.default_rng(9)
    feats = tmp_path / "f"
    feats.mkdir()
    for split, n, sites in (("train", 80, SITES), ("internal_test", 40, SITES), ("external_test", 20, ["z"])):
        np.savez(
            feats / f"{split}.npz",
            features=rng.normal(0, 1, (n, 6)).astype(np.float32),
            age=rng.uniform(10, 70, n),
            site=rng.choice(sites, n),
        )
    with pytest.warns(UserWarning, match="age-bias correction skipped"):
        assert main(["evaluate", "--features", str(feats), "--out", str(tmp_path / "out")]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert "hardly follows true age" in scores["brain_age_gap"]["error"]
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert pred["corrected_gap"].isna().all() and pred["gap"].notna().all()


# ------------------------------------------------------------------ reference rows, analysis probes


def confounded_dir(folder, seed=0):
    """Three sites with disjoint age ranges (6-15, 30-45, 60-80), unequal sizes, random sex."""
    rng = np.random.default_rng(seed)
    ranges = {"a": (6, 15), "b": (30, 45), "c": (60, 80)}
    sizes = {"train": (40, 30, 20), "internal_test": (12, 9, 6), "external_test": (10, 0, 10)}
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, counts in sizes.items():
        names = ["x", "y", "z"] if split == "external_test" else list(ranges)
        site = np.repeat(names, counts)
        age = np.concatenate([rng.uniform(*ranges[k], c) for k, c in zip(ranges, counts, strict=True)])
        sex = rng.choice(["female", "male"], len(age))
        np.savez(
            folder / f"{split}.npz",
            features=rng.normal(size=(len(age), 3)).astype(np.float32),
            age=age,
            site=site,
            sex=sex,
            participant_id=np.array([f"{split[:3]}{i:03d}" for i in range(len(age))]),
        )
        data[split] = (age, site, sex)
    return data


def test_reference_constant_features_by_hand(tmp_path):
    data = confounded_dir(tmp_path / "f")
    with pytest.warns(UserWarning, match="age-bias correction skipped"):  # a constant prediction has no slope
        scores = run_evaluation(tmp_path / "f", tmp_path / "out", reference="constant")
    (y_tr, s_tr, _), (y_in, s_in, _), (y_ex, _, _) = data.values()
    # zero features: the Ridge probe predicts the training mean age
    assert scores["int_mae"] == pytest.approx(np.mean(np.abs(y_in - y_tr.mean())), rel=1e-9)
    assert scores["ext_mae"] == pytest.approx(np.mean(np.abs(y_ex - y_tr.mean())), rel=1e-9)
    # the site probe can only predict one class, the most frequent training site ("a", 40 of 90):
    # its recall is 1, the other two 0, so BAcc = 1/3 (and the same on the residualised zeros)
    assert scores["bacc"] == pytest.approx(1 / 3) and scores["site_given_age_bacc"] == pytest.approx(1 / 3)
    assert scores["sex_bacc"] == pytest.approx(0.5) and scores["sex_chance"] == 0.5
    assert scores["challenge_score"] == pytest.approx((1 / 3) ** 0.3 * scores["ext_mae"])
    assert scores["method"] == "ref_constant" and scores["reference"] == "constant" and scores["model"] == ""
    assert not (tmp_path / "out" / "figures").exists()


def test_reference_age_oracle_by_hand(tmp_path):
    data = confounded_dir(tmp_path / "f")
    scores = run_evaluation(tmp_path / "f", tmp_path / "out", reference="age-oracle")
    (y_tr, _, _), (y_in, _, _), (y_ex, _, _) = data.values()
    # z = (age - mean) / sd over train, sum z^2 = n: Ridge gives slope n sd / (n + alpha) at the
    # smallest alpha of the grid (0.01; the fit is exact, so the least shrinkage wins), hence
    # predicted - age = -sd alpha / (n + alpha) z.
    n, sd, alpha = len(y_tr), y_tr.std(), 0.01
    assert scores["alpha"] == alpha
    z_in, z_ex = (y_in - y_tr.mean()) / sd, (y_ex - y_tr.mean()) / sd
    assert scores["int_mae"] == pytest.approx(sd * alpha / (n + alpha) * np.mean(np.abs(z_in)), rel=1e-6)
    assert scores["ext_mae"] == pytest.approx(sd * alpha / (n + alpha) * np.mean(np.abs(z_ex)), rel=1e-6)
    # disjoint age ranges: age alone tells the site of every internal subject
    assert scores["bacc"] == pytest.approx(1.0)
    # and nothing is left once age is removed: the one-class prediction of the constant case
    assert scores["site_given_age_bacc"] == pytest.approx(1 / 3)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # saga at max_iter=150, as the kit
def test_site_given_age_separates_age_from_site_information():
    """Features that carry age only lose their site BAcc once age is removed; features that carry
    the site beyond age keep it."""
    rng = np.random.default_rng(4)
    sites = np.array(["a", "b", "c", "d"])
    centre = {"a": 10.0, "b": 25.0, "c": 45.0, "d": 65.0}

    def split(n):
        site = rng.choice(sites, n)
        age = np.array([rng.normal(centre[s], 6.0) for s in site])
        return age, site

    (y_tr, s_tr), (y_in, s_in) = split(300), split(200)
    settings = ProbeSettings()
    age_only = [np.c_[np.sin(y / 15), (y / 40) ** 2, rng.normal(0, 0.1, (len(y), 2))] for y in (y_tr, y_in)]
    onehot = [(s[:, None] == sites[None]).astype(float) for s in (s_tr, s_in)]
    with_site = [np.c_[a, 2.0 * o] for a, o in zip(age_only, onehot, strict=True)]
    for x, leaks in ((age_only, False), (with_site, True)):
        res = collateral_scores((x[0], y_tr, s_tr), (x[1], y_in, s_in), None, settings)
        site_probe_alone = balanced_accuracy_score(
            s_in,
            GridSearchCV(
                LogisticRegression(solver="saga", max_iter=150, random_state=0),
                {"C": 10.0 ** np.arange(-2, 3)},
                cv=5,
                scoring="balanced_accuracy",
            )
            .fit(x[0], s_tr)
            .predict(x[1]),
        )
        assert site_probe_alone > 0.6  # age alone already tells the site (chance 0.25)
        if leaks:
            assert res["site_given_age_bacc"] > 0.6  # measured 0.77: site information beyond age
        else:
            assert res["site_given_age_bacc"] < 0.4, res  # chance 0.25; measured 0.25
        assert res["sex_bacc"] is None


def test_residualize_on_age_removes_cubic_functions_of_age():
    rng = np.random.default_rng(0)
    y_tr, y_in = rng.uniform(6, 80, 200), rng.uniform(10, 70, 50)

    def f(y):  # cubic polynomials of age lie in the span of the cubic B-spline basis
        t = y / 40
        return np.c_[1 + 2 * t, t**3 - t, 0.5 * t**2]

    r_tr, r_in = residualize_on_age(f(y_tr), y_tr, f(y_in), y_in)
    assert np.abs(r_tr).max() < 1e-9 and np.abs(r_in).max() < 1e-9
    noise = rng.normal(size=(200, 1))
    r_noise, _ = residualize_on_age(noise, y_tr, noise[:50], y_in)
    assert np.abs(r_noise).mean() > 0.5  # what age does not explain stays
