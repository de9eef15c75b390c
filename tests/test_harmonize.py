"""ComBat harmonisation with age protected at fit time: closed forms from an independent least
squares, neuroHarmonize's estimates, ground truth on age-confounded sites, chunking, the npz
model, the age-free transform, bad input, and the CLI end to end."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import write_openbhb
from neuroHarmonize import harmonizationLearn
from sklearn.linear_model import Ridge

from brainage.cli import main
from brainage.data.cache import TrainingCache
from brainage.data.preprocess import preprocess
from brainage.harmonize import ComBatHarmonizer, chunk_bounds, covariate_frame, encode_sex


def simulate(sizes=(40, 40, 40, 40), p=400, seed=0, shift_sd=1.0, scale_sd=0.3, age_sd=5.0):
    """Features of age-confounded sites with known effects, per feature.

    Site j recruits ages around its own centre (12 to 60 years), so site and age are confounded.
    x = alpha + beta * sex + age_effect(age) + shift[site] + scale[site] * noise, with a quadratic
    age effect in decades from 40.
    """
    rng = np.random.default_rng(seed)
    k = len(sizes)
    site = np.repeat(np.arange(k), sizes)
    n = len(site)
    centres = np.linspace(12, 60, k)
    age = np.clip(rng.normal(centres[site], age_sd), 6, 88)
    sex = rng.integers(0, 2, n).astype(float)
    alpha = rng.normal(0, 1, p)
    beta = rng.normal(0.5, 0.2, p)
    slope = rng.normal(-1.0, 0.3, p)
    curve = rng.normal(0.0, 0.1, p)
    decades = (age - 40) / 10
    age_effect = decades[:, None] * slope + decades[:, None] ** 2 * curve
    shift = rng.normal(0, shift_sd, (k, p))
    scale = np.exp(rng.normal(0, scale_sd, (k, p)))
    X = alpha + sex[:, None] * beta + age_effect + shift[site] + scale[site] * rng.normal(size=(n, p))
    covars = pd.DataFrame({"SITE": [f"site{s}" for s in site], "sex": sex, "age": age})
    truth = {"site": site, "sex": sex, "age": age, "clean": alpha + sex[:, None] * beta + age_effect}
    return X, covars, truth


def library_learn(X, covars, eb=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return harmonizationLearn(X, covars, eb=eb)


def ols(X, site, sex, age):
    """Independent least squares of X on [site dummies, sex, age, age^2] (ages in years).

    Returns the site intercepts (K, p), the covariate fit c.beta per subject (n, p) and the residual
    variance with divisor n (p,). Differences of site intercepts, c.beta up to a constant shared by
    all subjects, and the residuals do not depend on how the quadratic in age is parametrised.
    """
    sites = np.unique(site)
    covariates = np.column_stack([sex, age, age**2])
    design = np.column_stack([(site[:, None] == sites[None]).astype(float), covariates])
    coef, *_ = np.linalg.lstsq(design, X, rcond=None)
    resid = X - design @ coef
    return coef[: len(sites)], covariates @ coef[len(sites) :], (resid**2).mean(axis=0)


# neuroCombat's make_design_matrix stores numeric covariates as float32, so the fit sees them rounded
# to 2^-24 relative; effects of the order of the data then move by a few 2^-24 x |X|. Ten of them:
def design_tolerance(X):
    return 10 * 2.0**-24 * np.abs(X).max()


def expected_location(X, site, sex, age):
    """The location transform in closed form without EB: x - (B_j - sum_k n_k / n B_k)."""
    intercepts, _, _ = ols(X, site, sex, age)
    counts = np.bincount(site)
    grand = counts @ intercepts / counts.sum()
    return X - (intercepts - grand)[site]


def split_rows(site, every=5):
    """Every ``every``-th subject of each site is held out (internal test: sites seen in training)."""
    rank = np.concatenate([np.arange(c) for c in np.bincount(site)])
    return rank % every != 0, rank % every == 0


def sites_of(covars):
    return covars["SITE"].to_numpy()


# --------------------------------------------------------------------------- the model itself


def test_location_transform_in_closed_form_without_eb():
    X, covars, truth = simulate(sizes=(30, 45, 25, 50))
    H = ComBatHarmonizer(eb=False, chunk_size=150).fit_transform(X, covars)
    expected = expected_location(X, truth["site"], truth["sex"], truth["age"])
    np.testing.assert_allclose(H, expected, rtol=0, atol=design_tolerance(X))


def test_location_scale_transform_in_closed_form_without_eb():
    """(x - m_j - (B_j - alpha)) / sqrt(delta_j) + m_j with m_j = alpha + mean over site j of c.beta and
    delta_j = the site's residual variance (ddof 1) over the pooled one (divisor n)."""
    X, covars, truth = simulate(sizes=(30, 45, 25, 50), seed=3)
    site = truth["site"]
    H = ComBatHarmonizer(eb=False, adjust="location-scale", chunk_size=400).fit_transform(X, covars)
    intercepts, fitted, sigma2 = ols(X, site, truth["sex"], truth["age"])
    counts = np.bincount(site)
    alpha = counts @ intercepts / counts.sum()
    resid = X - intercepts[site] - fitted
    for j in range(4):
        rows = site == j
        m = alpha + fitted[rows].mean(axis=0)
        delta = resid[rows].var(axis=0, ddof=1) / sigma2
        expected = (X[rows] - m - (intercepts[j] - alpha)) / np.sqrt(delta) + m
        np.testing.assert_allclose(H[rows], expected, rtol=0, atol=design_tolerance(X))


