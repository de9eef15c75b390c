"""ComBat harmonisation: against neuroHarmonize and closed-form expectations, chunking, the
missing-site workaround, the npz model, age blindness, bad input, and the CLI end to end."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from neuroHarmonize import harmonizationApply, harmonizationLearn

from brainage.cli import main
from brainage.data.cache import TrainingCache
from brainage.data.preprocess import preprocess
from brainage.harmonize import ComBatHarmonizer, chunk_bounds, covariate_frame, encode_sex
from conftest import write_openbhb


def simulate(sizes=(40, 40, 40, 40), p=400, seed=0, shift_sd=1.0, scale_sd=0.3):
    """Features with known per-site additive (shift) and multiplicative (scale) effects.

    x = alpha + beta * sex + shift[site] + scale[site] * noise, per feature.
    """
    rng = np.random.default_rng(seed)
    site = np.repeat(np.arange(len(sizes)), sizes)
    n = len(site)
    sex = rng.integers(0, 2, n).astype(float)
    alpha = rng.normal(0, 1, p)
    beta = rng.normal(0.5, 0.2, p)
    shift = rng.normal(0, shift_sd, (len(sizes), p))
    scale = np.exp(rng.normal(0, scale_sd, (len(sizes), p)))
    X = alpha + sex[:, None] * beta + shift[site] + scale[site] * rng.normal(size=(n, p))
    covars = pd.DataFrame({"SITE": [f"site{s}" for s in site], "sex": sex})
    return X, covars, {"site": site, "sex": sex, "alpha": alpha, "beta": beta}


def library_learn(X, covars, eb=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return harmonizationLearn(X, covars, eb=eb)


def library_apply(X, covars, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return harmonizationApply(X, covars, model)


def ols_site_sex(X, site, sex):
    """Independent least squares of X on [site dummies, sex]: (site intercepts (K, p), sex slope (p,),
    residual variance with divisor n (p,))."""
    sites = np.unique(site)
    design = np.column_stack([(site[:, None] == sites[None]).astype(float), sex])
    coef, *_ = np.linalg.lstsq(design, X, rcond=None)
    resid = X - design @ coef
    return coef[:-1], coef[-1], (resid ** 2).mean(axis=0)


# --------------------------------------------------------------------------- the model itself


def test_without_eb_site_means_and_variances_become_equal_in_closed_form():
    X, covars, truth = simulate(sizes=(30, 45, 25, 50))
    site, sex = truth["site"], truth["sex"]
    H = ComBatHarmonizer(eb=False, chunk_size=150).fit_transform(X, covars)

    intercepts, slope, sigma2 = ols_site_sex(X, site, sex)
    counts = np.bincount(site)
    grand_mean = counts @ intercepts / counts.sum()
    resid_before = X - sex[:, None] * slope
    resid_after = H - sex[:, None] * slope
    before = np.array([resid_before[site == j].mean(axis=0) for j in range(4)])
    after = np.array([resid_after[site == j].mean(axis=0) for j in range(4)])
    assert np.ptp(before, axis=0).mean() > 1.0  # the simulated site effect is there
    # Without EB the site location is the site's mean residual and is removed exactly: every site's
    # sex-adjusted mean is the grand mean and every within-site variance the pooled variance.
    np.testing.assert_allclose(after, np.broadcast_to(grand_mean, after.shape), atol=1e-9)
    var_after = np.array([resid_after[site == j].var(axis=0, ddof=1) for j in range(4)])
    np.testing.assert_allclose(var_after, np.broadcast_to(sigma2, var_after.shape), rtol=1e-9)


def test_eb_removes_known_site_effects():
    X, covars, truth = simulate(sizes=(40, 40, 40, 40), p=600, seed=1)
    site, sex = truth["site"], truth["sex"]
    H = ComBatHarmonizer(chunk_size=300).fit_transform(X, covars)
    clean_before = X - sex[:, None] * truth["beta"]
    clean_after = H - sex[:, None] * truth["beta"]

    def mean_spread(values):
        return np.ptp([values[site == j].mean(axis=0) for j in range(4)], axis=0).mean()

    def sd_ratio(values):
        sds = np.array([values[site == j].std(axis=0) for j in range(4)])
        return (sds.max(axis=0) / sds.min(axis=0)).mean()

    # site means: spread of ~2 (shift sd 1, 4 sites) falls to the noise of 40-subject means
    assert mean_spread(clean_before) > 1.5
    assert mean_spread(clean_after) < 0.45  # 4-site range of N(0, 1/40) means with estimated slope: ~0.35
    assert mean_spread(clean_after) < 0.25 * mean_spread(clean_before)
    # site scales: exp(N(0, 0.3)) factors converge to a common scale
    assert sd_ratio(clean_before) > 1.5
    assert sd_ratio(clean_after) < 1.3  # max/min of 4 sample sds of 40 subjects: ~1.25
    assert sd_ratio(clean_after) < sd_ratio(clean_before) - 0.3


def test_unchunked_equals_neuroharmonize_and_apply_matches():
    X, covars, _ = simulate(p=300, seed=2)
    rng = np.random.default_rng(5)
    test = rng.permutation(len(X))[:40]
    train = np.setdiff1d(np.arange(len(X)), test)
    cov_train, cov_test = covars.iloc[train].reset_index(drop=True), covars.iloc[test].reset_index(drop=True)
    assert set(cov_test["SITE"]) == set(cov_train["SITE"])

    model, expected = library_learn(X[train], cov_train)
    ours = ComBatHarmonizer(chunk_size=300)
    H = ours.fit_transform(X[train], cov_train)
    np.testing.assert_allclose(H, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.gamma_star_, model["gamma_star"], atol=1e-12)
    np.testing.assert_allclose(ours.delta_star_, model["delta_star"], atol=1e-12)
    np.testing.assert_allclose(ours.transform(X[test], cov_test), library_apply(X[test], cov_test, model), atol=1e-12)


def test_chunking_changes_only_the_eb_priors():
    X, covars, _ = simulate(p=2000, seed=3, sizes=(30, 30, 30, 30))
    # no EB: nothing is estimated across features, so chunks change nothing
    _, expected = library_learn(X, covars, eb=False)
    chunked = ComBatHarmonizer(eb=False, chunk_size=500).fit_transform(X, covars)
    np.testing.assert_allclose(chunked, expected, atol=1e-12)

    # EB: each chunk of 500 features gets its own priors. Measured on this case: mean |difference|
    # 0.0031 (0.43 % of the mean ComBat correction, 0.71), max 0.095 (0.053 data sd),
    # correlation of the corrections 0.99998.
    ref = ComBatHarmonizer(chunk_size=2000).fit_transform(X, covars)
    four = ComBatHarmonizer(chunk_size=500).fit_transform(X, covars)
    diff = np.abs(four - ref)
    correction = np.abs(ref - X).mean()
    assert 0 < diff.mean() < 0.02 * correction
    assert diff.max() < 0.1 * X.std()
    corr = np.corrcoef((four - X).ravel(), (ref - X).ravel())[0, 1]
    assert corr > 0.999


def test_chunk_bounds_are_balanced():
    b = chunk_bounds(10, 4)
    assert b.tolist() == [0, 3, 6, 10]  # three chunks, no remainder of width 2
    assert chunk_bounds(7, 100).tolist() == [0, 7]
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_bounds(10, 1)


def test_missing_site_workaround():
    X, covars, _ = simulate(p=120, seed=4)
    train = np.arange(len(X)) % 4 != 0
    test = ~train
    cov_train = covars[train].reset_index(drop=True)
    model, _ = library_learn(X[train], cov_train)
    h = ComBatHarmonizer(chunk_size=120).fit(X[train], cov_train)

    cov_test = covars[test].reset_index(drop=True)
    full = library_apply(X[test], cov_test, model)  # the library on a batch with every site
    subset = cov_test["SITE"].isin(["site0", "site2"]).to_numpy()
    with pytest.raises((ValueError, IndexError)):  # "shapes not aligned" or an index error, by case
        library_apply(X[test][subset], cov_test[subset].reset_index(drop=True), model)
    ours = h.transform(X[test][subset], cov_test[subset].reset_index(drop=True))
    np.testing.assert_allclose(ours, full[subset], atol=1e-12)
    # one subject alone (three sites missing)
    one = h.transform(X[test][:1], cov_test[:1])
    np.testing.assert_allclose(one, full[:1], atol=1e-12)
    # chunked model: a subset gives, row for row, what the complete batch gives
    chunked = ComBatHarmonizer(chunk_size=40).fit(X[train], cov_train)
    np.testing.assert_array_equal(
        chunked.transform(X[test][subset], cov_test[subset].reset_index(drop=True)),
        chunked.transform(X[test], cov_test)[subset],
    )


def test_npz_round_trip_equals_the_in_memory_neuroharmonize_model(tmp_path):
    X, covars, _ = simulate(p=200, seed=6)
    train = np.arange(len(X)) % 5 != 0
    cov_train, cov_test = covars[train].reset_index(drop=True), covars[~train].reset_index(drop=True)
    lib_model, _ = library_learn(X[train], cov_train)
    h = ComBatHarmonizer(chunk_size=500).fit(X[train], cov_train)
    h.save(tmp_path / "model.npz")

    with np.load(tmp_path / "model.npz", allow_pickle=False) as z:
        assert set(z.files) == {"format", "sites", "covariates", "grand_mean", "coef", "var_pooled",
                                "gamma_star", "delta_star", "passthrough", "chunk_bounds", "eb", "chunk_size"}
        assert not any(z[k].dtype.hasobject for k in z.files)
        assert z["sites"].tolist() == ["site0", "site1", "site2", "site3"]
        assert z["covariates"].tolist() == ["sex"]
    loaded = ComBatHarmonizer.load(tmp_path / "model.npz")
    expected = library_apply(X[~train], cov_test, lib_model)
    np.testing.assert_allclose(loaded.transform(X[~train], cov_test), expected, atol=1e-12)
    np.testing.assert_array_equal(loaded.transform(X[~train], cov_test), h.transform(X[~train], cov_test))


def test_constant_feature_passes_through():
    X, covars, _ = simulate(p=50, seed=7)
    X[:, 10] = 3.25
    h = ComBatHarmonizer(chunk_size=50)
    H = h.fit_transform(X, covars)
    assert h.passthrough_.tolist() == [i == 10 for i in range(50)]
    assert np.all(H[:, 10] == 3.25) and np.all(np.isfinite(H))
    _, expected = library_learn(np.delete(X, 10, axis=1), covars)
    np.testing.assert_allclose(np.delete(H, 10, axis=1), expected, atol=1e-12)


def test_transductive_option_aligns_new_sites_to_the_training_reference():
    X, covars, truth = simulate(sizes=(40, 40, 40, 30, 30), p=200, seed=8)
    site, sex = truth["site"], truth["sex"]
    train, new = site < 3, site >= 3
    h = ComBatHarmonizer(eb=False, chunk_size=200).fit(X[train], covars[train].reset_index(drop=True))
    cov_new = covars[new].reset_index(drop=True)
    with pytest.raises(ValueError, match="site3"):
        h.transform(X[new], cov_new)
    assert np.isnan(h.set_params(unseen_sites="nan").transform(X[new], cov_new)).all()
    np.testing.assert_array_equal(h.set_params(unseen_sites="passthrough").transform(X[new], cov_new), X[new])

    H = h.transform_unseen_sites(X[new], cov_new)
    intercepts, slope, sigma2 = ols_site_sex(X[train], site[train], sex[train])
    counts = np.bincount(site[train])
    grand_mean = counts @ intercepts / counts.sum()
    for j in (3, 4):
        rows = site[new] == j
        resid = H[rows] - sex[new][rows, None] * slope
        np.testing.assert_allclose(resid.mean(axis=0), grand_mean, atol=1e-9)
        np.testing.assert_allclose(resid.var(axis=0, ddof=1), sigma2, rtol=1e-9)


# --------------------------------------------------------------------------- age and bad input


def test_age_can_not_reach_the_harmonisation():
    table = pd.DataFrame({"siteXacq": ["a", "b"], "site": ["x", "y"], "sex": ["male", "female"], "age": [10.0, 70.0]})
    frame = covariate_frame(table)
    assert list(frame.columns) == ["SITE", "sex"]
    assert frame["SITE"].tolist() == ["a", "b"] and frame["sex"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="age"):
        covariate_frame(table, ("sex", "age"))
    X, covars, _ = simulate(p=20)
    with pytest.raises(ValueError, match="age"):
        ComBatHarmonizer(covariates=("sex", "age")).fit(X, covars.assign(age=1.0))
    with pytest.raises(ValueError, match="age"):
        ComBatHarmonizer(covariates=("Age_z",)).fit(X, covars)
    h = ComBatHarmonizer().fit(X, covars)
    with pytest.raises(ValueError, match="age"):
        h.transform(X, covars.assign(age=np.arange(len(X), dtype=float)))


def test_encode_sex():
    np.testing.assert_array_equal(encode_sex(["male", "Female", "M", "f", 0, 1]), [1, 0, 1, 0, 0, 1])
    with pytest.raises(ValueError, match="'other'"):
        encode_sex(["male", "other"])
    with pytest.raises(ValueError, match="row 1"):
        encode_sex(["male", None])


@pytest.mark.parametrize("case, message", [
    ("one_site", "single site"),
    ("lonely", r"\['site3'\] have a single training subject"),
    ("nan", "NaN/inf value.*row 5, feature 7"),
    ("sex_constant", "'sex' has no variance"),
    ("sex_confounded", "confounded with SITE"),
    ("rows", "X has 160 rows but covars has 159"),
    ("columns", "exactly the columns"),
    ("strings", "must be numeric"),
])
def test_bad_input_is_named(case, message):
    X, covars, _ = simulate(p=30)
    if case == "one_site":
        covars["SITE"] = "site0"
    elif case == "lonely":
        covars.loc[covars.index[-39:], "SITE"] = "site2"
    elif case == "nan":
        X[5, 7] = np.nan
    elif case == "sex_constant":
        covars["sex"] = 1.0
    elif case == "sex_confounded":
        covars["sex"] = (covars["SITE"].isin(["site0", "site1"])).astype(float)
    elif case == "rows":
        covars = covars.iloc[:-1]
    elif case == "columns":
        covars = covars.assign(tiv=1.0)
    elif case == "strings":
        covars["sex"] = np.where(covars["sex"] > 0, "male", "female")
    with pytest.raises(ValueError, match=message):
        ComBatHarmonizer(chunk_size=10).fit(X, covars)


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmonize")
    write_openbhb(root / "openbhb", n=48, factor=8, seed=11)
    preprocess(root / "openbhb", root / "cache", progress=False)
    return root


def _masked(cache: TrainingCache, split: str) -> np.ndarray:
    return np.asarray(cache.split(split).volumes)[:, cache.mask].astype(np.float64)


def test_cli_end_to_end_against_neuroharmonize(tiny_cache, capsys):
    root = tiny_cache
    out = root / "combat"
    assert main(["harmonize", "--cache", str(root / "cache"), "--out", str(out), "--chunk-size", "100000", "--quiet"]) == 0
    src, dst = TrainingCache(root / "cache"), TrainingCache(out)
    mask = src.mask
    np.testing.assert_array_equal(dst.mask, mask)

    tables = {s: src.split(s).table for s in ("train", "internal_test", "external_test")}
    cov = {s: pd.DataFrame({"SITE": t["siteXacq"].astype(str).to_numpy(),
                            "sex": (t["sex"] == "male").astype(float).to_numpy()}) for s, t in tables.items()}
    model, expected_train = library_learn(_masked(src, "train"), cov["train"])
    internal = _masked(src, "internal_test")
    assert set(cov["internal_test"]["SITE"]) == set(cov["train"]["SITE"])
    expected_internal = library_apply(internal, cov["internal_test"], model)

    for split, expected in (("train", expected_train), ("internal_test", expected_internal)):
        vols = np.asarray(dst.split(split).volumes)
        assert vols.dtype == np.float16 and vols.shape == (len(tables[split]),) + tuple(mask.shape)
        assert np.all(vols[:, ~mask] == 0)
        np.testing.assert_array_equal(vols[:, mask], expected.astype(np.float16))
        pd.testing.assert_frame_equal(dst.split(split).table, tables[split])
    # external sites are unseen: left as they were (the default strategy)
    np.testing.assert_array_equal(np.asarray(dst.split("external_test").volumes), np.asarray(src.split("external_test").volumes))

    meta = json.loads((out / "cache.json").read_text())
    info = meta["harmonization"]
    assert info["external_strategy"] == "none" and "unharmonised" in info["external_test"]
    assert info["covariates"] == ["sex"] and info["age_used"] is False and info["n_chunks"] == 1
    assert meta["shape"] == src.meta["shape"] and meta["splits"] == src.meta["splits"]
    loaded = ComBatHarmonizer.load(out / "model.npz")
    np.testing.assert_allclose(loaded.transform(internal, cov["internal_test"]), expected_internal, atol=1e-12)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["cache.json", "mask.nii.gz", "model.npz"] + [f"{s}.{e}" for s in tables for e in ("npy", "tsv")])


def test_cli_outputs_do_not_depend_on_ages(tiny_cache):
    root = tiny_cache
    permuted = root / "cache_permuted_ages"
    shutil.copytree(root / "cache", permuted)
    rng = np.random.default_rng(0)
    for split in ("train", "internal_test", "external_test"):
        table = pd.read_csv(permuted / f"{split}.tsv", sep="\t", dtype=str)
        table["age"] = rng.permutation(table["age"].to_numpy())[::-1]
        table.to_csv(permuted / f"{split}.tsv", sep="\t", index=False)
    for name, cache in (("a", root / "cache"), ("b", permuted)):
        assert main(["harmonize", "--cache", str(cache), "--out", str(root / f"ages_{name}"),
                     "--chunk-size", "300", "--external", "transductive", "--quiet"]) == 0
    for split in ("train", "internal_test", "external_test"):
        a, b = (np.load(root / f"ages_{n}" / f"{split}.npy") for n in "ab")
        np.testing.assert_array_equal(a, b)
    ext = np.load(root / "ages_a" / "external_test.npy")
    assert not np.array_equal(ext, np.load(root / "cache" / "external_test.npy"))  # transductive did act
    meta = json.loads((root / "ages_a" / "cache.json").read_text())["harmonization"]
    assert meta["external_strategy"] == "transductive" and "not challenge-compliant" in meta["external_test"]
    assert meta["n_chunks"] == len(chunk_bounds(int(TrainingCache(root / "cache").mask.sum()), 300)) - 1 > 1


@pytest.mark.parametrize("edit, message", [
    ("one_site", "single site"),
    ("lonely", "site(s) ['lonely'] have a single training subject"),
    ("external_lonely", "external site(s) ['lonely'] have a single subject"),
])
def test_cli_bad_cache_fails_cleanly(tiny_cache, tmp_path, capsys, edit, message):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache / "cache", cache)
    split = "external_test" if edit == "external_lonely" else "train"
    table = pd.read_csv(cache / f"{split}.tsv", sep="\t", dtype=str)
    if edit == "one_site":
        table["siteXacq"] = "0"
    else:
        table.loc[0, "siteXacq"] = "lonely"
    table.to_csv(cache / f"{split}.tsv", sep="\t", index=False)
    out = tmp_path / "out"
    assert main(["harmonize", "--cache", str(cache), "--out", str(out), "--quiet", "--external", "transductive"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
