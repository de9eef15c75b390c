"""Debiasing data: Biased-MNIST construction, IDX, bundled digits, CIFAR pickles, DFA folders,
9-class ImageNet, the LfF corrupted generator. Expected values are worked out by hand from the
published rules, and every fixture is written here in the real on-disk format."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
from helpers import mnist_folder, png, write_idx

from brainage.debias.data import (
    ArraySet,
    assign_corruptions,
    colour_counts,
    corrupt_images,
    imagenet9_map,
    imagenet_class_order,
    load_array_set,
    load_bundled_mnist,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_images,
    load_mnist_idx,
    make_biased_mnist,
    make_corrupted,
    parse_dfa_name,
    read_bffhq,
    read_dfa,
    read_idx,
    read_imagenet9,
    save_array_set,
    split_per_class,
    to_rgb32,
    write_dfa_split,
)
from brainage.debias.data.corrupted import PROTOCOLS, corruption_function

# The ReBias palette as printed in the reference notes (RGB, index = class).
REBIAS = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [225, 225, 0],
    [225, 0, 225],
    [0, 255, 255],
    [255, 128, 0],
    [255, 0, 128],
    [128, 0, 255],
    [128, 128, 128],
]


def _digits(counts: dict[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, y) for y, n in counts.items()]).astype(np.int64)
    rng.shuffle(labels)
    images = np.zeros((labels.size, 6, 6), np.uint8)
    images[:, 1:5, 2:4] = rng.integers(1, 256, size=(labels.size, 4, 2))
    images[:, 0, 0] = 1  # a faint pixel: still part of the digit after binarisation
    return images, labels


# ----------------------------------------------------------------------------- Biased-MNIST


def _other_counts(table_row: np.ndarray, y: int) -> list[int]:
    """The counts of the nine colours other than ``y``, largest first."""
    return sorted((int(table_row[c]) for c in range(10) if c != y), reverse=True)


def test_biased_mnist_counts_follow_the_chunk_rule():
    images, labels = _digits({0: 20, 3: 13, 7: 1, 9: 30})
    _, out_labels, bias = make_biased_mnist(images, labels, rho=0.5, seed=1)
    table = colour_counts(out_labels, bias)
    assert np.array_equal(out_labels, labels)
    # ReBias: int(n * rho) aligned, the other k in chunks of ceil(k / 9), one distinct other
    # colour per chunk (the colours are shuffled, so only the chunk sizes are fixed).
    # class 0: int(10.0) = 10 aligned; k = 10 -> five chunks of 2.
    assert table[0, 0] == 10 and _other_counts(table[0], 0) == [2, 2, 2, 2, 2, 0, 0, 0, 0]
    # class 3: int(6.5) = 6 aligned; k = 7 -> seven chunks of 1.
    assert table[3, 3] == 6 and _other_counts(table[3], 3) == [1] * 7 + [0, 0]
    # class 7: int(0.5) = 0 aligned; k = 1 -> one chunk of 1.
    assert table[7, 7] == 0 and _other_counts(table[7], 7) == [1] + [0] * 8
    # class 9: int(15.0) = 15 aligned; k = 15 -> chunks 2, 2, 2, 2, 2, 2, 2, 1 (the last smaller).
    assert table[9, 9] == 15 and _other_counts(table[9], 9) == [2] * 7 + [1, 0]
    # absent classes get no sample
    assert table[[1, 2, 4, 5, 6, 8]].sum() == 0


def test_biased_mnist_nine_conflicting_get_every_other_colour_once():
    # k = 9 conflicting -> chunks of ceil(9 / 9) = 1 -> each of the nine other colours once
    images, labels = _digits({y: 18 for y in range(10)})
    for seed in (0, 1, 2):
        _, _, bias = make_biased_mnist(images, labels, rho=0.5, seed=seed)  # int(9.0) = 9 aligned
        expected = np.ones((10, 10), np.int64) + 8 * np.eye(10, dtype=np.int64)
        assert np.array_equal(colour_counts(labels, bias), expected)
    # rho = 0.1 with 10 per class: int(1.0) = 1 aligned, the 9 others once each
    images, labels = _digits({y: 10 for y in range(10)})
    _, _, bias = make_biased_mnist(images, labels, rho=0.1, seed=4)
    assert np.array_equal(colour_counts(labels, bias), np.ones((10, 10), np.int64))


def test_biased_mnist_high_rho_counts():
    images, labels = _digits({y: 420 for y in range(10)})
    _, _, bias = make_biased_mnist(images, labels, rho=0.99, seed=0)
    table = colour_counts(labels, bias)
    offsets = []
    for y in range(10):
        # int(420 * .99) = int(415.8) = 415 aligned; k = 5 -> five chunks of 1
        assert table[y, y] == 415 and _other_counts(table[y], y) == [1] * 5 + [0] * 4
        offsets.append(frozenset(int((c - y) % 10) for c in np.flatnonzero(table[y]) if c != y))
    assert all(o <= set(range(1, 10)) and len(o) == 5 for o in offsets)
    # the other colours are shuffled per class: not always y+1..y+5, not the same for every class
    assert any(o != frozenset(range(1, 6)) for o in offsets)
    assert len(set(offsets)) > 1


def test_biased_mnist_first_chunk_colour_is_shuffled():
    # one sample per class at rho = 0.5: int(0.5) = 0 aligned, k = 1: the single sample
    # gets the first colour of the class's shuffled list of the nine other colours
    images, labels = _digits({y: 1 for y in range(10)})
    firsts = []
    for seed in range(4):
        _, _, bias = make_biased_mnist(images, labels, rho=0.5, seed=seed)
        offset = (bias - labels) % 10
        assert np.all((offset >= 1) & (offset <= 9))
        firsts.append(tuple(offset.tolist()))
        _, _, again = make_biased_mnist(images, labels, rho=0.5, seed=seed)
        assert np.array_equal(bias, again)  # deterministic for a seed
    assert any(f != (1,) * 10 for f in firsts)  # not always y+1
    assert any(len(set(f)) > 1 for f in firsts)  # differs across classes
    assert len(set(firsts)) > 1  # differs across seeds


def test_biased_mnist_colour_order_does_not_depend_on_other_classes():
    images, labels = _digits({3: 13})
    _, _, alone = make_biased_mnist(images, labels, rho=0.5, seed=5)
    images, labels_all = _digits({0: 20, 3: 13, 9: 30})
    _, _, together = make_biased_mnist(images, labels_all, rho=0.5, seed=5)
    assert np.array_equal(colour_counts(labels, alone)[3], colour_counts(labels_all, together)[3])


def test_biased_mnist_unshuffled_colours_only_change_the_colours():
    images, labels = _digits({0: 20, 3: 13, 7: 1, 9: 30})
    _, _, shuffled = make_biased_mnist(images, labels, rho=0.5, seed=1)
    _, _, ordered = make_biased_mnist(images, labels, rho=0.5, seed=1, shuffle_other_colours=False)
    # same samples aligned / conflicting, only the conflicting samples' colours may differ
    assert np.array_equal(shuffled == labels, ordered == labels)
    table = colour_counts(labels, ordered)
    # chunks in the order y+1, y+2, ...: class 0: k = 10, chunks of 2 -> colours 1..5 get 2
    assert table[0].tolist() == [10, 2, 2, 2, 2, 2, 0, 0, 0, 0]
    # class 3: k = 7, chunks of 1 -> colours 4, 5, 6, 7, 8, 9, 0
    assert table[3].tolist() == [1, 0, 0, 6, 1, 1, 1, 1, 1, 1]
    # class 7: the single sample gets colour 8
    assert table[7].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    # class 9: k = 15, chunks of 2 -> colours 0..6 get 2, colour 7 gets 1, colour 8 none
    assert table[9].tolist() == [2, 2, 2, 2, 2, 2, 2, 1, 0, 15]


def test_biased_mnist_pixels_binarised_and_coloured():
    images, labels = _digits({y: 3 for y in range(10)})
    rgb, _, bias = make_biased_mnist(images, labels, rho=0.1, seed=3)
    assert rgb.dtype == np.uint8 and rgb.shape == (30, 3, 6, 6)
    for i in range(30):
        fg = images[i] != 0
        assert np.all(rgb[i][:, fg] == 255)
        for c in range(3):
            assert np.all(rgb[i, c][~fg] == REBIAS[bias[i]][c])


def test_biased_mnist_palettes_and_extremes():
    images, labels = _digits({9: 5, 4: 5})
    rgb, _, bias = make_biased_mnist(images, labels, rho=1.0, seed=0, palette="iclr")
    assert np.array_equal(bias, labels)
    nine = np.flatnonzero(labels == 9)[0]
    assert rgb[nine, :, 0, 5].tolist() == [50, 255, 128]
    rgb, _, bias = make_biased_mnist(images, labels, rho=1.0, seed=0, palette="rebias")
    assert rgb[nine, :, 0, 5].tolist() == [128, 128, 128]
    _, _, bias = make_biased_mnist(images, labels, rho=0.0, seed=0)
    assert not np.any(bias == labels)


def test_biased_mnist_seed_changes_assignment_not_counts():
    images, labels = _digits({1: 40})
    _, _, a = make_biased_mnist(images, labels, rho=0.5, seed=0)
    _, _, b = make_biased_mnist(images, labels, rho=0.5, seed=0)
    _, _, c = make_biased_mnist(images, labels, rho=0.5, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # int(20.0) = 20 aligned; k = 20 -> chunks of ceil(20 / 9) = 3: six of 3, then one of 2
    for bias in (a, c):
        row = colour_counts(labels, bias)[1]
        assert row[1] == 20 and _other_counts(row, 1) == [3] * 6 + [2, 0, 0]


@pytest.mark.parametrize(
    "images, labels, rho, match",
    [
        (np.zeros((2, 28, 28), np.float32), np.array([0, 1]), 0.5, "uint8"),
        (np.zeros((2, 784), np.uint8), np.array([0, 1]), 0.5, r"\(n, H, W\)"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 10]), 0.5, r"\[0, 10\)"),
        (np.zeros((2, 28, 28), np.uint8), np.array([-1, 1]), 0.5, r"\[0, 10\)"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 1, 2]), 0.5, "labels must have shape"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 1]), 1.5, r"rho must lie in \[0, 1\]"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 1]), -0.1, r"rho must lie in \[0, 1\]"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 1]), float("nan"), r"rho must lie in \[0, 1\]"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0.5, 1.0]), 0.5, "integers"),
    ],
)
def test_biased_mnist_bad_input(images, labels, rho, match):
    with pytest.raises(ValueError, match=match):
        make_biased_mnist(images, labels, rho)


def test_unknown_palette():
    images, labels = _digits({0: 2})
    with pytest.raises(ValueError, match="palette"):
        make_biased_mnist(images, labels, 0.5, palette="pastel")


def test_split_per_class_sizes_and_disjoint():
    labels = np.repeat(np.arange(10), 12)
    parts = split_per_class(labels, {"train": 7, "val": 2, "test": 3}, seed=0)
    assert [parts[k].size for k in ("train", "val", "test")] == [70, 20, 30]
    assert np.bincount(labels[parts["val"]]).tolist() == [2] * 10
    union = np.concatenate(list(parts.values()))
    assert np.unique(union).size == union.size == 120
    with pytest.raises(ValueError, match="class 0 has 12 samples"):
        split_per_class(labels, {"train": 10, "val": 3})


def test_bundled_digits_are_real_mnist():
    images, labels = load_bundled_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    # real scans: anti-aliased strokes (intermediate grey levels), black borders
    assert np.unique(images).size > 200
    assert images[:, 0, :].max() == 0


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_roundtrip(tmp_path, compress):
    data = mnist_folder(tmp_path / "mnist", compress=compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_mnist_idx(tmp_path / "mnist", split)
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert np.array_equal(x, data[prefix][0]) and np.array_equal(y, data[prefix][1])


def test_idx_other_types(tmp_path):
    values = np.array([[1, -2, 300], [4, 5, -6]], dtype=np.int32)
    write_idx(tmp_path / "a.idx", values, 0x0C, False)
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype == np.int32 and np.array_equal(out, values)
    floats = np.array([0.5, -1.25], dtype=np.float64)
    write_idx(tmp_path / "b.idx", floats, 0x0E, True)
    assert np.array_equal(read_idx(tmp_path / "b.idx"), floats)


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 12)
    with pytest.raises(ValueError, match="bad-images-idx3-ubyte.*magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="short.*10 bytes"):
        read_idx(short)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_idx(tmp_path / "empty")
    folder = tmp_path / "labels"
    mnist_folder(folder)
    write_idx(folder / "train-labels-idx1-ubyte", np.full(12, 12, np.uint8), 0x08, False)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: labels must lie in \[0, 10\); found \[12\]") as err:
        load_mnist_idx(folder)
    assert "train-images" not in str(err.value)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), 0x08, False)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*11 labels for 12 images"):
        load_mnist_idx(folder)


def test_fashion_mnist_from_debian_layout(tmp_path):
    # dataset-fashion-mnist installs the four gzipped IDX files under one folder
    data = mnist_folder(tmp_path / "fashion-mnist", n_train=20, n_test=10, compress=True, seed=4)
    x, y = load_fashion_mnist("test", tmp_path / "fashion-mnist")
    assert np.array_equal(x, data["t10k"][0]) and np.array_equal(y, data["t10k"][1])
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "missing")


# ----------------------------------------------------------------------------- CIFAR


def _cifar_batch(path, n, label_key, n_classes, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, n_classes, size=n)]
    batch = {
        b"batch_label": b"fixture",
        label_key: labels,
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    return data, np.array(labels)


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [_cifar_batch(folder / f"data_batch_{i}", 4, b"labels", 10, i) for i in range(1, 6)]
    test = _cifar_batch(folder / "test_batch", 3, b"labels", 10, 9)
    x, y = load_cifar10(folder, "train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8
    # the row layout is 1024 red, 1024 green, 1024 blue values, each a 32 x 32 plane in row order
    first = parts[0][0][0]
    assert x[0, 1, 2, 3] == first[1024 + 2 * 32 + 3]
    assert np.array_equal(y, np.concatenate([p[1] for p in parts]))
    xt, yt = load_cifar10(folder, "test")
    assert np.array_equal(xt.reshape(3, -1), test[0]) and np.array_equal(yt, test[1])
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(folder, "train")


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    batch = {b"data": data, b"fine_labels": [0, 99, 5, 6, 7, 8], b"coarse_labels": [0, 19, 1, 1, 2, 2]}
    with open(folder / "train", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    x, fine = load_cifar100(folder, "train")
    _, coarse = load_cifar100(folder, "train", label="coarse")
    assert x.shape == (6, 3, 32, 32)
    assert fine.tolist() == [0, 99, 5, 6, 7, 8] and coarse.tolist() == [0, 19, 1, 1, 2, 2]
    with pytest.raises(FileNotFoundError, match="'test'"):
        load_cifar100(folder, "test")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_reader_refuses_foreign_pickles(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Payload(), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(ValueError, match="test_batch.*not allowed"):
        load_cifar10(folder, "test")
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch.*\(n, 3072\)"):
        load_cifar10(folder, "test")


# ----------------------------------------------------------------------------- DFA folders


def _dfa_tree(root):
    png(root / "1pct" / "align" / "0" / "00001_0_0.png", 10)
    png(root / "1pct" / "align" / "3" / "00002_3_3.png", 20)
    png(root / "1pct" / "conflict" / "3" / "00003_3_7.png", 30)
    png(root / "valid" / "5" / "00004_5_1.png", 40)
    png(root / "test" / "2" / "00005_2_2.png", 50)
    png(root / "test" / "2" / "00006_2_9.png", 60)


def test_dfa_reader(tmp_path):
    _dfa_tree(tmp_path / "cifar10c")
    train = read_dfa(tmp_path / "cifar10c", "train", "1pct")
    assert sorted(zip(train.labels.tolist(), train.bias.tolist(), strict=True)) == [(0, 0), (3, 3), (3, 7)]
    valid = read_dfa(tmp_path / "cifar10c", "valid", "1pct")
    assert (valid.labels.tolist(), valid.bias.tolist()) == ([5], [1])
    test = read_dfa(tmp_path / "cifar10c", "test", "1pct")
    images = load_images(test.paths)
    assert images.shape == (2, 3, 8, 8) and sorted(images[:, 0, 0, 0].tolist()) == [50, 60]
    assert load_images(test.paths, size=4).shape == (2, 3, 4, 4)
    assert parse_dfa_name("a_b_c/img_name_12_3.png") == (12, 3)


def test_dfa_bad_names_and_missing_folders(tmp_path):
    root = tmp_path / "cifar10c"
    _dfa_tree(root)
    with pytest.raises(FileNotFoundError, match="5pct"):
        read_dfa(root, "train", "5pct")
    png(root / "test" / "7" / "00010_7_0.png", 0)
    with pytest.raises(ValueError, match="00010_7_0.png: label 7 outside"):
        read_dfa(root, "test", "1pct", n_classes=5)
    png(root / "1pct" / "conflict" / "4" / "00009_four_1.png", 0)
    with pytest.raises(ValueError, match="00009_four_1.png"):
        read_dfa(root, "train", "1pct")


def test_bffhq_test_keeps_conflicting_only(tmp_path):
    root = tmp_path / "bffhq"
    png(root / "0.5pct" / "align" / "0" / "a_0_0.png", 1)
    png(root / "0.5pct" / "conflict" / "1" / "b_1_0.png", 2)
    png(root / "valid" / "c_0_1.png", 3)
    png(root / "test" / "d_0_0.png", 4)
    png(root / "test" / "e_1_0.png", 5)
    png(root / "test" / "f_0_1.png", 6)
    test = read_bffhq(root, "test")
    assert sorted(p.name for p in test.paths) == ["e_1_0.png", "f_0_1.png"]
    assert len(read_bffhq(root, "train")) == 2 and len(read_bffhq(root, "valid")) == 1


# ----------------------------------------------------------------------------- ImageNet 9


# ReBias (datasets/imagenet.py), in label order dog, cat, frog, turtle, bird, monkey, fish,
# crab, insect: the index ranges, and the indices kept of the ranges overlapping ImageNet-A.
REBIAS_RANGES = [(151, 254), (281, 285), (30, 32), (33, 37), (89, 97), (372, 378), (393, 397), (118, 121), (306, 310)]
REBIAS_KEPT = {0: [151, 207, 234, 235, 254], 4: [89, 90, 94, 96, 97], 5: [372, 373, 374, 375, 378]}
# ReBias's ImageNet-A CLASS_TO_INDEX, label -> WordNet ids.
REBIAS_IMAGENET_A = {
    0: ["n02085620", "n02099601", "n02106550", "n02106662", "n02110958"],
    1: ["n02123045", "n02123159", "n02123394", "n02123597", "n02124075"],
    2: ["n01641577", "n01644373", "n01644900"],
    3: ["n01664065", "n01665541", "n01667114", "n01667778", "n01669191"],
    4: ["n01819313", "n01820546", "n01833805", "n01843383", "n01847000"],
    5: ["n02486410", "n02487347", "n02488291", "n02488702", "n02492035"],
    6: ["n02607072", "n02640242", "n02641379", "n02643566", "n02655020"],
    7: ["n01978287", "n01978455", "n01980166", "n01981276"],
    8: ["n02174001", "n02177972", "n02190166", "n02206856", "n02219486"],
}


def _rebias_indices() -> dict[int, int]:
    """ImageNet index -> label by the ReBias rule, written out from the lists above."""
    out = {}
    for label, (lo, hi) in enumerate(REBIAS_RANGES):
        for index in REBIAS_KEPT.get(label, list(range(lo, hi + 1))):
            out[index] = label
    return out


def test_imagenet9_rebias_subset_rule(tmp_path):
    # an ImageNet training folder: 1,000 WordNet-id folders whose sorted order is the index
    wnids = [f"n{1000000 + 37 * i:08d}" for i in range(1000)]
    assert sorted(wnids) == wnids
    train = tmp_path / "imagenet" / "train"
    for wnid in wnids:
        (train / wnid).mkdir(parents=True)
    full_ranges = [i for lo, hi in REBIAS_RANGES for i in range(lo, hi + 1)]
    for index in full_ranges + [0, 29, 150, 255, 999]:
        png(train / wnids[index] / f"{wnids[index]}_1.JPEG", index % 256, size=4)
    order = imagenet_class_order(train)
    assert order == wnids
    expected = {wnids[i]: label for i, label in _rebias_indices().items()}
    assert len(expected) == 5 + 5 + 3 + 5 + 5 + 5 + 5 + 4 + 5 == 42
    assert imagenet9_map(order) == expected
    listing = read_imagenet9(train, order)
    got = sorted((p.parent.name, label) for p, label in zip(listing.paths, listing.labels.tolist(), strict=True))
    assert got == sorted(expected.items())
    assert listing.bias.tolist() == [-1] * 42
    # indices of the dog / bird / monkey ranges outside ReBias's subsets are dropped
    for dropped in (152, 206, 253, 91, 95, 376, 377):
        assert wnids[dropped] not in expected
    assert np.bincount(listing.labels, minlength=9).tolist() == [5, 5, 3, 5, 5, 5, 5, 4, 5]
    # the same order from a synset list, and a list that is not the 1,000 ids
    (tmp_path / "synsets.txt").write_text("\n".join(f"{w} some name" for w in wnids) + "\n")
    assert imagenet_class_order(tmp_path / "synsets.txt") == wnids
    (tmp_path / "short.txt").write_text("n00000001\n")
    with pytest.raises(ValueError, match="short.txt.*1,000"):
        imagenet_class_order(tmp_path / "short.txt")


def test_imagenet_a_fixed_map_needs_no_class_order(tmp_path):
    from brainage.debias.data import IMAGENET_A_CLASS_TO_INDEX

    table = {wnid: label for label, ids in REBIAS_IMAGENET_A.items() for wnid in ids}
    assert IMAGENET_A_CLASS_TO_INDEX == table and len(table) == 42
    # ImageNet order is the sorted WordNet ids, so sorting the 42 ids must give the labels in
    # the order of the 42 sorted indices of the rule
    by_index = _rebias_indices()
    assert [table[w] for w in sorted(table)] == [by_index[i] for i in sorted(by_index)]

    root = tmp_path / "imagenet-a"
    folders = {
        "n02085620": 0,
        "n02124075": 1,
        "n01644900": 2,
        "n01669191": 3,
        "n01847000": 4,
        "n02492035": 5,
        "n02655020": 6,
        "n01981276": 7,
        "n02219486": 8,
        "n01498041": None,  # stingray: not one of the nine super-classes
        "n02088094": None,
    }  # Afghan hound: in the dog range, not in ReBias's subset
    for wnid in folders:
        png(root / wnid / f"{wnid}_a.jpg", 1, size=4)
        png(root / wnid / f"{wnid}_b.jpg", 2, size=4)
    listing = read_imagenet9(root)
    got = sorted((p.parent.name, label) for p, label in zip(listing.paths, listing.labels.tolist(), strict=True))
    assert got == sorted((w, y) for w, y in folders.items() if y is not None for _ in range(2))
    assert len(listing) == 18 and listing.bias.tolist() == [-1] * 18
    with pytest.raises(FileNotFoundError, match="42 9-class"):
        read_imagenet9(tmp_path / "imagenet-a" / "n01498041")


# ----------------------------------------------------------------------------- corrupted


def test_lff_assignment_by_hand():
    labels = np.repeat(np.arange(10), 90)
    bias = assign_corruptions(labels, aligned_ratio=0.1, seed=0)
    # unbiased: each class spreads evenly, 9 per corruption
    assert np.all(colour_counts(labels, bias) == 9)
    labels = np.zeros(100, np.int64)
    bias = assign_corruptions(labels, aligned_ratio=0.95, seed=0)
    # cumulative shares 0.95, 0.95 + j * 0.05 / 9 rounded: 95, 96, 96, 97, 97, 98, 98, 99, 99, 100
    assert np.bincount(bias, minlength=10).tolist() == [95, 1, 0, 1, 0, 1, 0, 1, 0, 1]


def test_corruptions_apply_and_identity():
    rng = np.random.default_rng(0)
    images = rng.integers(40, 200, size=(3, 3, 32, 32), dtype=np.uint8)
    out = corrupt_images(images, np.array([9, 9, 0]), protocol="type1", severity=3)
    assert np.array_equal(out[:2], images[:2])  # type1 index 9 = the original image
    assert not np.array_equal(out[2], images[2])  # gaussian noise
    brighter = corrupt_images(images, np.array([3, 3, 3]), protocol="type0", severity=5)
    assert brighter.astype(float).mean() > images.astype(float).mean() + 10
    for name in ("glass_blur", "gaussian_blur", "frost"):  # need the compatibility bridges
        assert corruption_function(name, 2)(images[0].transpose(1, 2, 0)).shape == (32, 32, 3)
    assert PROTOCOLS["type0"][6] == "elastic_transform"
    with pytest.raises(ValueError, match="at least 32x32"):
        corrupt_images(images[:, :, :28, :28], np.zeros(3, np.int64))


def test_corrupted_digits_roundtrip_through_dfa_layout(tmp_path):
    images, labels = _digits({y: 4 for y in range(10)})
    padded = to_rgb32(np.pad(images, ((0, 0), (11, 11), (11, 11))))
    assert padded.shape == (40, 3, 32, 32) and padded[:, :, :2].max() == 0
    x, y, b = make_corrupted(padded, labels, conflict_pct=50.0, protocol="type1", severity=1, seed=0)
    write_dfa_split(tmp_path / "digits" / "50pct", x, y, b, by_alignment=True)
    listing = read_dfa(tmp_path / "digits", "train", "50pct")
    assert sorted(zip(listing.labels, listing.bias, strict=True)) == sorted(zip(y.tolist(), b.tolist(), strict=True))
    conflict = [p for p in listing.paths if p.parent.parent.name == "conflict"]
    assert len(conflict) == int(np.sum(y != b))
    first = next(i for i, p in enumerate(listing.paths) if p.name.startswith("000000_"))
    assert np.array_equal(load_images([listing.paths[first]])[0], x[0])


def test_array_set_roundtrip_and_errors(tmp_path):
    data = ArraySet(np.zeros((2, 3, 4, 4), np.uint8), np.array([0, 1]), np.array([1, -1]))
    save_array_set(tmp_path / "a.npz", data)
    back = load_array_set(tmp_path / "a.npz")
    assert np.array_equal(back.bias, [1, -1]) and back.n_conflicting == 1
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 4, 4), np.uint8), labels=[0, 1], bias=[0, 1])
    with pytest.raises(ValueError, match="b.npz.*uint8 \\(n, C, H, W\\)"):
        load_array_set(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", images=np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="c.npz.*missing arrays"):
        load_array_set(tmp_path / "c.npz")