def test_parameters_are_neuroharmonize_fit_with_age_protected():
    X, covars, _ = simulate(p=300, seed=2)
    z = (covars["age"] - covars["age"].mean()) / covars["age"].std(ddof=0)
    frame = pd.DataFrame({"SITE": covars["SITE"], "sex": covars["sex"], "age_z": z, "age_z^2": z**2})
    model, _ = library_learn(X, frame)
    ours = ComBatHarmonizer(chunk_size=300).fit(X, covars)
    assert ours.covariates_.tolist() == ["sex", "age_z", "age_z^2"]
    np.testing.assert_allclose(ours.gamma_star_, model["gamma_star"], atol=1e-12)
    np.testing.assert_allclose(ours.delta_star_, model["delta_star"], atol=1e-12)
    np.testing.assert_allclose(ours.var_pooled_, model["var_pooled"][:, 0], rtol=1e-12)
    np.testing.assert_allclose(ours.coef_, model["B_hat"][4:], atol=1e-12)


def test_training_rows_get_the_transform_test_rows_get():
    X, covars, _ = simulate(p=120, seed=4)
    for adjust in ("location", "location-scale"):
        h = ComBatHarmonizer(adjust=adjust, chunk_size=50)
        H = h.fit_transform(X, covars)
        np.testing.assert_array_equal(H, h.transform(X, sites_of(covars)))
        # any subset of sites, a single subject: each row on its own
        subset = covars["SITE"].isin(["site0", "site2"]).to_numpy()
        np.testing.assert_array_equal(h.transform(X[subset], sites_of(covars)[subset]), H[subset])
        # (m_j of location-scale is a 3-term product recomputed per batch shape: a few ulps)
        np.testing.assert_allclose(
            h.transform(X[:1], sites_of(covars)[:1]), H[:1], rtol=0, atol=8 * np.finfo(float).eps * np.abs(X).max()
        )


def test_ground_truth_site_means_equal_at_fixed_age_and_age_signal_kept():
    """Age-confounded sites: ComBat with age protected removes the site shifts and keeps the age
    signal; without age it removes the between-site age differences too (the control)."""
    X, covars, truth = simulate(sizes=(60,) * 6, p=300, seed=1, shift_sd=1.0, scale_sd=0.2, age_sd=8.0)
    site = truth["site"]
    train, test = split_rows(site)
    tr = covars[train].reset_index(drop=True)
    with_age = ComBatHarmonizer(chunk_size=300).fit(X[train], tr)
    H = with_age.transform(X, sites_of(covars))

    def site_spread(values):  # range over sites of the mean residual from the true covariate effects
        resid = values - truth["clean"]
        return np.ptp([resid[site == j].mean(axis=0) for j in range(6)], axis=0).mean()

    before, after = site_spread(X), site_spread(H)
    assert before > 2.0  # range of 6 N(0, 1) shifts: ~2.5
    # the range of 6 means of 60 N(0, ~1) noises, 2.5 / sqrt(60) = 0.33, plus the error of the
    # estimated age effect across the sites' age ranges (~0.1): 0.40 measured
    assert after < 0.55 and after < 0.2 * before

    def ridge_mae(features):
        model = Ridge(alpha=1.0).fit(features[train], truth["age"][train])
        return np.abs(model.predict(features[test]) - truth["age"][test]).mean()

    no_age = ComBatHarmonizer(age_degree=0, chunk_size=300).fit(X[train], tr[["SITE", "sex"]])
    mean_predictor = np.abs(truth["age"][test] - truth["age"][train].mean()).mean()
    raw, harmonised, blind = ridge_mae(X), ridge_mae(H), ridge_mae(no_age.transform(X, sites_of(covars)))
    assert harmonised < 1.15 * raw  # about as good as on the raw features
    assert blind > 1.5 * harmonised  # the control: most between-site age signal removed
    assert harmonised < 0.5 * mean_predictor


