"""The debias subcommands end to end on tiny data, their errors on bad input, and the workflow
rules on a tiny config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, cifar10_folder, mnist_folder, png

from brainage.cli import main
from brainage.debias.data import load_array_set


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def _tiny_biased_mnist(data: Path, capsys) -> None:
    """Biased-MNIST at rho 0.99 with 2/1/1 digits per class in train/val/test, under ``data``."""
    argv = f"debias-data biased-mnist --out {data} --rho 0.99 --train 2 --val 1 --test 1".split()
    assert _run(argv, capsys)[0] == 0


def _train_ce(data: Path, out: Path, *options: str) -> list[str]:
    """``debias-train`` argv: CE on the tiny set of :func:`_tiny_biased_mnist`, with ``options``."""
    inputs = ["--train", str(data / "train_rho0.99.npz"), "--val", str(data / "val.npz")]
    return ["debias-train", *inputs, "--method", "ce", *options, "--out", str(out)]


def test_biased_mnist_train_eval_table(tmp_path, capsys):
    data = tmp_path / "data"
    code, _ = _run(
        [
            "debias-data",
            "biased-mnist",
            "--out",
            str(data),
            "--rho",
            "0.99",
            "0.9",
            "--train",
            "20",
            "--val",
            "5",
            "--test",
            "6",
            "--figure",
            str(data / "ex.png"),
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads((data / "summary.json").read_text())
    # int(20 * 0.99) = 19 aligned per class -> 1 conflicting each; int(20 * 0.9) = 18 -> 2 each
    assert summary["train"]["0.99"]["n_conflicting"] == 10 and summary["train"]["0.9"]["n_conflicting"] == 20
    assert summary["sizes"] == {"train": 200, "val": 50, "test": 60, "test_biased": 60}
    biased = load_array_set(data / "test_biased.npz")
    assert np.array_equal(biased.bias, biased.labels)
    assert (data / "ex.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for method in ("ce", "ce-end"):
        code, _ = _run(
            [
                "debias-train",
                "--train",
                str(data / "train_rho0.99.npz"),
                "--val",
                str(data / "val.npz"),
                "--monitor",
                str(data / "test.npz"),
                "--method",
                method,
                "--width",
                "0.125",
                "--epochs",
                "2",
                "--batch-size",
                "25",
                "--milestones",
                "1",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--tag",
                "rho=0.99",
                "--out",
                str(tmp_path / f"{method}.pt"),
                "--history",
                str(tmp_path / f"{method}.json"),
                "--quiet",
            ],
            capsys,
        )
        assert code == 0
    history = json.loads((tmp_path / "ce.json").read_text())
    # default lr 1e-3, x0.1 after epoch 1; the history records the rate each epoch used
    assert history["train"]["milestones"] == [1]
    assert [h["lr"] for h in history["history"]] == pytest.approx([1e-3, 1e-4])
    code, _ = _run(
        [
            "debias-eval",
            "--model",
            str(tmp_path / "ce.pt"),
            str(tmp_path / "ce-end.pt"),
            "--test",
            str(data / "test.npz"),
            "--test-biased",
            str(data / "test_biased.npz"),
            "--attacker-train",
            str(data / "val.npz"),
            "--linear-eval",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "eval.json"),
        ],
        capsys,
    )
    assert code == 0
    records = json.loads((tmp_path / "eval.json").read_text())
    assert [r["method"] for r in records] == ["ce", "ce-end"] and all(r["rho"] == 0.99 for r in records)
    for r in records:
        assert 0 <= r["test_acc"] <= 1 and 0 <= r["attacker_acc"] <= 1 and r["n_conflicting_train"] == 10
        assert 0 <= r["linear_eval_acc"] <= 1 and 0 <= r["test_biased_acc"] <= 1
        # the reference protocol takes the best test epoch, so it can only be higher
        assert r["ref_protocol_acc"] >= r["test_acc"] - 1e-12
    code, _ = _run(["debias-table", "--eval", str(tmp_path / "eval.json"), "--out-dir", str(tmp_path / "t")], capsys)
    assert code == 0 and "CE + EnD" in (tmp_path / "t" / "table2.md").read_text()


def test_rho_outside_unit_interval_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["debias-data", "biased-mnist", "--out", str(tmp_path), "--rho", "1.5", "--val", "1"])
    assert err.value.code == 2 and "rho must lie in [0, 1]" in capsys.readouterr().err


def test_idx_and_fashion_sources(tmp_path, capsys):
    mnist_folder(tmp_path / "fm", n_train=40, n_test=20, compress=True)
    code, _ = _run(
        [
            "debias-data",
            "biased-mnist",
            "--source",
            f"fashion:{tmp_path / 'fm'}",
            "--out",
            str(tmp_path / "d"),
            "--rho",
            "0.5",
            "--val",
            "1",
        ],
        capsys,
    )
    assert code == 0
    # the 40 training digits: 1 per class held out for validation, the other 30 train
    assert len(load_array_set(tmp_path / "d" / "train_rho0.5.npz")) == 30
    assert len(load_array_set(tmp_path / "d" / "val.npz")) == 10
    assert len(load_array_set(tmp_path / "d" / "test.npz")) == 20
    code, err = _run(
        [
            "debias-data",
            "biased-mnist",
            "--source",
            f"idx:{tmp_path / 'nowhere'}",
            "--out",
            str(tmp_path / "e"),
            "--rho",
            "0.5",
            "--val",
            "1",
        ],
        capsys,
    )
    assert code == 2 and "nowhere" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "data"
    _tiny_biased_mnist(data, capsys)
    code, err = _run(_train_ce(data, tmp_path / "m.pt", "--device", "cuda"), capsys)
    assert code == 2 and "device 'cuda' requested but CUDA is not available" in err
    assert not (tmp_path / "m.pt").exists()


def test_bad_dfa_name_and_missing_cifar_batch(tmp_path, capsys):
    png(tmp_path / "c" / "1pct" / "align" / "0" / "x_0_0.png", 1)
    png(tmp_path / "c" / "1pct" / "conflict" / "0" / "x_0_zero.png", 1)
    code, err = _run(
        [
            "debias-data",
            "folder",
            "--kind",
            "dfa",
            "--root",
            str(tmp_path / "c"),
            "--percent",
            "1pct",
            "--out",
            str(tmp_path / "c.npz"),
        ],
        capsys,
    )
    assert code == 2 and "x_0_zero.png" in err
    (tmp_path / "cifar").mkdir()
    code, err = _run(
        ["debias-data", "cifar", "--which", "cifar10", "--root", str(tmp_path / "cifar"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "data_batch_1" in err
    code, err = _run(
        [
            "debias-train",
            "--train",
            str(tmp_path / "none.npz"),
            "--val",
            str(tmp_path / "none.npz"),
            "--method",
            "ce",
            "--out",
            str(tmp_path / "m.pt"),
        ],
        capsys,
    )
    assert code == 2 and "none.npz" in err


def test_imagenet_a_folder_needs_no_class_order(tmp_path, capsys):
    # dog and insect folders of ImageNet-A (labels 0 and 8 of ReBias's map) and one outside the nine
    for wnid in ("n02085620", "n02219486", "n01498041"):
        png(tmp_path / "imagenet-a" / wnid / f"{wnid}_0.jpg", 1, size=4)
    code, err = _run(
        [
            "debias-data",
            "folder",
            "--kind",
            "imagenet9",
            "--root",
            str(tmp_path / "imagenet-a"),
            "--out",
            str(tmp_path / "a.npz"),
        ],
        capsys,
    )
    assert code == 0, err
    data = load_array_set(tmp_path / "a.npz")
    assert sorted(data.labels.tolist()) == [0, 8]


def test_corrupted_digits_to_dfa_and_back(tmp_path, capsys):
    mnist_folder(tmp_path / "mnist", n_train=60, n_test=20)
    code, _ = _run(
        [
            "debias-data",
            "corrupted",
            "--source",
            f"idx:{tmp_path / 'mnist'}",
            "--out",
            str(tmp_path / "cc"),
            "--percent",
            "50",
            "--protocol",
            "type1",
            "--severity",
            "1",
            "--val-per-class",
            "1",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads((tmp_path / "cc" / "summary.json").read_text())
    assert summary["splits"]["train_50pct"]["n"] == 50 and summary["splits"]["test"]["n"] == 20
    code, _ = _run(
        [
            "debias-data",
            "folder",
            "--kind",
            "dfa",
            "--root",
            str(tmp_path / "cc"),
            "--percent",
            "50pct",
            "--out",
            str(tmp_path / "cc.npz"),
        ],
        capsys,
    )
    assert code == 0
    data = load_array_set(tmp_path / "cc.npz")
    assert data.images.shape == (50, 3, 32, 32)
    assert data.n_conflicting == summary["splits"]["train_50pct"]["n_conflicting"]


def test_corrupted_cifar10_from_python_pickles(tmp_path, capsys):
    from brainage.debias.data import read_dfa

    # 20 training images per class (2 held out for validation -> 18 train), 3 test per class
    written = cifar10_folder(tmp_path / "cifar-10-batches-py", train_per_class=20, test_per_class=3)
    code, _ = _run(
        [
            "debias-data",
            "corrupted",
            "--source",
            f"cifar10:{tmp_path / 'cifar-10-batches-py'}",
            "--out",
            str(tmp_path / "cc"),
            "--percent",
            "50",
            "--protocol",
            "type1",
            "--severity",
            "1",
            "--val-per-class",
            "2",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    root = tmp_path / "cc"
    # LfF rule at 50 %: per class of 18, share 0.5 for the class's corruption (9 images) and
    # 0.5 / 9 = 1/18 for each other corruption (1 image each): cumulative cuts 18 * cumsum are
    # whole numbers, so 9 aligned and one image of each of the 9 other corruptions.
    summary = json.loads((root / "summary.json").read_text())
    assert summary["splits"]["train_50pct"] == {"n": 180, "n_conflicting": 90}
    assert summary["splits"]["valid"]["n"] == 20 and summary["splits"]["test"]["n"] == 30
    for y in range(10):
        align = sorted((root / "50pct" / "align" / str(y)).glob("*.png"))
        conflict = sorted((root / "50pct" / "conflict" / str(y)).glob("*.png"))
        assert len(align) == 9 and all(p.stem.endswith(f"_{y}_{y}") for p in align)
        assert sorted(int(p.stem.rsplit("_", 1)[1]) for p in conflict) == [b for b in range(10) if b != y]
        assert len(list((root / "valid" / str(y)).glob("*.png"))) == 2
        assert len(list((root / "test" / str(y)).glob("*.png"))) == 3
    assert sorted(p.name for p in root.iterdir()) == ["50pct", "summary.json", "test", "valid"]

    # read back: the DFA reader and the folder -> .npz conversion
    train = read_dfa(root, "train", "50pct")
    expected = sorted(
        [(y, y) for y in range(10) for _ in range(9)] + [(y, b) for y in range(10) for b in range(10) if b != y]
    )
    assert sorted(zip(train.labels.tolist(), train.bias.tolist(), strict=True)) == expected
    assert len(read_dfa(root, "valid", "50pct")) == 20 and len(read_dfa(root, "test", "50pct")) == 30
    code, _ = _run(
        [
            "debias-data",
            "folder",
            "--kind",
            "dfa",
            "--root",
            str(root),
            "--percent",
            "50pct",
            "--out",
            str(tmp_path / "cc.npz"),
        ],
        capsys,
    )
    assert code == 0
    data = load_array_set(tmp_path / "cc.npz")
    assert data.images.shape == (180, 3, 32, 32) and data.n_conflicting == 90
    # type1 corruption 9 is the original image: the aligned class-9 images are training images
    # of class 9 exactly as stored in the pickles (1024 red, 1024 green, 1024 blue values)
    sources = {
        row.reshape(3, 32, 32).tobytes()
        for name in (f"data_batch_{i}" for i in range(1, 6))
        for row, label in zip(*written[name], strict=True)
        if label == 9
    }
    nines = data.images[(data.labels == 9) & (data.bias == 9)]
    assert len(nines) == 9 and all(img.tobytes() in sources for img in nines)
    assert len({img.tobytes() for img in nines}) == 9


@pytest.mark.slow
def test_workflow_rules_on_a_tiny_config(tmp_path):
    config = {
        "run": "tiny",
        "debias": {
            "enabled": True,
            "rhos": [0.99],
            "methods": ["ce", "eps-supinfonce-fairkl"],
            "seeds": [0],
            "split": {"train": 12, "val": 4, "test": 4},
            "model": "resnet18",
            "cifar_stem": False,
            "width": 0.125,
            "epochs": 1,
            "batch_size": 20,
            "milestones": [],
            "device": "cpu",
            "note": "tiny test recipe",
        },
    }
    (tmp_path / "tiny.yaml").write_text(json.dumps(config))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    snakemake = shutil.which("snakemake", path=env["PATH"])
    proc = subprocess.run(
        [
            snakemake,
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "--cores",
            "2",
            "--configfile",
            str(tmp_path / "tiny.yaml"),
            "--quiet",
            "all",
            "--",
            "debias_all",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = tmp_path / "results" / "tiny" / "debias" / "tables"
    md = (tables / "table2.md").read_text()
    assert "CE (vanilla)" in md and "eps-SupInfoNCE + FairKL" in md and "tiny test recipe" in md
    assert (tmp_path / "results" / "tiny" / "benchmarks" / "debias" / "data.tsv").exists()
    assert (tmp_path / "results" / "tiny" / "logs" / "debias" / "eval" / "ce.log").exists()
    ckpt = torch.load(
        tmp_path / "results" / "tiny" / "debias" / "models" / "ce" / "rho0.99" / "seed0.pt", weights_only=True
    )
    assert ckpt["tags"] == {"rho": 0.99}
    # config keys reach the command line, the boolean one as --no-cifar-stem
    assert ckpt["train"]["model"] == "resnet18" and ckpt["train"]["cifar_stem"] is False
    assert ckpt["train"]["width"] == 0.125 and ckpt["train"]["batch_size"] == 20


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--lr", "inf", "--lr must be a finite number"),
        ("--lr", "0", "--lr must be > 0"),
        ("--temperature", "nan", "--temperature must be a finite number"),
        ("--weight-decay", "-1e-4", "--weight-decay >= 0"),
    ],
)
def test_debias_train_refuses_non_finite_or_out_of_range_numbers(tmp_path, capsys, option, value, expected):
    data = tmp_path / "data"
    _tiny_biased_mnist(data, capsys)
    code, err = _run(_train_ce(data, tmp_path / "m.pt", f"{option}={value}"), capsys)
    assert code == 2 and expected in err
    assert not (tmp_path / "m.pt").exists()


def test_debias_eval_refuses_hand_edited_checkpoints(tmp_path, capsys):
    data = tmp_path / "data"
    _tiny_biased_mnist(data, capsys)
    model = tmp_path / "m.pt"
    train = _train_ce(data, model, "--width", "0.125", "--epochs", "1", "--batch-size", "10", "--quiet")
    assert _run(train, capsys)[0] == 0
    record = torch.load(model, weights_only=True)
    first = next(iter(record["state_dict"]))
    edits = {
        "unknown-field": {**record, "method": {**record["method"], "gamma_ray": 1.0}},
        "wrong-type": {**record, "train": [1, 2]},
        "other-shape": {**record, "state_dict": {**record["state_dict"], first: torch.zeros(3)}},
        "not-a-record": [record["state_dict"][first]],
    }
    for name, edited in edits.items():
        path = tmp_path / f"{name}.pt"
        torch.save(edited, path)
        out = tmp_path / f"{name}.json"
        argv = ["debias-eval", "--model", str(path), "--test", str(data / "test.npz"), "--out", str(out)]
        code, err = _run(argv, capsys)
        assert code == 2 and "Traceback" not in err, (name, err)
        assert f"error: {path}: checkpoint " in err, (name, err)
        assert not out.exists()
