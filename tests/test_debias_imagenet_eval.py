"""ReBias's "unbiased" 9-class ImageNet accuracy (texture clusters), its cluster-file readers,
and ``debias-eval`` on a data set without a bias attribute."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import png

from brainage.cli import main
from brainage.debias.data import load_array_set, read_imagenet9
from brainage.debias.data.imagenet9 import load_texture_clusters, texture_clusters_from_csv
from brainage.debias.evaluate import texture_cluster_scores, texture_unbiased_accuracy

# ----------------------------------------------------------------------------- the metric


def _hand_case():
    """40 images, 3 classes, 2 clusterings; groups of (label, n, n_correct, cluster A, cluster B).

    Wrong predictions are (label + 1) % 3. The correct images of a group come first.
    """
    groups = [
        (0, 10, 7, 0, 5),  # A cell (0, 0): 7/10
        (0, 3, 0, 1, 5),  # A cell (0, 1): 3 images -> dropped; B cell (0, 5) = groups 1+2: 7/13
        (1, 6, 6, 0, 1),  # A cell (1, 0) = groups 3+4: 6/12; B cell (1, 1): 6 images -> dropped
        (1, 6, 0, 0, 2),  # B cell (1, 2): 6 images -> dropped
        (2, 10, 10, 2, 3),  # A cell (2, 2): 10/10; B cell (2, 3) = groups 5+6: 15/15
        (2, 5, 5, 1, 3),  # A cell (2, 1): 5 images -> dropped
    ]
    labels, pred, a, b = [], [], [], []
    for label, n, n_correct, ca, cb in groups:
        labels += [label] * n
        pred += [label] * n_correct + [(label + 1) % 3] * (n - n_correct)
        a += [ca] * n
        b += [cb] * n
    return np.array(pred), np.array(labels), np.array([a, b])


# A: kept cells 7/10, 6/12, 10/10 -> (0.7 + 0.5 + 1.0) / 3 = 11/15
# B: kept cells 7/13, 15/15      -> (7/13 + 1) / 2 = 10/13
# metric = (11/15 + 10/13) / 2 = (143 + 150) / 195 / 2 = 293/390
HAND_A, HAND_B = 11 / 15, 10 / 13
HAND_METRIC = 293 / 390


def test_texture_metric_by_hand():
    pred, labels, clusters = _hand_case()
    assert labels.size == 40
    assert texture_cluster_scores(pred, labels, clusters) == pytest.approx([HAND_A, HAND_B])
    assert texture_unbiased_accuracy(pred, labels, clusters) == pytest.approx(HAND_METRIC)
    # logits instead of predictions, and a list of clusterings instead of an (R, n) array
    logits = np.eye(3)[pred] * 5.0 - 1.0
    assert texture_unbiased_accuracy(logits, labels, [clusters[0], clusters[1]]) == pytest.approx(HAND_METRIC)
    # min_cell = 1 keeps every non-empty cell:
    # A: (0.7 + 0 + 0.5 + 1 + 1) / 5 = 0.64; B: (7/13 + 1 + 0 + 1) / 4 = 33/52
    assert texture_unbiased_accuracy(pred, labels, clusters, min_cell=1) == pytest.approx((0.64 + 33 / 52) / 2)


def test_texture_metric_is_a_mean_of_cells_not_pooled():
    # one class, one clustering: a cell of 10 images all correct, a cell of 30 all wrong
    labels = np.zeros(40, np.int64)
    pred = np.r_[np.zeros(10, np.int64), np.ones(30, np.int64)]
    clusters = np.r_[np.zeros(10, np.int64), np.ones(30, np.int64)][None]
    # unweighted: (1 + 0) / 2 = 0.5; pooled would be 10 / 40 = 0.25
    assert texture_unbiased_accuracy(pred, labels, clusters) == pytest.approx(0.5)
    # the same predictions and cluster labels split differently by class count as separate cells:
    # cluster 0 holds 10 class-0 images (all correct) and 10 class-1 images (all wrong) -> (1 + 0) / 2
    labels2 = np.r_[np.zeros(10, np.int64), np.ones(10, np.int64)]
    pred2 = np.zeros(20, np.int64)
    assert texture_unbiased_accuracy(pred2, labels2, np.zeros((1, 20), np.int64)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, y, c: (p, y, c[:, :-1]), r"clustering 1: expected 40 cluster labels"),
        (lambda p, y, c: (p, y, np.where(np.arange(40) == 3, -1, c)), r"clustering 1: .*non-negative, found -1"),
        (lambda p, y, c: (p, y, c.astype(float)), r"clustering 1: cluster labels must be integers"),
        (lambda p, y, c: (p, y, c[:, :, None]), r"\(R, n\)"),
        (lambda p, y, c: (p[:-1], y, c), r"predictions \(n,\) matching labels"),
        (lambda p, y, c: (p, y, np.zeros((0, 40), np.int64)), r"no texture clustering"),
    ],
)
def test_texture_metric_bad_input(change, match):
    pred, labels, clusters = _hand_case()
    with pytest.raises(ValueError, match=match):
        texture_unbiased_accuracy(*change(pred, labels, clusters))


def test_texture_metric_clustering_without_a_kept_cell():
    pred, labels, clusters = _hand_case()
    # clustering 2 spreads the 40 images over cells of 4 images at most (cluster = index // 4)
    spread = np.stack([clusters[0], np.arange(40) // 4])
    with pytest.raises(ValueError, match=r"clustering 2: no \(class, cluster\) cell .* 10 images \(largest cell: 4\)"):
        texture_unbiased_accuracy(pred, labels, spread)
    with pytest.raises(ValueError, match="min_cell"):
        texture_unbiased_accuracy(pred, labels, clusters, min_cell=0)


# ----------------------------------------------------------------------------- the readers


def test_load_texture_clusters_npy_and_pth(tmp_path):
    a = np.array([0, 3, 3, 1, 8], np.int64)
    b = np.array([2, 2, 0, 0, 1], np.int32)
    np.save(tmp_path / "c1.npy", a)
    torch.save(torch.from_numpy(b), tmp_path / "c2.pth")
    torch.save(torch.tensor([5, 4, 3, 2, 1], dtype=torch.uint8), tmp_path / "c3.pt")
    got = load_texture_clusters([tmp_path / "c1.npy", tmp_path / "c2.pth", tmp_path / "c3.pt"], 5)
    assert got.dtype == np.int64
    assert got.tolist() == [[0, 3, 3, 1, 8], [2, 2, 0, 0, 1], [5, 4, 3, 2, 1]]
    assert load_texture_clusters(str(tmp_path / "c1.npy"), 5).tolist() == [[0, 3, 3, 1, 8]]


def test_load_texture_clusters_errors_name_the_file(tmp_path):
    np.save(tmp_path / "short.npy", np.arange(4))
    np.save(tmp_path / "float.npy", np.zeros(5))
    np.save(tmp_path / "twod.npy", np.zeros((5, 1), np.int64))
    np.save(tmp_path / "negative.npy", np.array([0, 1, -2, 0, 0]))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    torch.save(torch.zeros(5), tmp_path / "float.pth")
    torch.save({"labels": torch.arange(5)}, tmp_path / "dict.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    (tmp_path / "labels.txt").write_text("0 1 2 3 4\n")
    cases = [
        ("short.npy", ValueError, r"short\.npy: expected 5 cluster labels .* found 4"),
        ("float.npy", ValueError, r"float\.npy: expected a 1-D integer array of 5 cluster labels, got float64"),
        ("twod.npy", ValueError, r"twod\.npy: expected a 1-D integer array of 5 .* \(5, 1\)"),
        ("negative.npy", ValueError, r"negative\.npy: cluster labels must be non-negative, found -2"),
        ("objects.npy", ValueError, r"objects\.npy: not a readable \.npy"),
        ("float.pth", ValueError, r"float\.pth: expected a 1-D integer tensor of cluster labels, got torch\.float32"),
        ("dict.pth", ValueError, r"dict\.pth: expected a 1-D integer tensor of 5 cluster labels, got dict"),
        ("garbage.pth", ValueError, r"garbage\.pth: not a readable torch file"),
        ("labels.txt", ValueError, r"labels\.txt: texture-cluster files must be \.npy, \.pth or \.pt"),
        ("missing.npy", FileNotFoundError, r"missing\.npy: texture-cluster file not found"),
    ]
    for name, err, match in cases:
        with pytest.raises(err, match=match):
            load_texture_clusters([tmp_path / name], 5)


def test_texture_clusters_from_csv_follow_the_listing(tmp_path):
    root = tmp_path / "val"
    # dog (label 0) and insect (label 8) folders of ReBias's ImageNet-A map; files written unsorted
    for name in ("b.png", "c.png", "a.png"):
        png(root / "n02219486" / name, 1, size=4)
    for name in ("z.png", "y.png"):
        png(root / "n02085620" / name, 2, size=4)
    listing = read_imagenet9(root)
    # the listing: sorted folders (n02085620 < n02219486), sorted file names
    assert [f"{p.parent.name}/{p.name}" for p in listing.paths] == [
        "n02085620/y.png",
        "n02085620/z.png",
        "n02219486/a.png",
        "n02219486/b.png",
        "n02219486/c.png",
    ]
    table = tmp_path / "clusters.csv"
    table.write_text(
        "path,category,cluster1,cluster2\n"
        "n02219486/c.png,insect,5,0\n"
        "n02085620/z.png,dog,2,1\n"
        "n02219486/a.png,insect,3,2\n"
        "extra/other.png,dog,8,8\n"
        "n02085620/y.png,dog,1,3\n"
        "n02219486/b.png,insect,4,4\n"
    )
    got = texture_clusters_from_csv(table, listing)
    assert got.tolist() == [[1, 2, 3, 4, 5], [3, 1, 2, 4, 0]]
    # a missing image, a table without cluster columns
    (tmp_path / "short.csv").write_text("path,cluster1\nn02085620/y.png,0\n")
    with pytest.raises(ValueError, match=r"short\.csv: 4 of the 5 images have no row, e\.g\. \['n02085620/z\.png'"):
        texture_clusters_from_csv(tmp_path / "short.csv", listing)
    (tmp_path / "nocl.csv").write_text("path,category\nn02085620/y.png,dog\n")
    with pytest.raises(ValueError, match=r"nocl\.csv: expected a 'path' column and 'cluster1'"):
        texture_clusters_from_csv(tmp_path / "nocl.csv", listing)


# ----------------------------------------------------------------------------- debias-eval end to end


def test_debias_eval_on_imagenet_layout(tmp_path, capsys):
    root = tmp_path / "imagenet-a"
    dog, insect = "n02085620", "n02219486"  # labels 0 and 8 of ReBias's ImageNet-A map
    rng = np.random.default_rng(0)
    names = [f"img_{i:02d}.png" for i in range(12)]
    for wnid in (insect, dog):
        for name in reversed(names):  # written in reverse order: the listing sorts
            png(root / wnid / name, rng.integers(0, 256, 3).tolist(), size=8)
    npz = tmp_path / "in9.npz"
    assert main(["debias-data", "folder", "--kind", "imagenet9", "--root", str(root), "--out", str(npz)]) == 0
    data = load_array_set(npz)
    assert data.labels.tolist() == [0] * 12 + [8] * 12 and data.bias.tolist() == [-1] * 24
    ckpt = tmp_path / "ce.pt"
    assert (
        main(
            [
                "debias-train",
                "--train",
                str(npz),
                "--val",
                str(npz),
                "--method",
                "ce",
                "--width",
                "0.125",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--milestones",
                "",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--out",
                str(ckpt),
                "--quiet",
            ]
        )
        == 0
    )

    # clusters in the listing order (dog img_00..img_11, then insect img_00..img_11):
    # clustering 1: dog all in cluster 0 (12); insect img_00..09 in cluster 1 (10), img_10, 11 in 2 (dropped)
    # clustering 2: dog img_00 in cluster 3 (dropped), the other 11 in 4; insect all in 4 (12)
    c1 = np.array([0] * 12 + [1] * 10 + [2] * 2)
    c2 = np.array([3] + [4] * 11 + [4] * 12)
    np.save(tmp_path / "c1.npy", c1)
    torch.save(torch.from_numpy(c2), tmp_path / "c2.pth")
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "debias-eval",
                "--model",
                str(ckpt),
                "--test",
                str(npz),
                "--attacker-train",
                str(npz),
                "--texture-clusters",
                str(tmp_path / "c1.npy"),
                str(tmp_path / "c2.pth"),
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (record,) = json.loads(out.read_text())
    for key in ("attacker_acc", "attacker_chance", "test_aligned_acc", "test_conflicting_acc"):
        assert record[key] is None, key

    # the model's predictions, recomputed here, and the metric by an explicit cell count
    from brainage.debias.steps import load_checkpoint
    from brainage.debias.train import Normalizer, predict

    model, saved = load_checkpoint(ckpt)
    with torch.no_grad():
        logits, _ = predict(model, data, Normalizer(saved["train"]["mean"], saved["train"]["std"]))
    correct = logits.argmax(1) == data.labels
    assert record["test_acc"] == pytest.approx(correct.mean())
    kept = {
        1: [correct[:12], correct[12:22]],  # (dog, 0), (insect, 1)
        2: [correct[1:12], correct[12:]],  # (dog, 4), (insect, 4)
    }
    expected = np.mean([np.mean([cell.mean() for cell in cells]) for cells in kept.values()])
    assert record["texture_unbiased_acc"] == pytest.approx(expected)

    # without an attacker split; and cluster files of the wrong length are refused, naming the file
    assert main(["debias-eval", "--model", str(ckpt), "--test", str(npz), "--out", str(tmp_path / "e2.json")]) == 0
    (record2,) = json.loads((tmp_path / "e2.json").read_text())
    assert record2["attacker_acc"] is None and "texture_unbiased_acc" not in record2
    np.save(tmp_path / "short.npy", c1[:-1])
    capsys.readouterr()
    code = main(
        [
            "debias-eval",
            "--model",
            str(ckpt),
            "--test",
            str(npz),
            "--texture-clusters",
            str(tmp_path / "short.npy"),
            "--out",
            str(tmp_path / "e3.json"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "short.npy: expected 24 cluster labels" in err and not (tmp_path / "e3.json").exists()
