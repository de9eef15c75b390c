"""Short real training runs on Biased-MNIST built from the bundled digits: learning beats chance,
CE on strongly biased data learns the colour (the privacy attacker reads it far above chance),
the epoch is chosen on the validation split, checkpoints load with weights_only=True."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainage.debias.data import ArraySet, load_bundled_mnist, make_biased_mnist, split_per_class
from brainage.debias.evaluate import accuracy, attacker_accuracy, fit_attacker, group_accuracies
from brainage.debias.methods import MethodConfig
from brainage.debias.train import Normalizer, TrainConfig, predict, train_model


@pytest.fixture(scope="module")
def digits():
    images, labels = load_bundled_mnist()
    parts = split_per_class(labels, {"train": 150, "val": 40, "test": 60}, seed=0)
    return {k: (images[v], labels[v]) for k, v in parts.items()}


def _coloured(digits, part, rho, seed):
    return ArraySet(*make_biased_mnist(*digits[part], rho=rho, seed=seed))


# the network of the default recipe: SimpleConvNet learns digit shapes too slowly for a short test
# (docs/debiasing.md, "Why not SimpleConvNet in the default")
DEFAULT_NET = dict(model="resnet18", cifar_stem=False, width=0.25, lr=2e-3)


def _config(**kw):
    base = dict(width=0.25, epochs=2, batch_size=50, lr=5e-3, milestones=[], threads=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_beats_chance_on_unbiased_colours(digits):
    train = _coloured(digits, "train", 0.1, 0)
    val, test = _coloured(digits, "val", 0.1, 1), _coloured(digits, "test", 0.1, 2)
    result = train_model(MethodConfig("ce"), _config(**DEFAULT_NET, batch_size=32), train, val, progress=False)
    logits, _ = predict(result.model, test, Normalizer([0.5] * 3, [0.5] * 3))
    # 1,500 digits whose colour carries no label information: only the shape helps. Chance is
    # 0.1 and its standard error on 600 test digits 0.012, so 0.5 is far outside chance.
    assert accuracy(logits, test.labels) > 0.5
    vals = [h["val_acc"] for h in result.history]
    assert result.best_epoch == int(np.argmax(vals)) + 1
    val_logits, _ = predict(result.model, val, Normalizer([0.5] * 3, [0.5] * 3))
    assert accuracy(val_logits, val.labels) == pytest.approx(vals[result.best_epoch - 1])


def test_ce_on_biased_colours_learns_the_colour(digits):
    train = _coloured(digits, "train", 0.999, 0)
    val, test = _coloured(digits, "val", 0.1, 1), _coloured(digits, "test", 0.1, 2)
    biased = _coloured(digits, "test", 1.0, 3)
    result = train_model(MethodConfig("ce"), _config(**DEFAULT_NET), train, val, monitor=test, progress=False)
    norm = Normalizer([0.5] * 3, [0.5] * 3)
    test_logits, test_feats = predict(result.model, test, norm)
    biased_logits, _ = predict(result.model, biased, norm)
    _, val_feats = predict(result.model, val, norm)
    groups = group_accuracies(test_logits, test.labels, test.bias)
    # the shortcut: right when the colour agrees with the digit, wrong otherwise (chance 0.1)
    assert accuracy(biased_logits, biased.labels) > 0.7
    assert groups["aligned"] > 0.7 and groups["conflicting"] < 0.2
    attack = attacker_accuracy(val_feats, val, test_feats, test, seed=0)
    assert attack > 0.8  # chance is 0.1
    assert "monitor_acc" in result.history[0]


def test_attacker_reads_a_planted_attribute_and_not_noise():
    rng = np.random.default_rng(0)
    private = rng.integers(0, 4, size=400)
    informative = np.eye(4)[private] + 0.1 * rng.normal(size=(400, 4))
    noise = rng.normal(size=(400, 4))
    clf = fit_attacker(informative[:200], private[:200])
    assert clf.score(informative[200:], private[200:]) > 0.95
    clf = fit_attacker(noise[:200], private[:200])
    assert clf.score(noise[200:], private[200:]) < 0.45
    with pytest.raises(ValueError, match="unknown"):
        fit_attacker(noise[:4], np.array([0, 1, -1, 0]))


@pytest.mark.parametrize("method", ["supcon", "eps-supinfonce-fairkl", "ce-end"])
def test_every_method_trains_without_nan(digits, method):
    small = {k: (v[0][::5], v[1][::5]) for k, v in digits.items()}
    train = _coloured(small, "train", 0.99, 0)
    val = _coloured(small, "val", 0.1, 1)
    result = train_model(
        MethodConfig(method), _config(epochs=1, width=0.125, batch_size=30), train, val, progress=False
    )
    assert all(np.isfinite(v) for h in result.history for k, v in h.items() if isinstance(v, float))
    if method != "ce-end":
        assert "contrastive" in result.history[0]


def test_fairkl_and_end_need_bias_labels(digits):
    train = _coloured(digits, "train", 0.99, 0)
    train.bias[:] = -1
    val = _coloured(digits, "val", 0.1, 1)
    with pytest.raises(ValueError, match="bias label"):
        train_model(MethodConfig("ce-end"), _config(epochs=1), train, val, progress=False)


def test_checkpoint_loads_with_weights_only(tmp_path, digits):
    from brainage.debias.data import save_array_set
    from brainage.debias.steps import load_checkpoint, train_step

    small = {k: (v[0][::10], v[1][::10]) for k, v in digits.items()}
    save_array_set(tmp_path / "train.npz", _coloured(small, "train", 0.99, 0))
    save_array_set(tmp_path / "val.npz", _coloured(small, "val", 0.1, 1))
    train_step(
        tmp_path / "train.npz",
        tmp_path / "val.npz",
        tmp_path / "m.pt",
        {"name": "ce"},
        dict(width=0.125, epochs=1, batch_size=16, milestones=[], threads=1),
        progress=False,
        tags={"rho": 0.99},
    )
    record = torch.load(tmp_path / "m.pt", weights_only=True)
    assert record["tags"] == {"rho": 0.99} and record["method"]["name"] == "ce"
    assert all(isinstance(v, torch.Tensor) for v in record["state_dict"].values())
    model, _ = load_checkpoint(tmp_path / "m.pt")
    assert model(torch.zeros(1, 3, 28, 28)).shape == (1, 10)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
