"""Hostile inputs and interruptions (issue 11): one test per finding of the audit.

Each test feeds the input a careless or hostile user would, and checks that it is refused, that
the message names the file or field at fault, and that nothing was written. The security case
comes first.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from helpers import QR_MASK_NAME, REPO, VBM_MASK_NAME, write_openbhb

from brainage.data.openbhb import OpenBHBError
from brainage.data.preprocess import preprocess
from brainage.errors import BrainAgeError, ConfigError
from brainage.io import lock_path
from brainage.training import TrainConfig, load_config_file, train
from brainage.training.config import AUGMENTATIONS
from brainage.training.data import build_augmentation

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

pytestmark = pytest.mark.slow


def brainage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainage", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def schema_errors(config: dict) -> list[list]:
    """The config paths the workflow schema refuses."""
    return [list(e.absolute_path) for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(config)]


def workflow_config(**train: object) -> dict:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["train"].update(train)
    return config


@pytest.fixture
def dataset(openbhb_dir, tmp_path) -> Path:
    """A private copy of the tiny per-subject OpenBHB folder (conftest), to damage."""
    root = tmp_path / "openbhb"
    shutil.copytree(openbhb_dir[0], root, ignore=shutil.ignore_patterns("ramp"))
    return root


def written(folder: Path) -> list[str]:
    """Everything under ``folder`` (names relative to it)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------- 1. security


def test_augmentations_cannot_run_a_command(tmp_path):
    """MONAI's LoadImage resolves ``reader`` as a dotted name: this spec ran ``touch`` before the allow-list."""
    marker = tmp_path / "MARK"
    exploit = {"name": "LoadImage", "reader": "subprocess.Popen", "args": f"touch {marker}", "shell": True}
    refused = r"augmentations\[0\]: 'LoadImage' is not an allowed augmentation"
    with pytest.raises(ConfigError, match=refused):
        TrainConfig(method="exp", augmentations=[exploit])
    with pytest.raises(ConfigError, match=refused):
        build_augmentation([exploit])  # the builder checks by itself, whoever calls it
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"augmentations": [exploit]}))
    run = brainage(
        "train",
        "--cache",
        str(tmp_path / "cache"),
        "--method",
        "exp",
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(config),
    )
    assert run.returncode == 2, run.stderr
    assert f"{config}: augmentations[0]: 'LoadImage' is not an allowed augmentation" in run.stderr
    # the workflow refuses it when it validates its config, before any rule runs
    assert schema_errors(workflow_config(augmentations=[exploit])) == [["train", "augmentations", 0, "name"]]
    assert schema_errors(workflow_config(augmentations=[{"name": "RandFlip", "prob": {"x": 1}}])) == [
        ["train", "augmentations", 0, "prob"]
    ]
    assert not marker.exists()
    assert written(tmp_path) == ["train.yaml"]

    # What stays allowed: random array transforms of monai.transforms' spatial and intensity modules whose
    # constructors take no callable, class, module or transform by name.
    import monai.transforms as mt

    for name in AUGMENTATIONS:
        cls = getattr(mt, name)
        assert issubclass(cls, mt.RandomizableTransform) and not issubclass(cls, mt.MapTransform), name
        assert cls.__module__ in ("monai.transforms.spatial.array", "monai.transforms.intensity.array"), name
        params = set(inspect.signature(cls.__init__).parameters)
        assert not params & {"reader", "func", "inv_func", "name", "filter", "sort_fn", "transforms", "args"}, name
    assert build_augmentation([{"name": "RandFlip", "prob": 0.5, "spatial_axis": 0}]) is not None


# --------------------------------------------------------------------------- 2. the workflow profile