def test_chunking_changes_only_the_eb_priors():
    X, covars, _ = simulate(p=2000, seed=3, sizes=(30, 30, 30, 30))
    # no EB: nothing is estimated across features, so chunks change nothing
    one = ComBatHarmonizer(eb=False, chunk_size=2000).fit_transform(X, covars)
    chunked = ComBatHarmonizer(eb=False, chunk_size=500).fit_transform(X, covars)
    np.testing.assert_allclose(chunked, one, rtol=0, atol=1e-12 * np.abs(X).max())

    # EB: each chunk of 500 features gets its own priors, which move the shrunk locations a little.
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


def test_npz_round_trip(tmp_path):
    X, covars, _ = simulate(p=200, seed=6)
    train, test = split_rows(np.repeat(np.arange(4), 40))
    h = ComBatHarmonizer(adjust="location-scale", chunk_size=500).fit(X[train], covars[train].reset_index(drop=True))
    h.save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz", allow_pickle=False) as z:
        assert not any(z[k].dtype.hasobject for k in z.files)
        assert z["sites"].tolist() == ["site0", "site1", "site2", "site3"]
        assert z["covariates"].tolist() == ["sex", "age_z", "age_z^2"]
        assert str(z["adjust"]) == "location-scale" and int(z["age_degree"]) == 2
        assert float(z["age_mean"]) == pytest.approx(covars["age"][train].mean(), rel=1e-12)
    loaded = ComBatHarmonizer.load(tmp_path / "model.npz")
    sites = sites_of(covars)[test]
    np.testing.assert_array_equal(loaded.transform(X[test], sites), h.transform(X[test], sites))


def test_constant_feature_passes_through():
    X, covars, _ = simulate(p=50, seed=7)
    X[:, 10] = 3.25
    h = ComBatHarmonizer(chunk_size=50, adjust="location-scale")
    H = h.fit_transform(X, covars)
    assert h.passthrough_.tolist() == [i == 10 for i in range(50)]
    assert np.all(H[:, 10] == 3.25) and np.all(np.isfinite(H))
    rest = ComBatHarmonizer(chunk_size=50, adjust="location-scale").fit_transform(np.delete(X, 10, axis=1), covars)
    np.testing.assert_allclose(np.delete(H, 10, axis=1), rest, atol=1e-12)


def test_transductive_option_aligns_new_sites_to_the_training_reference():
    X, covars, truth = simulate(sizes=(40, 40, 40, 30, 30), p=200, seed=8)
    site = truth["site"]
    train, new = site < 3, site >= 3
    h = ComBatHarmonizer(eb=False, chunk_size=200).fit(X[train], covars[train].reset_index(drop=True))
    new_sites = sites_of(covars)[new]
    with pytest.raises(ValueError, match="site3"):
        h.transform(X[new], new_sites)
    assert np.isnan(h.set_params(unseen_sites="nan").transform(X[new], new_sites)).all()
    np.testing.assert_array_equal(h.set_params(unseen_sites="passthrough").transform(X[new], new_sites), X[new])

    # location, no EB: each new site's mean becomes the training subjects' mean fit without site
    H = h.transform_unseen_sites(X[new], new_sites)
    intercepts, fitted, _ = ols(X[train], site[train], truth["sex"][train], truth["age"][train])
    counts = np.bincount(site[train])
    reference = counts @ intercepts / counts.sum() + fitted.mean(axis=0)
    for j in (3, 4):
        rows = site[new] == j
        np.testing.assert_allclose(H[rows].mean(axis=0), reference, rtol=0, atol=design_tolerance(X))
        np.testing.assert_allclose(
            H[rows] - X[new][rows],
            np.broadcast_to((H[rows] - X[new][rows])[0], (rows.sum(), 200)),
            atol=1e-12 * np.abs(X).max(),
        )  # one shift per site


