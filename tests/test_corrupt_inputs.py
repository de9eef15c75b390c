"""Damaged files and bad options given to the ``brainage`` CLI (the bad-input probe): one test per family.

Each test hands the command line a file a disk error, an interrupted copy or a careless edit
would leave (empty, truncated, random bytes, a foreign member), or an option out of range, and
checks the one-line refusal: exit status 2, a message naming the file or option, and no output
written. The CLI runs in-process (:func:`brainage.cli.main`).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import write_cache, write_feature_dir

from brainage.cli import main
from brainage.debias.data.arrays import ArraySet, save_array_set
from brainage.device import resolve_device
from brainage.errors import BrainAgeError
from brainage.training import extract_features
from brainage.training.checkpoint import MODEL_FORMAT, load_file

RANDOM = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))


def refused(argv: list[str], capsys) -> str:
    """Run the CLI; assert it exits 2 with one message line and no traceback; return that line."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"brainage {argv[0]}: error: "), err
    return line


def damaged_npz(folder: Path, name: str, good: Path) -> dict[str, Path]:
    """Damaged copies of the .npz ``good``: empty, random bytes, truncated zip, a non-.npy member."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    files = {"empty": b"", "random": RANDOM, "truncated": raw[: len(raw) // 2]}
    out = {}
    for kind, content in files.items():
        (folder / kind).mkdir(exist_ok=True)
        out[kind] = folder / kind / name
        out[kind].write_bytes(content)
    (folder / "member").mkdir(exist_ok=True)
    out["member"] = folder / "member" / name
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out["member"], "w") as dst:
        for item in src.namelist():
            dst.writestr(item, src.read(item))
        dst.writestr("notes.txt", "not an array")
    return out


# --------------------------------------------------------------------------- ramp-kit metadata.pkl (2)


def test_ramp_kit_refuses_a_missing_or_damaged_metadata_pkl(openbhb_dir, tmp_path, capsys):
    root, _ = openbhb_dir
    contents = {"empty": b"", "random": RANDOM, "list": pickle.dumps([1, 2])}
    for kind in ("missing", *contents):
        submission = tmp_path / kind
        submission.mkdir()
        if kind in contents:
            (submission / "metadata.pkl").write_bytes(contents[kind])
        out = tmp_path / f"kit_{kind}"
        line = refused(["ramp-kit", "--submission", submission, "--data", root, "--out", out], capsys)
        assert str(submission / "metadata.pkl") in line, line
        assert not out.exists()


# --------------------------------------------------------------------------- truncated NIfTI (3)


def test_truncated_nifti_is_refused_or_skipped(inference_run, tmp_path, capsys):
    from brainage.inference import ModelBundle

    prep = ModelBundle.load(inference_run / "bundle").preprocessing
    good = next((inference_run / "data").glob("*/derivatives/sub-*/ses-1/*_desc-gm_T1w.npy"))
    volume = np.load(good)[0].astype(np.float32)
    for name in ("cut.nii.gz", "cut.nii"):
        nib.save(nib.Nifti1Image(volume, prep.source_affine), tmp_path / name)
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    pd.DataFrame({"path": [good, tmp_path / "cut.nii.gz", tmp_path / "cut.nii"]}).to_csv(
        tmp_path / "list.csv", index=False
    )
    base = ["predict", "--model", inference_run / "bundle", "--images", tmp_path / "list.csv", "--quiet"]
    base += ["--no-figure", "--device", "cpu"]
    line = refused([*base, "--out", tmp_path / "stop.csv"], capsys)
    assert "cut.nii.gz: the voxel data cannot be read" in line
    assert not (tmp_path / "stop.csv").exists()
    for workers in ("0", "2"):
        out = tmp_path / f"skip{workers}.csv"
        assert main([str(a) for a in [*base, "--out", out, "--skip-invalid", "--workers", workers]]) == 0
        table = pd.read_csv(out, keep_default_na=False)
        assert table["error"].str.contains("the voxel data cannot be read").tolist() == [False, True, True]
        assert "cut.nii.gz" in table["error"][1] and "cut.nii:" in table["error"][2]


def test_predict_figure_path_taken_by_a_folder_writes_nothing(inference_run, tmp_path, capsys):
    good = next((inference_run / "data").glob("*/derivatives/sub-*/ses-1/*_desc-gm_T1w.npy"))
    (tmp_path / "fig").mkdir()
    argv = ["predict", "--model", inference_run / "bundle", "--images", good, "--quiet", "--device", "cpu"]
    line = refused([*argv, "--out", tmp_path / "p.csv", "--figure", tmp_path / "fig"], capsys)
    assert f"{tmp_path / 'fig'} is a folder" in line
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- empty / foreign model files (5)


def test_empty_or_foreign_model_file(inference_run, tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    line = refused(
        ["features", "--run", tmp_path / "empty.pt", "--cache", inference_run / "cache", "--out", tmp_path / "f"],
        capsys,
    )
    assert f"{tmp_path / 'empty.pt'}: cannot be read as a {MODEL_FORMAT} file (EOFError)" in line
    assert not (tmp_path / "f").exists()

    class Foreign:  # a pickled class the weights-only unpickler refuses
        pass

    globals()["Foreign"] = Foreign
    Foreign.__module__, Foreign.__qualname__ = __name__, "Foreign"
    torch.save({"model": Foreign()}, tmp_path / "foreign.pt")
    with pytest.raises(BrainAgeError) as info:
        load_file(tmp_path / "foreign.pt", MODEL_FORMAT)
    message = str(info.value)
    assert "\n" not in message and "brainage brainage" not in message and "weights_only" not in message
    assert "UnpicklingError: Unsupported global" in message and "Foreign" in message


# --------------------------------------------------------------------------- predict path tables (6)


def test_empty_table_and_a_row_with_an_extra_field(inference_run, tmp_path, capsys):
    good = next((inference_run / "data").glob("*/derivatives/sub-*/ses-1/*_desc-gm_T1w.npy"))
    cases = {
        "empty.csv": ("", "empty.csv: the file is empty"),
        "empty.tsv": ("", "empty.tsv: the file is empty"),
        "extra.csv": (f"path,age\n{good},30\n{good},31,x\n", "extra.csv, line 3: 3 fields, but the header"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        out = tmp_path / f"{name}.pred.csv"
        argv = ["predict", "--model", inference_run / "bundle", "--images", tmp_path / name, "--out", out]
        assert message in refused([*argv, "--quiet", "--device", "cpu"], capsys)
        assert not out.exists()
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "participants.tsv").write_text("")
    argv = ["predict", "--model", inference_run / "bundle", "--images", bids, "--out", tmp_path / "b.csv"]
    assert "participants.tsv: the file is empty" in refused([*argv, "--quiet"], capsys)


# --------------------------------------------------------------------------- debias .npz (7) and channels


def array_set(n: int, channels: int = 3, seed: int = 0) -> ArraySet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, 8, 8), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 2
    return ArraySet(images, labels, labels.copy())


def debias_train(train: Path, val: Path, out: Path) -> list:
    return ["debias-train", "--train", train, "--val", val, "--method", "ce", "--out", out, "--epochs", "1"]


def test_damaged_debias_npz(tmp_path, capsys):
    good = save_array_set(tmp_path / "val.npz", array_set(4))
    for kind, path in damaged_npz(tmp_path / "bad", "train.npz", good).items():
        out = tmp_path / f"{kind}.pt"
        line = refused(debias_train(path, good, out), capsys)
        assert line.split("error: ")[1].startswith(f"{path}: "), (kind, line)
        assert not out.exists()
    empty = save_array_set(tmp_path / "empty.npz", array_set(0))
    assert f"{empty} (--val): the split holds no images" in refused(
        debias_train(good, empty, tmp_path / "e.pt"), capsys
    )
    grey = save_array_set(tmp_path / "grey.npz", array_set(4, channels=1))
    line = refused(debias_train(grey, good, tmp_path / "g.pt"), capsys)
    assert f"{grey}: images have 1 channel(s), but the normalisation (mean/std) has 3" in line
    line = refused(debias_train(good, grey, tmp_path / "g.pt"), capsys)
    assert f"{grey}: images have 1 channel(s)" in line
    assert not (tmp_path / "g.pt").exists()


# --------------------------------------------------------------------------- feature folders (8)


def test_damaged_feature_files(tmp_path, capsys):
    folder = write_feature_dir(tmp_path / "features")
    for kind, path in damaged_npz(tmp_path / "bad", "train.npz", folder / "train.npz").items():
        for other in ("internal_test.npz", "external_test.npz"):
            (path.parent / other).write_bytes((folder / other).read_bytes())
        out = tmp_path / f"eval_{kind}"
        line = refused(["evaluate", "--features", path.parent, "--out", out], capsys)
        assert line.split("error: ")[1].startswith(f"{path}: "), (kind, line)
        assert not out.exists()
    assert "member(s) ['notes.txt'] are not .npy arrays" in line


def test_evaluate_refuses_an_output_folder_taken_by_a_file_before_the_probes(tmp_path, capsys, monkeypatch):
    import brainage.evaluation.pipeline as pipeline

    def probes_must_not_run(*args, **kwargs):
        raise AssertionError("the probes ran before the output path was checked")

    monkeypatch.setattr(pipeline, "evaluate_features", probes_must_not_run)
    folder = write_feature_dir(tmp_path / "features")
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    for out in (taken, taken / "scores"):
        line = refused(["evaluate", "--features", folder, "--out", out], capsys)
        assert f"{taken} is a file, but a folder is needed there" in line
    assert taken.read_text() == "keep me"


# --------------------------------------------------------------------------- training cache (11)


def test_damaged_training_cache(tmp_path, capsys):
    from brainage.data.cache import cache_identity, load_cache_mask, locate_trained_cache

    def fresh(name: str) -> Path:
        cache = write_cache(tmp_path / name)
        nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.uint8), np.eye(4)), cache / "mask.nii.gz")
        return cache

    train = ["train", "--method", "l1", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    damage = {
        "train.npy": (b"", "train.npy: not a readable numeric .npy array"),
        "train.tsv": (b"row\tparticipant_id\tage\n0\t\xff\xfe\t3\n", "train.tsv: not a text table"),
    }
    for name, (content, message) in damage.items():
        cache = fresh(name.replace(".", "_"))
        (cache / name).write_bytes(content)
        out = tmp_path / f"run_{name}"
        assert message in refused([*train, "--cache", cache, "--out", out], capsys)
        assert not (out / "model.pt").exists()
    cache = fresh("nomask")
    (cache / "mask.nii.gz").write_bytes(b"junk")
    with pytest.raises(BrainAgeError, match=r"mask\.nii\.gz: not a readable NIfTI mask"):
        load_cache_mask(cache)
    (cache / "mask.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask\.nii\.gz not found"):
        load_cache_mask(cache)
    cache = fresh("junk_npy")
    (cache / "train.npy").write_bytes(RANDOM)
    with pytest.raises(BrainAgeError, match=r"train\.npy: not a readable numeric \.npy array"):
        cache_identity(cache)
    cache = fresh("latin1_json")
    (cache / "cache.json").write_bytes(b'{"shape": [16, 16, 16], "note": "\xe9"}')
    with pytest.raises(BrainAgeError, match=r"cache\.json: not a valid cache description"):
        locate_trained_cache({}, cache, "model.pt", "test")


# --------------------------------------------------------------------------- options (15)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["features", "--run", "r", "--cache", "c", "--out", "o", "--num-threads", "-1"], "--num-threads"),
        (["features", "--run", "r", "--cache", "c", "--out", "o", "--batch-size", "-1"], "--batch-size"),
        (["export", "--run", "r", "--out", "o", "--num-threads", "-2"], "--num-threads"),
        (["export", "--run", "r", "--out", "o", "--qc-subjects", "-5"], "--qc-subjects"),
        (["predict", "--model", "m", "--images", "i", "--out", "o", "--num-threads", "-1"], "--num-threads"),
        (
            ["debias-train", "--train", "t", "--val", "v", "--method", "ce", "--out", "o", "--threads", "-3"],
            "--threads",
        ),
        (["debias-eval", "--model", "m", "--test", "t", "--out", "o", "--threads", "-3"], "--threads"),
        (["debias-data", "folder", "--kind", "dfa", "--root", "r", "--out", "o", "--size", "0"], "--size"),
        (["debias-data", "biased-mnist", "--out", "o", "--rho", "0.9", "--val", "-1"], "--val"),
        (["debias-data", "biased-mnist", "--out", "o", "--rho", "0.9", "--val", "2", "--train", "0"], "--train"),
    ],
)
def test_out_of_range_options(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"argument {option}: expected" in capsys.readouterr().err


def test_feature_extraction_refuses_a_batch_size_below_one(tmp_path):
    # a negative size once gave empty feature files and exit status 0 (range() with a negative step)
    for size in (0, -1):
        with pytest.raises(BrainAgeError, match=f"batch_size must be >= 1, got {size}"):
            extract_features(tmp_path / "run", tmp_path / "cache", tmp_path / "out", batch_size=size)
    assert not (tmp_path / "out").exists()


def test_unknown_device_and_a_class_order_not_in_utf8(tmp_path, capsys):
    with pytest.raises(BrainAgeError, match="unknown device 'tpu'; valid: 'auto', 'cpu', 'cuda', 'cuda:N'"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")
    (tmp_path / "root").mkdir()
    (tmp_path / "order.txt").write_bytes(b"n01440764 tench\n\xe9\n")
    argv = ["debias-data", "folder", "--kind", "imagenet9", "--root", tmp_path / "root", "--out", tmp_path / "o.npz"]
    line = refused([*argv, "--class-order", tmp_path / "order.txt"], capsys)
    assert f"{tmp_path / 'order.txt'}, line 2: byte 0xe9 is not UTF-8" in line
    assert not (tmp_path / "o.npz").exists()