def test_a_plain_run_reads_the_default_profile(tmp_path):
    """No -p and no --cores: printing the shell commands and the core count come from the profile."""
    profile = REPO / "profiles" / "default"
    res = snakemake("-n", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Using workflow specific profile {profile} for setting default command line arguments." in res.stderr
    assert re.search(r"^Shell command: brainage preprocess ", res.stdout, flags=re.M), res.stdout[:3000]
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    assert settings["rerun-incomplete"] is True and settings["show-failed-logs"] is True
    assert not (REPO / "workflow" / "profiles" / "default").exists()  # where Snakemake 9 never looks
    assert "results" not in written(tmp_path) and "resources" not in written(tmp_path)


# --------------------------------------------------------------------------- 3-4. masks


def test_an_empty_mask_is_refused(dataset, tmp_path):
    mask = dataset / "resource" / VBM_MASK_NAME
    img = nib.load(mask)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), mask)
    out = tmp_path / "cache"
    with pytest.raises(
        OpenBHBError,
        match=rf"^{re.escape(str(mask))}: empty vbm mask: no voxel is above the mask "
        r"threshold 0\.05",
    ):
        preprocess(dataset, out, progress=False)
    assert not out.exists()

    # one voxel in the mask: no 2x2x2 block is half inside, so downsampling would empty it
    one = np.zeros(img.shape, np.float32)
    one[5, 5, 5] = 1.0
    nib.save(nib.Nifti1Image(one, img.affine), mask)
    with pytest.raises(
        OpenBHBError,
        match=rf"^{re.escape(str(mask))}: no 2x2x2 block is at least half inside the "
        r"vbm mask \(1 voxels\)",
    ):
        preprocess(dataset, out, downsample=2, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "shape", "affine"])
def test_an_unreadable_or_misplaced_mask_is_named(dataset, tmp_path, damage):
    mask = dataset / "resource" / QR_MASK_NAME
    img = nib.load(mask)
    if damage == "truncated":
        raw = mask.read_bytes()
        mask.write_bytes(raw[: len(raw) // 2])
        expected = "the mask image cannot be read, truncated or not NIfTI"
    elif damage == "shape":
        nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), img.affine), mask)
        expected = "grid (10, 10, 10) is not the OpenBHB quasiraw grid"
    else:
        shifted = img.affine.copy()
        shifted[:3, 3] += 10.0  # 10 mm off the MNI grid
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted), mask)
        expected = f"grid {img.shape} is not the OpenBHB quasiraw grid"
    out = tmp_path / "cache"
    with pytest.raises(OpenBHBError, match=rf"^{re.escape(str(mask))}: {re.escape(expected)}"):
        preprocess(dataset, out, modality="quasiraw", progress=False)
    assert not out.exists()


# --------------------------------------------------------------------------- 5-6. tables


def test_a_trailing_tab_on_one_row_is_named(dataset, tmp_path):
    table = dataset / "participants.tsv"
    lines = table.read_text().splitlines()
    n_columns = len(lines[0].split("\t"))
    lines[1] += "\t"  # pandas took the first column as the index: every column shifted by one
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cache"
    with pytest.raises(
        OpenBHBError,
        match=rf"^{re.escape(str(table))}, line 2: {n_columns + 1} fields, but the "
        rf"header \(line 1\) has {n_columns}",
    ):
        preprocess(dataset, out, progress=False)
    assert not out.exists()

    lines[1] = lines[1][:-1]
    lines[3] = lines[3].rsplit("\t", 1)[0]  # a row one field short
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(OpenBHBError, match=rf"{re.escape(str(table))}, line 4: {n_columns - 1} fields"):
        preprocess(dataset, out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["empty", "latin-1"])
def test_an_empty_or_non_utf8_table_is_named(dataset, tmp_path, damage):
    table = dataset / "participants.tsv"
    if damage == "empty":
        table.write_bytes(b"")
        expected = f"{table}: the file is empty"
    else:
        lines = table.read_bytes().split(b"\n")
        lines[3] = lines[3].replace(b"ABIDE1", b"caf\xe9", 1)  # Latin-1, as a spreadsheet may save it
        table.write_bytes(b"\n".join(lines))
        expected = f"{table}, line 4: byte 0xe9 is not UTF-8 text"
    out = tmp_path / "cache"
    with pytest.raises(OpenBHBError, match=f"^{re.escape(expected)}"):
        preprocess(dataset, out, progress=False)
    assert not out.exists()


# --------------------------------------------------------------------------- 7. numbers and config files


