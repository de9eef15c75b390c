"""The Apptainer definition: well-formed, and installs exactly pyproject's dependency set."""

from __future__ import annotations

import re
import shlex
import tomllib

from packaging.requirements import Requirement
from spython.main.parse.parsers import SingularityParser

from conftest import REPO

DEF = REPO / "containers" / "brainage.def"
KNOWN_SECTIONS = {"setup", "files", "post", "environment", "runscript", "startscript", "test",
                  "labels", "help", "app", "appinstall", "appenv", "apprun", "applabels",
                  "appfiles", "apphelp", "apptest", "appstart", "arguments"}


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
            commands.append(words[words.index("install") + 1:])
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
    expected = _canonical(pyproject["project"]["dependencies"])
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
    assert {"/opt/brainage/Snakefile", "/opt/brainage/brainage", "/opt/brainage/pyproject.toml",
            "/opt/brainage/workflow", "/opt/brainage/configs"} <= dsts
    run = sections["runscript"]
    assert "snakemake" in run and "--snakefile /opt/brainage/Snakefile" in run and '"$@"' in run
    assert "brainage --help" in sections["test"]
