"""The Apptainer definition: well-formed, and installs exactly pyproject's dependency set and debias extra."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from helpers import REPO, write_openbhb
from packaging.requirements import Requirement
from spython.main.parse.parsers import SingularityParser

DEF = REPO / "containers" / "brainage.def"
KNOWN_SECTIONS = {
    "setup",
    "files",
    "post",
    "environment",
    "runscript",
    "startscript",
    "test",
    "labels",
    "help",
    "app",
    "appinstall",
    "appenv",
    "apprun",
    "applabels",
    "appfiles",
    "apphelp",
    "apptest",
    "appstart",
    "arguments",
}


def _sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*(.*)$", line)
        if m:
            current = m.group(1)
            if current in sections:
                raise AssertionError(f"section %{current} appears twice")
            sections[current] = ""
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current] += line + "\n"
    return header, sections


def _pip_installs(post: str) -> list[list[str]]:
    joined = re.sub(r"\\\n", " ", post)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if "pip" in words and "install" in words:
            commands.append(words[words.index("install") + 1 :])
    return commands


def _canonical(reqs) -> dict[str, str]:
    out = {}
    for r in reqs:
        req = Requirement(r)
        out[req.name.lower().replace("_", "-")] = str(req.specifier)
    return out


def test_header_and_sections():
    header, sections = _sections(DEF.read_text())
    assert header.get("Bootstrap") == "docker"
    assert header.get("From", "").startswith("pytorch/pytorch:")
    assert set(sections) <= KNOWN_SECTIONS, set(sections) - KNOWN_SECTIONS
    for required in ("files", "post", "runscript", "test", "environment", "labels", "help"):
        assert sections.get(required, "").strip(), f"%{required} missing or empty"
    # spython (lenient) must agree on the base image
    recipe = SingularityParser(str(DEF)).recipe["spython-base"]
    assert recipe.fromHeader == header["From"]


def test_base_image_carries_the_pinned_torch():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = [r for r in pyproject["project"]["dependencies"] if r.startswith("torch")][0]
    version = Requirement(torch_pin).specifier
    header, _ = _sections(DEF.read_text())
    tag = header["From"].split(":", 1)[1]
    assert tag.split("-")[0] in version and "cuda" in tag


def test_post_installs_the_pyproject_dependency_set():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # the image runs the default workflow, whose Biased-MNIST track needs the debias extra
    expected = _canonical(
        pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["debias"]
    )
    _, sections = _sections(DEF.read_text())
    installs = _pip_installs(sections["post"])
    listed = [w for cmd in installs for w in cmd if not w.startswith("-") and not w.startswith("/")]
    listed = [w for w in listed if w not in ("pip",)]
    assert _canonical(listed) == expected
    assert any("--no-deps" in cmd and "/opt/brainage" in cmd for cmd in installs)


def test_files_exist_and_runscript_runs_the_workflow():
    _, sections = _sections(DEF.read_text())
    pairs = [line.split() for line in sections["files"].splitlines() if line.strip()]
    for src, _dst in pairs:
        assert (REPO / src).exists(), f"%files source {src} is not in the repository"
    dsts = {dst for _, dst in pairs}
    assert {
        "/opt/brainage/Snakefile",
        "/opt/brainage/brainage",
        "/opt/brainage/pyproject.toml",
        "/opt/brainage/workflow",
        "/opt/brainage/configs",
    } <= dsts
    run = sections["runscript"]
    assert "snakemake" in run and "--snakefile /opt/brainage/Snakefile" in run and '"$@"' in run
    assert "brainage --help" in sections["test"]


def _image_test_script() -> str:
    """The Python program that %test runs (its heredoc)."""
    _, sections = _sections(DEF.read_text())
    match = re.search(r"python - <<'PY'\n(.*?)\nPY\n", sections["test"], flags=re.S)
    assert match, "%test has no python heredoc"
    return match[1]


@pytest.mark.slow
def test_image_test_checks_installed_versions_against_pyproject():
    script = _image_test_script()
    ok = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert ok.returncode == 0 and "requirements of brainage checked" in ok.stdout, ok.stderr
    # the same check fails on a numpy outside the pin, naming it
    fake = (
        "import importlib.metadata as m\n_version = m.version\n"
        "m.version = lambda name: '2.1.0' if name == 'numpy' else _version(name)\n"
    )
    bad = subprocess.run([sys.executable, "-c", fake + script], capture_output=True, text=True)
    assert bad.returncode != 0 and "numpy 2.1.0 (pyproject.toml: <2,>=1.24)" in bad.stderr, bad.stderr


def _stage_image_files(root: Path) -> Path:
    """The %files copies, made under ``root`` instead of ``/``; returns the stand-in for /opt/brainage."""
    _, sections = _sections(DEF.read_text())
    for line in sections["files"].splitlines():
        if not line.strip():
            continue
        src, dst = line.split()
        target = root / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / src, target)
    return root / "opt" / "brainage"


@pytest.mark.slow
def test_runscript_runs_the_workflow_as_the_readme_says(tmp_path):
    """`apptainer run brainage.sif [snakemake arguments]` in the results folder: the %runscript with
    the image's files (only those %files copies) and environment, run here as a dry run, on the
    embedded default and with %help's OpenBHB form."""
    _, sections = _sections(DEF.read_text())
    opt = _stage_image_files(tmp_path / "image")
    runscript = tmp_path / "runscript.sh"
    runscript.write_text(sections["runscript"].replace("/opt/brainage", str(opt)))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update(re.findall(r"export (\w+)=(\S+)", sections["environment"]))
    results = tmp_path / "results-here"
    results.mkdir()

    default = subprocess.run(
        ["bash", str(runscript), "-n"], cwd=results, env=env, capture_output=True, text=True, timeout=300
    )
    assert default.returncode == 0, default.stderr[-3000:]
    assert re.search(r"^simulate\s+1$", default.stdout, flags=re.M), default.stdout[-3000:]

    write_openbhb(tmp_path / "openBHB", n=80)  # 41 training subjects: the parse-time check wants >= batch_size 32
    command = re.search(r"apptainer run --nv --bind \S+ brainage.sif \\\n\s*(.*)", sections["help"])[1]
    arguments = shlex.split(
        command.replace("/data/openBHB", str(tmp_path / "openBHB")).replace("/opt/brainage", str(opt))
    )
    assert arguments[:2] == ["--configfile", f"{opt}/configs/openbhb.yaml"]
    openbhb = subprocess.run(
        ["bash", str(runscript), *arguments, "-n", "-p"],
        cwd=results,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert openbhb.returncode == 0, openbhb.stderr[-3000:]
    assert f"brainage preprocess --data {tmp_path / 'openBHB'} " in openbhb.stdout, openbhb.stdout[-3000:]
    assert not re.search(r"^simulate\s", openbhb.stdout, flags=re.M)
    assert not (results / "results").exists()  # a dry run writes no results
