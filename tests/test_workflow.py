"""The Snakemake workflow: lint-clean, dry runs for both configs, config validation."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, job_counts, write_openbhb

pytestmark = pytest.mark.slow


def snakemake(*args: str, cwd=REPO, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_lint_is_clean():
    res = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr, res.stdout + res.stderr


def preprocess_data_argument(out: str) -> str:
    """The ``--data`` value of the one ``brainage preprocess`` command a dry run with -p prints."""
    found = re.findall(r"^Shell command: brainage preprocess --data (\S+) ", out, flags=re.M)
    assert len(found) == 1, out[:4000]
    return found[0]


def test_dry_run_default(tmp_path):
    res = snakemake("-n", "-p", "--cores", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    counts = job_counts(res.stdout)
    assert counts["simulate"] == counts["preprocess"] == counts["all"] == 1, counts
    # one job per method x seed (and per rho for the debias track), as configured
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    train, debias = cfg["train"], cfg["debias"]
    assert counts["train"] == len(train["methods"]) * len(train["seeds"]), counts
    assert counts["debias_train"] == len(debias["methods"]) * len(debias["seeds"]) * len(debias["rhos"]), counts
    assert counts["debias_eval"] == len(debias["methods"]), counts
    # preprocess reads what simulate writes
    simulated = re.search(r"^rule simulate:\n\s+output: (\S+)$", res.stdout, flags=re.M)
    assert simulated, res.stdout[:4000]
    assert preprocess_data_argument(res.stdout) == simulated[1]
    # the submission run is exported once, as a bundle, from the simulated data and its own evaluation
    sub = cfg["submission"]
    assert counts["export_bundle"] == 1, counts
    export = re.findall(
        r"^Shell command: brainage export --run (\S+) --cache \S+ --data (\S+) .*--scores (\S+) ",
        res.stdout,
        flags=re.M,
    )
    run = f"results/default/train/{sub['method']}/seed{sub['seed']}"
    assert export == [(run, simulated[1], f"results/default/evaluation/{sub['method']}/seed{sub['seed']}/scores.json")]


@pytest.fixture(scope="module")
def openbhb_config(tmp_path_factory):
    base = tmp_path_factory.mktemp("wf")
    write_openbhb(base / "openBHB", n=12)
    config = yaml.safe_load((REPO / "configs" / "openbhb.yaml").read_text())
    config["data"]["root"] = str(base / "openBHB")
    config["train"]["batch_size"] = 4  # the 12 subjects hold 6 training ones (the dry run checks it)
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return base, path


def test_dry_run_openbhb_config_on_a_real_layout(openbhb_config):
    base, config = openbhb_config
    res = snakemake("-n", "-p", "--cores", "2", "--configfile", str(config), cwd=base)
    assert res.returncode == 0, res.stderr + res.stdout
    counts = job_counts(res.stdout)
    assert "simulate" not in counts and counts["preprocess"] == 1, counts
    assert not any(rule.startswith("debias") for rule in counts), counts  # the track is off in this config
    assert "rule simulate:" not in res.stdout
    assert preprocess_data_argument(res.stdout) == str(base / "openBHB")


def test_preprocess_rule_runs_on_the_openbhb_layout(openbhb_config):
    base, config = openbhb_config
    res = snakemake("resources/openbhb/cache/cache.json", "--cores", "1", "--configfile", str(config), cwd=base)
    assert res.returncode == 0, res.stderr + res.stdout
    assert (base / "resources/openbhb/cache/train.npy").is_file()
    assert (base / "results/openbhb/logs/preprocess.log").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("run=has space", "run"),
        ("data={'source': 'download'}", "source"),
        ("data={'source': 'openbhb'}", "root"),
    ],
)
def test_invalid_config_is_named(tmp_path, override, message):
    res = snakemake("-n", "--cores", "1", "--config", override, cwd=tmp_path)
    assert res.returncode != 0
    text = res.stderr + res.stdout
    assert "Error validating config" in text or "ValidationError" in text, text[-2000:]
    assert message in text
