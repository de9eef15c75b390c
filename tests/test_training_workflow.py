"""The `train:` config section (schema, both configs) and the train/features rules (dry run)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import REPO

from brainage.training.config import AUGMENTATIONS, METHODS, WORKFLOW_KEYS, TrainConfig

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
TRAIN_SCHEMA = SCHEMA["properties"]["train"]
# Options decided per job by the workflow (wildcards, threads) or meaningless in a rule.
PER_JOB = {"method", "seed", "num_threads", "progress"}


def test_schema_mirrors_train_config():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    options = set(TRAIN_SCHEMA["properties"]) - set(WORKFLOW_KEYS)
    assert options == set(fields) - PER_JOB
    for name in options:
        field = fields[name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        assert TRAIN_SCHEMA["properties"][name]["default"] == default, name
        assert TRAIN_SCHEMA["properties"][name].get("description") or name in (
            "optimizer",
            "weight_decay",
            "step_size",
            "step_gamma",
        ), name
    assert TRAIN_SCHEMA["properties"]["methods"]["items"]["enum"] == list(METHODS)
    assert TRAIN_SCHEMA["properties"]["augmentations"]["items"]["properties"]["name"]["enum"] == list(AUGMENTATIONS)


@pytest.mark.parametrize("name", ["default.yaml", "openbhb.yaml"])
def test_configs_validate_and_build(name):
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(config)
    train = config["train"]
    options = {k: v for k, v in train.items() if k not in WORKFLOW_KEYS}
    for method in train["methods"]:
        TrainConfig.from_dict({"method": method, **options})
    assert len(train["methods"]) == 5


def test_openbhb_config_is_the_paper_recipe():
    train = yaml.safe_load((REPO / "configs" / "openbhb.yaml").read_text())["train"]
    recipe = {
        "batch_size": 32,
        "views": 2,
        "optimizer": "adam",
        "lr": 1e-4,
        "weight_decay": 5e-5,
        "epochs": 300,
        "schedule": "step",
        "step_size": 10,
        "step_gamma": 0.9,
        "temperature": 0.1,
        "kernel": "rbf",
        "sigma": 2.0,
        "formulation": "reference",
        "features": "projection",
        "width": 1.0,
    }
    assert {k: train[k] for k in recipe} == recipe


def test_schema_rejects_unknown_train_key():
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    config["train"]["learning_rate"] = 0.1
    with pytest.raises(jsonschema.ValidationError, match="learning_rate"):
        jsonschema.Draft202012Validator(SCHEMA).validate(config)


@pytest.mark.slow
def test_dry_run_commands(tmp_path):
    snakemake = str(Path(sys.executable).parent / "snakemake")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    override = tmp_path / "override.yaml"
    override.write_text(
        "train:\n  methods: [l1, combat_l1, exp]\n  seeds: [0, 3]\n  epochs: 4\n  width: 0.125\n"
        "submission:\n  enabled: false\n"
    )
    result = subprocess.run(
        [
            snakemake,
            "-n",
            "-p",
            "--cores",
            "2",
            "--directory",
            str(tmp_path),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(REPO / "configs" / "default.yaml"),
            str(override),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [re.sub(r"^\s*(Shell command:)?\s*", "", line) for line in (result.stdout + result.stderr).splitlines()]
    commands = [line for line in lines if line.startswith(("brainage train", "brainage features"))]
    trains = [c for c in commands if c.startswith("brainage train")]
    assert len(trains) == 6
    combat = [c for c in trains if "--method combat_l1" in c]
    assert len(combat) == 2 and all("--cache resources/default/cache_combat " in c for c in combat)
    assert all("--cache resources/default/cache " in c for c in trains if "--method combat_l1" not in c)
    exp3 = next(c for c in trains if "--method exp --seed 3" in c)
    assert re.search(r"--out results/default/train/exp/seed3 .*--epochs 4 .*--width 0\.125", exp3)
    assert "--restart-on-mismatch" in exp3 and "--augmentations '[]'" in exp3
    features = [c for c in commands if c.startswith("brainage features")]
    assert len(features) == 6
    assert any(
        "--run results/default/train/combat_l1/seed0 --cache resources/default/cache_combat "
        "--out results/default/features/combat_l1/seed0" in c
        for c in features
    )