def test_non_finite_numbers_and_unreadable_config_files_are_named(tmp_path):
    run = brainage(
        "train", "--cache", str(tmp_path / "cache"), "--method", "exp", "--out", str(tmp_path / "run"), "--lr", "inf"
    )
    assert run.returncode == 2 and "error: lr must be a finite positive number, got inf" in run.stderr, run.stderr
    for name in ("lr", "sigma", "temperature", "width", "weight_decay", "momentum"):
        for value in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(ConfigError, match=rf"^{name} must be a finite (positive|non-negative) number"):
                TrainConfig(method="exp", **{name: value})
    for key, value in (("lr", float("inf")), ("sigma", float("nan")), ("temperature", float("-inf"))):
        assert schema_errors(workflow_config(**{key: value})) and all(
            path == ["train", key] for path in schema_errors(workflow_config(**{key: value}))
        )
    debias = yaml.safe_load(DEFAULT_CONFIG.read_text())
    debias["debias"]["rhos"] = [0.99, float("nan")]
    assert schema_errors(debias) == [["debias", "rhos", 1]]

    marker = tmp_path / "MARK"
    files = {  # file: (content, what the message says after the file name)
        "inf.yaml": ("sigma: .inf\n", ": sigma must be a finite positive number, got inf"),
        "syntax.yaml": ("epochs: [1, 2\nlr: 0.1\n", ": not valid YAML"),
        "tag.yaml": (
            f"lr: !!python/object/apply:os.system ['touch {marker}']\n",
            ": a YAML tag that is not plain data",
        ),
        "latin1.yaml": ("lr: 0.1\nkernel: caf\xe9\n", ", line 2: byte 0xe9 is not UTF-8 text"),
        "bad.json": ('{"lr": 0.1,}', ": not valid JSON"),
    }
    for name, (text, message) in files.items():
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(ConfigError, match="^" + re.escape(f"{path}{message}")):
            load_config_file(path)
    run = brainage(
        "train",
        "--cache",
        str(tmp_path / "cache"),
        "--method",
        "exp",
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(tmp_path / "tag.yaml"),
    )
    assert run.returncode == 2 and f"error: {tmp_path / 'tag.yaml'}: a YAML tag" in run.stderr, run.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()
    assert written(tmp_path) == sorted(files)


# --------------------------------------------------------------------------- 8. threads


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A real cache: a tiny OpenBHB folder through `preprocess` (12 training subjects, grid 16x19x16)."""
    root = tmp_path_factory.mktemp("hostile")
    write_openbhb(root / "openbhb", n=24, factor=8, seed=4)
    preprocess(root / "openbhb", root / "cache", progress=False)
    return root / "cache"


def test_resuming_with_another_thread_count_warns_and_is_recorded(cache, tmp_path, caplog):
    def config(threads: int) -> TrainConfig:
        return TrainConfig(
            method="exp",
            epochs=2,
            batch_size=4,
            width=0.125,
            lr=1e-3,
            device="cpu",
            num_threads=threads,
            progress=False,
        )

    out, before = tmp_path / "run", torch.get_num_threads()
    try:
        train(config(1), cache, out, stop_after=1)
        assert torch.load(out / "checkpoint.pt", weights_only=True)["num_threads"] == 1
        with caplog.at_level(logging.WARNING, logger="brainage.training.trainer"):
            train(config(2), cache, out)
    finally:
        torch.set_num_threads(before)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{out / 'checkpoint.pt'} was written with 1 CPU thread(s) and this process uses 2")
    assert "--num-threads 1" in warnings[0]
    assert torch.load(out / "model.pt", weights_only=True)["num_threads_used"] == [1, 2]
    assert json.loads((out / "config.json").read_text())["num_threads_used"] == [1, 2]


def test_a_batch_of_one_subject_is_refused_before_training(cache, tmp_path):
    # on this 16x19x16 grid the last block's output is 1x1x1, so one subject gave BatchNorm
    # a single value per channel and torch's "Expected more than 1 value per channel" mid-run
    config = TrainConfig(method="l1", epochs=1, batch_size=1, width=0.125, device="cpu", progress=False)
    with pytest.raises(BrainAgeError, match="batch_size 1 gives 1 subject per process and step"):
        train(config, cache, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 9. caught early


def test_a_batch_larger_than_the_training_split_fails_the_dry_run(tmp_path):
    # the download's table decides: write_openbhb's 12 participants hold 12 - 12 // 3 - 12 // 6 = 6 training ones
    write_openbhb(tmp_path / "openBHB", n=12)
    base = yaml.safe_load((REPO / "configs" / "openbhb.yaml").read_text())
    base["data"]["root"] = str(tmp_path / "openBHB")
    work = tmp_path / "work"
    work.mkdir()
    for batch, ok in ((6, True), (7, False)):
        base["train"]["batch_size"] = batch
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(base))
        res = snakemake("-n", "--configfile", str(tmp_path / "config.yaml"), cwd=work)
        assert (res.returncode == 0) is ok, res.stderr[-3000:]
    assert (
        f"train.batch_size 7 is larger than the training split (6 subjects, {tmp_path / 'openBHB'})"
        in res.stdout + res.stderr
    ), res.stderr[-3000:]
    # the simulated set: more than all of its subjects, before anything is simulated
    override = tmp_path / "big.yaml"
    override.write_text("train:\n  batch_size: 601\n")
    res = snakemake("-n", "--configfile", str(DEFAULT_CONFIG), str(override), cwd=work)
    assert res.returncode != 0
    assert re.search(
        r"train\.batch_size 601 is larger than the training split \(\d+ subjects, data\.simulate: 600 "
        r"subjects\)",
        res.stdout + res.stderr,
    ), res.stderr[-3000:]
    assert "results" not in written(work) and "resources" not in written(work)


HOLDER = """
import contextlib, sys, time
from brainage.io import output_lock
with contextlib.ExitStack() as stack:
    for folder in sys.argv[1:]:
        stack.enter_context(output_lock(folder, "holder"))
    print("locked", flush=True)
    time.sleep(600)
