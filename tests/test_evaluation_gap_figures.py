"""OpenBHB evaluation: the brain-age gap returned by evaluate_features, the embedding and
trade-off figures, the table's note on saga's seed, the t-SNE output of the evaluate rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, write_feature_dir
from matplotlib.colors import to_rgba
from scipy import stats
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_predict

from brainage.evaluation import evaluate_features, figures
from brainage.evaluation.table import load_scores, write_table

SPLITS = ("train", "internal_test", "external_test")


def noisy_age_features(rng, n, sites, noise_sd):
    """One feature = age + N(0, noise_sd^2), plus 3 pure-noise columns.

    A least-squares fit of age on such a feature is attenuated: on new subjects
    E[pred | age] = k * age + (1 - k) * mean(age) with k = var(age) / (var(age) + noise_sd^2),
    the regression to the mean that the age-bias correction removes.
    """
    age = rng.uniform(6.0, 80.0, n)
    x = np.c_[age + rng.normal(0.0, noise_sd, n), rng.normal(0.0, 1.0, (n, 3))]
    return x, age, rng.choice(sites, n)


def test_evaluate_features_returns_the_held_out_age_bias_correction():
    rng = np.random.default_rng(11)
    noise_sd = 12.0
    train = noisy_age_features(rng, 600, ["a", "b", "c"], noise_sd)
    internal = noisy_age_features(rng, 400, ["a", "b", "c"], noise_sd)
    external = noisy_age_features(rng, 300, ["x", "y"], noise_sd)
    res = evaluate_features(train, internal, external)
    gap = res["brain_age_gap"]
    corrected = res["predictions"]["corrected_gap"]

    # the age probe run directly with scikit-learn
    probe = GridSearchCV(Ridge(), {"alpha": 10.0 ** np.arange(-2, 3)}, cv=5, scoring="r2").fit(train[0], train[1])
    pred = {
        "train": cross_val_predict(Ridge(alpha=probe.best_params_["alpha"]), train[0], train[1], cv=5),
        "internal_test": probe.predict(internal[0]),
        "external_test": probe.predict(external[0]),
    }
    age = {"train": train[1], "internal_test": internal[1], "external_test": external[1]}

    # the line: least squares of predicted on true age over the whole internal test set
    a, b = np.polyfit(age["internal_test"], pred["internal_test"], 1)
    assert gap["slope"] == pytest.approx(a, rel=1e-8)
    assert gap["intercept"] == pytest.approx(b, rel=1e-8)
    assert gap["n_calibration"] == 400
    # ... which recovers the planted bias: var(U(6, 80)) = 74^2 / 12
    k = (74.0**2 / 12) / (74.0**2 / 12 + noise_sd**2)
    assert a == pytest.approx(k, abs=0.06)
    assert b == pytest.approx((1 - k) * 43.0, abs=3.0)

    # external and training subjects: corrected with that line
    expected = {s: (pred[s] - b) / a - age[s] for s in ("external_test", "train")}
    # internal subjects: each corrected by a line fitted on the other 4 of 5 shuffled folds
    expected["internal_test"] = np.empty(400)
    for fit, apply in KFold(5, shuffle=True, random_state=0).split(age["internal_test"]):
        a_k, b_k = np.polyfit(age["internal_test"][fit], pred["internal_test"][fit], 1)
        expected["internal_test"][apply] = (pred["internal_test"][apply] - b_k) / a_k - age["internal_test"][apply]
    for s in SPLITS:
        np.testing.assert_allclose(corrected[s], expected[s], rtol=1e-7, atol=1e-7)
        raw = pred[s] - age[s]
        assert gap["gap_stats"][s]["mean"] == pytest.approx(np.mean(raw), abs=1e-7)
        assert gap["gap_stats"][s]["std"] == pytest.approx(np.std(raw, ddof=1), rel=1e-7)
        assert gap["corrected_gap_stats"][s]["mean"] == pytest.approx(np.mean(expected[s]), abs=1e-7)
        assert gap["corrected_gap_stats"][s]["std"] == pytest.approx(np.std(expected[s], ddof=1), rel=1e-7)
        assert gap["gap_age_r"][s]["raw"] == pytest.approx(stats.pearsonr(age[s], raw)[0], abs=1e-7)
        assert gap["gap_age_r"][s]["corrected"] == pytest.approx(stats.pearsonr(age[s], expected[s])[0], abs=1e-7)

    # the raw gap regresses to the mean; corrected, it no longer follows age
    for s in SPLITS:
        assert gap["gap_age_r"][s]["raw"] < -0.3
        assert abs(gap["gap_age_r"][s]["corrected"]) < 0.12
    # on the fitting data, the returned line leaves a gap exactly uncorrelated with age
    in_sample = (pred["internal_test"] - gap["intercept"]) / gap["slope"] - age["internal_test"]
    assert abs(stats.pearsonr(age["internal_test"], in_sample)[0]) < 1e-8
    json.dumps(gap)  # goes into scores.json as is


def test_gap_correction_too_few_internal_subjects_warns_and_bias_cv_is_used():
    rng = np.random.default_rng(12)
    train = noisy_age_features(rng, 80, ["a", "b"], 3.0)
    internal = noisy_age_features(rng, 8, ["a", "b"], 3.0)
    external = noisy_age_features(rng, 20, ["z"], 3.0)
    with pytest.warns(UserWarning, match="age-bias correction skipped"):
        res = evaluate_features(train, internal, external)
    gap = res["brain_age_gap"]
    assert "needs at least 10 subjects, got 8" in gap["error"]
    assert "slope" not in gap
    for s in SPLITS:
        assert np.isnan(res["predictions"]["corrected_gap"][s]).all()
        assert gap["corrected_gap_stats"][s] == {"mean": None, "std": None}
        assert gap["gap_age_r"][s]["corrected"] is None

    # 2 folds of 4 subjects are enough
    res = evaluate_features(train, internal, external, bias_cv=2)
    pred_in = res["predictions"]["internal"]
    expected = np.empty(8)
    for fit, apply in KFold(2, shuffle=True, random_state=0).split(internal[1]):
        a_k, b_k = np.polyfit(internal[1][fit], pred_in[fit], 1)
        expected[apply] = (pred_in[apply] - b_k) / a_k - internal[1][apply]
    np.testing.assert_allclose(res["predictions"]["corrected_gap"]["internal_test"], expected, rtol=1e-8)
    assert "cross-fitted over 2 folds" in res["brain_age_gap"]["fitted_on"]["internal_test"]


# ------------------------------------------------------------------ figures


@pytest.fixture
def captured(monkeypatch):
    """Keep the Figure each plot function draws (it is still written to disk)."""
    figs = []
    save = figures._save

    def keep(fig, path):
        figs.append(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return figs


def test_site_order_puts_external_only_sites_last():
    seen, ext = figures.site_order(
        {"train": ["b", "a", "b"], "internal_test": ["c", "a"], "external_test": ["z", "a", "y"]}
    )
    assert seen == ["a", "b", "c"] and ext == ["y", "z"]
    assert figures.site_order({"train": ["b"], "internal_test": ["a"], "external_test": None}) == (["a", "b"], [])


def test_embedding_with_64_sites_has_a_site_colour_bar_and_marked_external_subjects(tmp_path, captured):
    rng = np.random.default_rng(13)
    seen = [f"site{i:02d}" for i in range(64)]
    unseen = [f"ext{i}" for i in range(6)]
    sites = {
        "train": rng.choice(seen, 500),
        "internal_test": rng.choice(seen, 200),
        "external_test": rng.choice(unseen, 100),
    }
    feats = {s: rng.normal(0, 1, (len(v), 5)) for s, v in sites.items()}
    path = figures.plot_embedding(feats, sites, tmp_path / "emb.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = captured[0]
    ax, cax = fig.axes
    # colour bar: one slot per site, seen ones sorted then the unseen ones; labels 1 in 2 at 64 + 6
    order = sorted(seen) + sorted(unseen)
    ticks = [t for t in cax.get_yticklabels() if t.get_text()]
    assert [t.get_text() for t in ticks] == order[::2]
    assert [t.get_position()[1] for t in ticks] == list(range(0, 70, 2))
    red = to_rgba("tab:red")
    assert [t.get_text() for t in ticks if to_rgba(t.get_color()) == red] == ["ext0", "ext2", "ext4"]
    # split legend; the external points are the black-edged ones
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "train",
        "internal test",
        "external test (unseen sites)",
    ]
    edged = [c for c in ax.collections if len(c.get_linewidths()) and c.get_linewidths()[0] > 0]
    assert len(edged) == 1 and len(edged[0].get_offsets()) == 100
    assert np.allclose(edged[0].get_edgecolor()[0][:3], 0.0)  # black (alpha 0.8 as the faces)
    # each point's colour index is its site's position in that order
    idx = {s: i for i, s in enumerate(order)}
    assert list(edged[0].get_array()) == [idx[s] for s in sites["external_test"]]


def test_tradeoff_one_marker_and_colour_per_method_with_a_legend(tmp_path, captured):
    table = pd.DataFrame(
        {
            "method": ["L1 baseline", "ComBat + L1", "y-aware", "L^thr", "L^exp"],
            "model": ["ResNet-18"] * 5,
            "bacc_pct_mean": [30.0, 30.1, 30.2, 30.0, 29.9],
            "bacc_pct_std": [1.0, np.nan, 0.5, 0.5, 0.5],
            "ext_mae_mean": [5.0, 5.01, 5.0, 5.02, 4.99],
            "ext_mae_std": [0.1, 0.1, np.nan, 0.1, 0.1],
        }
    )
    table["challenge_score_mean"] = (table["bacc_pct_mean"] / 100) ** 0.3 * table["ext_mae_mean"]
    figures.plot_tradeoff(table, tmp_path / "t.png")
    (ax,) = captured[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(table["method"])
    points = [
        line
        for line in ax.get_lines()
        if line.get_marker() not in ("None", "", None, "_", "|") and len(line.get_xdata()) == 1
    ]
    assert len(points) == 5
    assert len({p.get_marker() for p in points}) == 5
    assert len({to_rgba(p.get_color()) for p in points}) == 5
    for p, (b, e) in zip(points, zip(table["bacc_pct_mean"], table["ext_mae_mean"], strict=True), strict=True):
        assert (p.get_xdata()[0], p.get_ydata()[0]) == pytest.approx((b, e))
    # no method names written next to the points any more
    assert not {t.get_text() for t in ax.texts} & set(table["method"])
    # error bars kept: the first method's vertical bar spans mean +- std
    segs = [c for c in ax.collections if len(c.get_segments()) == 1]
    spans = [tuple(sorted(s.get_segments()[0][:, 1])) for s in segs]
    assert (pytest.approx(4.9), pytest.approx(5.1)) in [(lo, hi) for lo, hi in spans]


# ------------------------------------------------------------------ table note on saga's seed


def scores_with_seed(path, seed, random_state):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            dict(
                method="l1",
                seed=seed,
                model="ResNet-18",
                int_mae=3.0,
                bacc=0.1,
                ext_mae=4.0,
                challenge_score=0.1**0.3 * 4.0,
                bacc_chance=0.25,
                int_rmse=1.0,
                ext_rmse=1.0,
                int_r=0.9,
                ext_r=0.9,
                challenge_protocol=True,
                probe_settings={"random_state": random_state},
            )
        )
    )
    return path


def test_table_note_states_how_saga_was_seeded(tmp_path):
    seeded = [scores_with_seed(tmp_path / f"a/l1/seed{i}/scores.json", i, 0) for i in range(2)]
    md = write_table(load_scores(seeded), tmp_path / "ta", figures=False)["md"].read_text()
    assert "saga seeded (random_state 0) while the RAMP kit leaves it unseeded" in md
    unseeded = [scores_with_seed(tmp_path / f"b/l1/seed{i}/scores.json", i, None) for i in range(2)]
    md = write_table(load_scores(unseeded), tmp_path / "tb", figures=False)["md"].read_text()
    assert "saga unseeded, as in the RAMP kit" in md and "saga seeded" not in md


# ------------------------------------------------------------------ workflow


@pytest.mark.slow
@pytest.mark.parametrize("tsne", [False, True])
def test_evaluate_rule_declares_the_tsne_figure_only_when_asked(tmp_path, tsne):
    write_feature_dir(tmp_path / "results" / "default" / "features" / "exp" / "seed1")
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    args = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "-n",
        "-p",
        "--cores",
        "1",
        "results/default/evaluation/exp/seed1/scores.json",
    ]
    if tsne:  # merged over the embedded default config
        (tmp_path / "tsne.yaml").write_text("evaluation:\n  tsne: true\n")
        args += ["--configfile", str(tmp_path / "tsne.yaml")]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr + res.stdout
    block = res.stdout.split("rule evaluate:")[1].split("\n\n")[0]
    assert ("figures/embedding_tsne.png" in block) is tsne
    assert (" --tsne" in block) is tsne
