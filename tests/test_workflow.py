"""The Snakemake workflow: lint-clean, dry runs for both configs, config validation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, write_openbhb


def snakemake(*args: str, cwd=REPO, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_lint_is_clean():
    res = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr, res.stdout + res.stderr


def test_dry_run_default(tmp_path):
    res = snakemake("-n", "--cores", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    out = res.stdout
    for rule in ("simulate", "preprocess", "all"):
        assert f"rule {rule}:" in out or f"{rule} " in out


@pytest.fixture(scope="module")
def openbhb_config(tmp_path_factory):
    base = tmp_path_factory.mktemp("wf")
    write_openbhb(base / "openBHB", n=12)
    config = yaml.safe_load((REPO / "configs" / "openbhb.yaml").read_text())
    config["data"]["root"] = str(base / "openBHB")
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return base, path


def test_dry_run_openbhb_config_on_a_real_layout(openbhb_config):
    base, config = openbhb_config
    res = snakemake("-n", "--cores", "2", "--configfile", str(config), cwd=base)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "simulate" not in res.stdout.split("Job stats")[1].split("Reasons")[0]
    assert "preprocess" in res.stdout
    assert f"--data {base / 'openBHB'}" in res.stdout or "preprocess" in res.stdout


def test_preprocess_rule_runs_on_the_openbhb_layout(openbhb_config):
    base, config = openbhb_config
    res = snakemake("resources/openbhb/cache/cache.json", "--cores", "1", "--configfile", str(config), cwd=base)
    assert res.returncode == 0, res.stderr + res.stdout
    assert (base / "resources/openbhb/cache/train.npy").is_file()
    assert (base / "results/openbhb/logs/preprocess.log").is_file()


@pytest.mark.parametrize("override, message", [
    ("run=has space", "run"),
    ("data={'source': 'download'}", "source"),
    ("data={'source': 'openbhb'}", "root"),
])
def test_invalid_config_is_named(tmp_path, override, message):
    res = snakemake("-n", "--cores", "1", "--config", override, cwd=tmp_path)
    assert res.returncode != 0
    text = res.stderr + res.stdout
    assert "Error validating config" in text or "ValidationError" in text, text[-2000:]
    assert message in text
