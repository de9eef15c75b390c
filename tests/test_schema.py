"""The workflow schema restates the package's names for users (a wrong config is refused before any
job runs); these tests keep each list equal to its one home in the package."""

from __future__ import annotations

import yaml
from helpers import REPO

from brainage.data.modalities import MODALITIES
from brainage.debias.data import PALETTES
from brainage.debias.methods import METHODS as DEBIAS_METHODS
from brainage.harmonize import EXTERNAL_STRATEGIES
from brainage.harmonize.combat import ADJUSTMENTS
from brainage.models.names import FEATURE_KINDS
from brainage.training.config import CHOICES, METHODS

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def section(name: str) -> dict:
    return SCHEMA["properties"][name]["properties"]


def test_train_options_that_take_a_name():
    train = section("train")
    checked = [name for name in CHOICES if name in train]  # method: chosen per job from train.methods
    assert set(checked) == set(CHOICES) - {"method"}
    for name in checked:
        # auto/on/off options also take YAML's booleans for on/off
        assert [v for v in train[name]["enum"] if not isinstance(v, bool)] == list(CHOICES[name]), name
    assert train["methods"]["items"]["enum"] == list(METHODS)


def test_data_harmonize_and_submission_names():
    data = section("data")
    assert data["modality"]["enum"] == list(MODALITIES)
    assert data["simulate"]["properties"]["modalities"]["items"]["enum"] == list(MODALITIES)
    harmonize = section("harmonize")
    assert harmonize["external"]["enum"] == list(EXTERNAL_STRATEGIES)
    assert harmonize["adjust"]["enum"] == list(ADJUSTMENTS)
    submission = section("submission")
    assert submission["kind"]["enum"] == [*FEATURE_KINDS, None]
    # every trained method but the ComBat one (the server passes no site labels)
    assert submission["method"]["enum"] == [m for m in METHODS if m != "combat_l1"]


def test_debias_names():
    debias = section("debias")
    assert debias["methods"]["items"]["enum"] == list(DEBIAS_METHODS)
    assert debias["palette"]["enum"] == list(PALETTES)