"""


def test_two_writers_of_one_output_folder(openbhb_dir, cache, tmp_path):
    data, out, run = openbhb_dir[0], tmp_path / "cache", tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(run)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        commands = {
            out: ["preprocess", "--data", str(data), "--out", str(out), "--quiet"],
            run: [
                "train",
                "--cache",
                str(cache),
                "--method",
                "l1",
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--width",
                "0.125",
                "--device",
                "cpu",
                "--no-progress",
            ],
        }
        for folder, args in commands.items():
            res = brainage(*args)
            assert res.returncode == 2, res.stderr
            assert f"error: {folder} is being written by another process: pid {holder.pid} on host " in res.stderr, (
                res.stderr
            )
            assert "running `holder`" in res.stderr
            assert not folder.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder's lock file stays behind, and does not block
    assert lock_path(out).exists()
    res = brainage(*commands[out])
    assert res.returncode == 0, res.stderr
    assert (out / "cache.json").is_file() and not lock_path(out).exists()


# --------------------------------------------------------------------------- 10. another machine

# Tests that compare two code paths in floating point (tolerances from the computation, see
# helpers.ROUNDING_MARGIN), and an environment that makes this machine sum as another x86-64 CPU
# would: ATen, oneDNN, OpenBLAS and numpy kernels without AVX (other vector widths, other orders of
# every sum) and two threads (other splits of the sums).
TWO_PATH_TESTS = [
    "tests/test_training.py::test_one_forward_equals_stacked_views_with_batchnorm",
    "tests/test_training.py::test_features_files",
    "tests/test_submission.py::test_plain_network_matches_monai_network",
    "tests/test_submission.py::test_features_equal_the_project_network_on_the_cache",
    "tests/test_preprocess.py::test_cache_from_both_layouts_agree",
    "tests/test_losses_kernelized.py",
]


def test_two_path_tolerances_hold_on_another_cpu():
    import numpy.core._multiarray_umath as umath

    vector = [f for f in umath.__cpu_dispatch__ if f.startswith("AVX") or f in ("F16C", "FMA3")]
    env = {
        **ENV,
        "ATEN_CPU_CAPABILITY": "default",
        "DNNL_MAX_CPU_ISA": "SSE41",
        "OPENBLAS_CORETYPE": "NEHALEM",
        "NPY_DISABLE_CPU_FEATURES": " ".join(vector),
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == "DEFAULT", probe.stderr  # the narrower kernels are in use
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TWO_PATH_TESTS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    assert re.search(r"\b\d+ passed", res.stdout) and "failed" not in res.stdout, res.stdout[-2000:]


def test_a_truncated_mask_is_named_by_the_reader_and_the_estimator(tmp_path, monkeypatch):
    from brainage.data.openbhb import load_mask
    from brainage.submission import ramp_estimator

    mask = tmp_path / "cat12vbm_space-MNI152_desc-gm_TPM.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 9, 7), 0.5, np.float32), np.eye(4)), mask)
    raw = mask.read_bytes()
    mask.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OpenBHBError, match=rf"^{re.escape(str(mask))}: the mask image cannot be read, truncated"):
        load_mask(mask)
    monkeypatch.setenv("VBM_MASK", str(mask))
    with pytest.raises(
        ramp_estimator.SubmissionError,
        match=rf"^VBM_MASK={re.escape(str(mask))}: the mask image cannot be read, truncated",
    ):
        ramp_estimator.read_mask("vbm")


# --------------------------------------------------------------------------- probe of main@727553a (errors-a)
# Each input below made the CLI print a traceback; now it exits 2 with one line naming the file or option.

GOOD_SCORES = {"method": "l1", "seed": 0, "int_mae": 2.5, "bacc": 0.1, "ext_mae": 4.0, "challenge_score": 2.0}


def cli(capsys, *argv: object) -> tuple[int, str]:
    """``brainage argv`` in this process: (exit code, stderr)."""
    from brainage.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def bad_json(path: Path, damage: str) -> Path:
    """Write a damaged JSON file (or folder) at ``path``."""
    if damage == "folder":
        path.mkdir(parents=True)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "binary":
        path.write_bytes(bytes(range(128, 256)))
    elif damage == "list":
        path.write_text("[1, 2]")
    elif damage != "missing":
        key, value = damage.split("=", 1)
        path.write_text(json.dumps({**GOOD_SCORES, key: json.loads(value)}))
    return path


SCORE_DAMAGES = {
    "empty": "line 1 column 1: not valid JSON",
    "binary": "line 1: byte 0x80 is not UTF-8",
    "list": "holding a JSON object",
    'int_mae="abc"': "field 'int_mae' is 'abc'; expected a number",
    'int_mae={"a": 1}': "field 'int_mae' is {'a': 1}; expected a number",
    "bacc=[1]": "field 'bacc' is [1]; expected a number",
    'seed="x"': "field 'seed' is 'x'; expected an integer",
    "method=5": "field 'method' is 5; expected a string",
    'folds=[{"int_mae": true}]': "folds[0]: field 'int_mae' is True; expected a number",
}


@pytest.mark.parametrize("damage", sorted(SCORE_DAMAGES))
def test_a_damaged_scores_json_is_named_by_table(tmp_path, capsys, damage):
    scores = bad_json(tmp_path / "scores.json", damage)
    code, err = cli(capsys, "table", "--scores", scores, "--out", tmp_path / "out", "--no-figures")
    assert code == 2 and err.count("\n") == 1, err
    assert str(scores) in err and SCORE_DAMAGES[damage] in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["missing", "folder", "list", 'challenge_score="1"'])
def test_the_scores_of_export_and_submission_check_are_read_by_one_checked_reader(tmp_path, damage):
    """export --scores and submission-check --scores read the file through read_scores / recorded_probe_settings."""
    from brainage.errors import BrainAgeError
    from brainage.evaluation.pipeline import read_scores, recorded_probe_settings
    from brainage.inference import export
    from brainage.submission import check

    scores = bad_json(tmp_path / "scores.json", damage)
    for reader in (read_scores, recorded_probe_settings):
        with pytest.raises(BrainAgeError, match=re.escape(str(scores))):
            reader(scores)
    assert "read_scores" in inspect.getsource(export._scores)
    assert "recorded_probe_settings" in inspect.getsource(check._probe_settings)
    scores = bad_json(tmp_path / "probe.json", 'probe_settings={"cv": "five"}')
    with pytest.raises(BrainAgeError, match=rf"^{re.escape(str(scores))}, probe_settings: expected the fields"):
        recorded_probe_settings(scores)


def test_output_paths_taken_by_a_file_or_a_folder_are_refused(tmp_path, capsys):
    from brainage.errors import OutputExistsError
    from brainage.io import atomic_dir, make_folders, save_json

    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(GOOD_SCORES))
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me\n")
    for out, named in ((a_file, a_file), (a_file / "sub", a_file)):
        code, err = cli(capsys, "table", "--scores", scores, "--out", out, "--no-figures")
        assert code == 2 and f"{named} is a file, but a folder is needed" in err, err
    assert a_file.read_text() == "keep me\n" and written(tmp_path) == ["file.txt", "scores.json"]
    with pytest.raises(OutputExistsError, match=f"^{re.escape(str(tmp_path))} is a folder, but a file is to be"):
        save_json(tmp_path, {})
    with pytest.raises(OutputExistsError, match=f"^{re.escape(str(a_file))} is a file, but a folder is to be"):
        with atomic_dir(a_file):
            pass
    with pytest.raises(OutputExistsError, match=rf"\(needed as a parent folder of {re.escape(str(a_file))}/x/y\)"):
        make_folders(a_file / "x" / "y")
    assert a_file.read_text() == "keep me\n"


def test_preprocess_refuses_an_out_file_and_a_downsample_larger_than_the_grid(dataset, tmp_path, capsys):
    a_file = tmp_path / "cache.txt"
    a_file.write_text("")
    code, err = cli(capsys, "preprocess", "--data", dataset, "--out", a_file)
    assert code == 2 and f"{a_file} is a file, but a folder is needed" in err, err
    code, err = cli(capsys, "preprocess", "--data", dataset, "--out", tmp_path / "cache", "--downsample", "100")
    assert code == 2 and "downsample (--downsample) 100 exceeds the vbm grid" in err, err
    assert not (tmp_path / "cache").exists()


DEBIAS_DAMAGES = {
    "binary": "byte 0x80 is not UTF-8",
    "list": r"record 0: '1' is not an evaluation record",
    "empty-list": "no evaluation records",
    'test_acc="0.9"': "field 'test_acc' is '0.9'; expected a number",
    'rho="0.99"': "field 'rho' is '0.99'; expected a number",
    "no-seed": r"lacks \['seed'\]",
}


@pytest.mark.parametrize("damage", sorted(DEBIAS_DAMAGES))
def test_a_damaged_debias_evaluation_file_is_named(tmp_path, capsys, damage):
    good = {"method": "ce", "rho": 0.99, "seed": 0, "test_acc": 0.5, "attacker_acc": None}
    path = tmp_path / "eval.json"
    if damage == "empty-list":
        path.write_text("[]")
    elif damage == "no-seed":
        path.write_text(json.dumps({k: v for k, v in good.items() if k != "seed"}))
    elif "=" in damage:
        key, value = damage.split("=")
        path.write_text(json.dumps({**good, key: json.loads(value)}))
    else:
        bad_json(path, damage)
    code, err = cli(capsys, "debias-table", "--eval", path, "--out-dir", tmp_path / "tables")
    assert code == 2 and str(path) in err and re.search(DEBIAS_DAMAGES[damage], err), err
    assert not (tmp_path / "tables").exists()


def _spec() -> dict:
    """The entries of bundle.json that loading reads (the rest of a real bundle.json is not needed to reach them)."""
    from brainage.inference.bundle import BUNDLE_FORMAT, BUNDLE_VERSION

    grid = {"affine": np.eye(4).tolist(), "shape": [8, 8, 8]}
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "model": {"method": "exp", "seed": 0, "run": "run"},
        "network": {"kwargs": {}},
        "preprocessing": {"source_grid": grid, "model_grid": grid},
        "readout": {"kind": "head"},
        "training_cohort": {"age": {"min": 6.0, "max": 86.0}},
        "qc": {"reference": {}},
        "calibration": {"slope": 0.3, "intercept": 1.0, "n": 20, "min_slope": 0.05},
    }


@pytest.mark.parametrize(
    "damage, message",
    [
        ("list", "holding a JSON object"),
        ("no-preprocessing", r"bundle.json: no 'preprocessing' entry"),
        ("calibration-string", r"bundle.json: field 'calibration' is 'abc'; expected a JSON object"),
        ("network-null", r"bundle.json: no 'network' entry"),
        ("kwargs-list", r"bundle.json, network: field 'kwargs' is \[\]; expected a JSON object"),
        ("age-string", r"bundle.json, training_cohort.age: field 'max' is '86'; expected a number"),
    ],
)
def test_a_hand_edited_bundle_json_is_named(tmp_path, damage, message):
    from brainage.errors import BrainAgeError
    from brainage.inference.bundle import ModelBundle

    spec = _spec()
    if damage == "list":
        spec = [spec]
    elif damage == "no-preprocessing":
        del spec["preprocessing"]
    elif damage == "calibration-string":
        spec["calibration"] = "abc"
    elif damage == "network-null":
        spec["network"] = None
    elif damage == "kwargs-list":
        spec["network"]["kwargs"] = []
    else:
        spec["training_cohort"]["age"]["max"] = "86"
    (tmp_path / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(BrainAgeError, match=message):
        ModelBundle.load(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps(_spec()))  # undamaged: passes the check, stops at the files
    with pytest.raises(BrainAgeError, match="weights.pt is missing"):
        ModelBundle.load(tmp_path)


@pytest.mark.parametrize("damage", ["binary", "list"])
def test_a_damaged_resources_json_is_named(tmp_path, damage):
    from brainage.data.layouts import read_resources
    from brainage.errors import BrainAgeError

    (tmp_path / "resource").mkdir()
    path = bad_json(tmp_path / "resource" / "resources.json", damage)
    with pytest.raises(BrainAgeError, match=f"^{re.escape(str(path))}"):
        read_resources(tmp_path)


@pytest.mark.parametrize("split", [5, None, []])
def test_evaluate_names_the_fold_file_of_a_split_that_is_not_a_list(tmp_path, capsys, split):
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"f0": {"train": ["a"], "internal_test": ["b"], "external_test": split}}))
    code, err = cli(capsys, "evaluate", "--features", tmp_path / "none", "--out", tmp_path / "out", "--folds", folds)
    assert code == 2 and f"{folds}: fold 'f0' external_test is {split!r}; expected a non-empty list" in err, err
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_n_jobs_0_and_more_folds_than_any_site_has(tmp_path, capsys):
    from brainage.errors import BrainAgeError
    from brainage.evaluation import evaluate_features

    code, err = cli(capsys, "evaluate", "--features", tmp_path / "none", "--out", tmp_path / "out", "--n-jobs", "0")
    assert code == 2 and "n_jobs (--n-jobs) is 0" in err, err
    rng = np.random.default_rng(0)
    sites = np.repeat(["a", "b", "c"], [4, 3, 2])  # 9 subjects, none of the sites with 5

    def split(n, s):
        return rng.normal(size=(n, 3)), rng.uniform(20, 60, n), s

    with pytest.raises(
        BrainAgeError, match=r"cv \(--cv\) is 5, but every training site .* site 'a' with 4, smallest 2"
    ):
        evaluate_features(split(9, sites), split(4, sites[:4]), split(3, None))


def test_ramp_kit_takes_a_name_not_a_path(tmp_path, capsys):
    from brainage.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["ramp-kit", "--submission", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "kit"),
              "--name", "../../evil"])  # fmt: skip
    assert exit_.value.code == 2
    assert "submission name '../../evil': expected a folder name" in capsys.readouterr().err
    assert written(tmp_path) == []


def test_table_names_a_missing_harmonization_meta(tmp_path, capsys):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(GOOD_SCORES))
    meta = tmp_path / "combat" / "cache.json"
    code, err = cli(capsys, "table", "--scores", scores, "--out", tmp_path / "out", "--harmonization-meta", meta)
    assert code == 2 and f"not found: {meta}" in err, err
    bad_json(meta.parent, "folder")
    bad_json(meta, "list")
    code, err = cli(capsys, "table", "--scores", scores, "--out", tmp_path / "out", "--harmonization-meta", meta)
    assert code == 2 and f"{meta}: expected" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["binary", "empty", "list"])
def test_submission_check_names_a_damaged_metadata_pkl(tmp_path, capsys, damage):
    import pickle

    from brainage.submission.build import SUBMISSION_FILES

    sub = tmp_path / "sub"
    sub.mkdir()
    for name in SUBMISSION_FILES:
        (sub / name).write_bytes(b"")
    content = {"binary": bytes(range(128, 256)), "empty": b"", "list": pickle.dumps([1, 2])}[damage]
    (sub / "metadata.pkl").write_bytes(content)
    argv = ["submission-check", "--submission", sub, "--data", tmp_path, "--features", tmp_path, "--out"]
    code, err = cli(capsys, *argv, tmp_path / "out")
    assert code == 2 and f"{sub / 'metadata.pkl'}" in err, err
    assert not (tmp_path / "out").exists()