# --------------------------------------------------------------------------- age and bad input


def test_age_reaches_the_fit_only():
    table = pd.DataFrame({"siteXacq": ["a", "b"], "site": ["x", "y"], "sex": ["male", "female"], "age": [10.0, 70.0]})
    frame = covariate_frame(table)
    assert list(frame.columns) == ["SITE", "sex", "age"]
    assert frame["SITE"].tolist() == ["a", "b"] and frame["sex"].tolist() == [1.0, 0.0]
    assert list(covariate_frame(table, age=False).columns) == ["SITE", "sex"]
    with pytest.raises(ValueError, match="age"):
        covariate_frame(table, ("sex", "age"))
    X, covars, _ = simulate(p=20)
    with pytest.raises(ValueError, match="age"):
        ComBatHarmonizer(covariates=("sex", "Age_z")).fit(X, covars)
    h = ComBatHarmonizer().fit(X, covars)
    with pytest.raises(ValueError, match="age"):
        h.transform(X, covars)  # a frame with an age column is refused: the transform is age-free
    np.testing.assert_array_equal(h.transform(X, covars[["SITE"]]), h.transform(X, sites_of(covars)))


def test_encode_sex():
    np.testing.assert_array_equal(encode_sex(["male", "Female", "M", "f", 0, 1]), [1, 0, 1, 0, 0, 1])
    with pytest.raises(ValueError, match="'other'"):
        encode_sex(["male", "other"])
    with pytest.raises(ValueError, match="row 1"):
        encode_sex(["male", None])


@pytest.mark.parametrize(
    "case, message",
    [
        ("one_site", "single site"),
        ("lonely", r"\['site3'\] have a single training subject"),
        ("nan", "NaN/inf value.*row 5, feature 7"),
        ("sex_constant", "'sex' has no variance"),
        ("age_constant", "age has no variance"),
        ("age_nan", "covariate 'age' has NaN/inf at row 3"),
        ("sex_confounded", "confounded with SITE"),
        ("rows", "X has 160 rows but there are 159 site labels"),
        ("columns", "exactly the columns"),
        ("strings", "must be numeric"),
        ("adjust", "adjust must be one of"),
    ],
)
def test_bad_input_is_named(case, message):
    X, covars, _ = simulate(p=30)
    options = {}
    if case == "one_site":
        covars["SITE"] = "site0"
    elif case == "lonely":
        covars.loc[covars.index[-39:], "SITE"] = "site2"
    elif case == "nan":
        X[5, 7] = np.nan
    elif case == "sex_constant":
        covars["sex"] = 1.0
    elif case == "age_constant":
        covars["age"] = 30.0
    elif case == "age_nan":
        covars.loc[3, "age"] = np.nan
    elif case == "sex_confounded":
        covars["sex"] = (covars["SITE"].isin(["site0", "site1"])).astype(float)
    elif case == "rows":
        covars = covars.iloc[:-1]
    elif case == "columns":
        covars = covars.assign(tiv=1.0)
    elif case == "strings":
        covars["sex"] = np.where(covars["sex"] > 0, "male", "female")
    elif case == "adjust":
        options["adjust"] = "scale"
    with pytest.raises(ValueError, match=message):
        ComBatHarmonizer(chunk_size=10, **options).fit(X, covars)


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmonize")
    write_openbhb(root / "openbhb", n=48, factor=8, seed=11)
    preprocess(root / "openbhb", root / "cache", progress=False)
    return root


def _masked(cache: TrainingCache, split: str) -> np.ndarray:
    return np.asarray(cache.split(split).volumes)[:, cache.mask].astype(np.float64)


def test_cli_end_to_end_in_closed_form(tiny_cache):
    """Without EB the default (location) transform is x - (B_j - alpha) from a least squares on the
    training split only; every split is transformed from its site labels."""
    root = tiny_cache
    out = root / "combat"
    assert (
        main(
            [
                "harmonize",
                "--cache",
                str(root / "cache"),
                "--out",
                str(out),
                "--chunk-size",
                "100000",
                "--no-eb",
                "--quiet",
            ]
        )
        == 0
    )
    src, dst = TrainingCache(root / "cache"), TrainingCache(out)
    mask = src.mask
    np.testing.assert_array_equal(dst.mask, mask)

    tables = {s: src.split(s).table for s in ("train", "internal_test", "external_test")}
    train = tables["train"]
    site = train["siteXacq"].astype(str).to_numpy()
    names, index = np.unique(site, return_inverse=True)
    x_train = _masked(src, "train")
    intercepts, _, _ = ols(x_train, index, (train["sex"] == "male").to_numpy(float), train["age"].to_numpy(float))
    shift = intercepts - np.bincount(index) @ intercepts / len(index)
    internal = tables["internal_test"]["siteXacq"].astype(str).to_numpy()
    expected = {
        "train": x_train - shift[index],
        "internal_test": _masked(src, "internal_test") - shift[np.searchsorted(names, internal)],
    }
    for split, values in expected.items():
        vols = np.asarray(dst.split(split).volumes)
        assert vols.dtype == np.float16 and vols.shape == (len(tables[split]),) + tuple(mask.shape)
        assert np.all(vols[:, ~mask] == 0)
        # float16 storage: within one float16 spacing of the float64 closed form
        spacing = np.spacing(np.abs(values).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(vols[:, mask].astype(np.float64) - values) <= spacing + design_tolerance(values))
        pd.testing.assert_frame_equal(dst.split(split).table, tables[split])
    # external sites are unseen: left as they were (the default strategy)
    np.testing.assert_array_equal(
        np.asarray(dst.split("external_test").volumes), np.asarray(src.split("external_test").volumes)
    )

    meta = json.loads((out / "cache.json").read_text())
    info = meta["harmonization"]
    assert info["external_strategy"] == "none" and "unharmonised" in info["external_test"]
    assert info["covariates"] == ["sex", "age_z", "age_z^2"] and info["n_chunks"] == 1
    assert info["adjust"] == "location" and "training split only" in info["age_used"]
    assert meta["shape"] == src.meta["shape"] and meta["splits"] == src.meta["splits"]
    loaded = ComBatHarmonizer.load(out / "model.npz")
    np.testing.assert_allclose(
        loaded.transform(_masked(src, "internal_test"), internal),
        expected["internal_test"],
        rtol=0,
        atol=design_tolerance(expected["internal_test"]),
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["cache.json", "mask.nii.gz", "model.npz"] + [f"{s}.{e}" for s in tables for e in ("npy", "tsv")]
    )


def test_cli_outputs_do_not_depend_on_test_ages(tiny_cache):
    """Test-split ages never reach the harmonisation; the training ages do (age is protected)."""
    root = tiny_cache
    rng = np.random.default_rng(0)

    def permuted(name: str, splits: tuple[str, ...]):
        cache = root / name
        shutil.copytree(root / "cache", cache)
        for split in splits:
            table = pd.read_csv(cache / f"{split}.tsv", sep="\t", dtype=str)
            table["age"] = rng.permutation(table["age"].to_numpy())[::-1]
            table.to_csv(cache / f"{split}.tsv", sep="\t", index=False)
        return cache

    caches = {
        "a": root / "cache",
        "b": permuted("test_ages", ("internal_test", "external_test")),
        "c": permuted("train_ages", ("train",)),
    }
    for name, cache in caches.items():
        assert (
            main(
                [
                    "harmonize",
                    "--cache",
                    str(cache),
                    "--out",
                    str(root / f"ages_{name}"),
                    "--chunk-size",
                    "300",
                    "--external",
                    "transductive",
                    "--quiet",
                ]
            )
            == 0
        )
    for split in ("train", "internal_test", "external_test"):
        a, b = (np.load(root / f"ages_{n}" / f"{split}.npy") for n in "ab")
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.load(root / "ages_a" / "train.npy"), np.load(root / "ages_c" / "train.npy"))
    ext = np.load(root / "ages_a" / "external_test.npy")
    assert not np.array_equal(ext, np.load(root / "cache" / "external_test.npy"))  # transductive did act
    meta = json.loads((root / "ages_a" / "cache.json").read_text())["harmonization"]
    assert meta["external_strategy"] == "transductive" and "not challenge-compliant" in meta["external_test"]
    assert meta["n_chunks"] == len(chunk_bounds(int(TrainingCache(root / "cache").mask.sum()), 300)) - 1 > 1


@pytest.mark.parametrize(
    "edit, message",
    [
        ("one_site", "single site"),
        ("lonely", "site(s) ['lonely'] have a single training subject"),
        ("external_lonely", "external site(s) ['lonely'] have a single subject"),
    ],
)
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
