"""Training subcommands: ``train`` (one network; its flags are generated from TrainConfig), ``features``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brainage.cli._common import positive_int


def _config_flag_type(name: str, annotation):
    """argparse keywords of the flag of the TrainConfig field ``name``, from its type annotation."""
    import json

    def optional_int(text: str):
        return None if text.lower() in ("none", "null") else int(text)

    def json_list(text: str):
        value = json.loads(text)
        if not isinstance(value, list):
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} expects a JSON list")
        return value

    if annotation in (int, float, str):
        return {"type": annotation}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if str(annotation).startswith(("int | None", "typing.Optional[int]")):
        return {"type": optional_int}
    return {"type": json_list}


def _register_train(sub: argparse._SubParsersAction) -> None:
    from brainage.training.config import CHOICES, TrainConfig

    p = sub.add_parser(
        "train",
        help="train one brain-age network (contrastive or L1) on a cache; resumable",
        description="Train the 3D ResNet-18 with a kernel contrastive loss (yaware, thr, exp) or the L1 "
        "baseline (l1; combat_l1 on a harmonised cache). Options come from the defaults (the paper's recipe), "
        "then --config FILE.yaml, then the flags below. Running the same command again resumes from "
        "OUT/checkpoint.pt. Under torchrun, every process runs this command (DistributedDataParallel).",
    )
    p.add_argument("--cache", required=True, type=Path, help="training cache folder (its train split is used)")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.pt, metrics.csv, model.pt")
    p.add_argument(
        "--config", type=Path, help="YAML mapping of TrainConfig options (or a workflow config with a train: section)"
    )
    p.add_argument(
        "--restart-on-mismatch",
        action="store_true",
        help="set aside a checkpoint of other options or another cache and start afresh (default: error)",
    )
    types = TrainConfig.field_types()
    for name in TrainConfig.field_names():
        flag = "--" + name.replace("_", "-")
        kwargs = _config_flag_type(name, types[name])
        if name in CHOICES:
            kwargs["choices"] = list(CHOICES[name])
        elif "type" in kwargs:
            kwargs["metavar"] = name.upper()
        p.add_argument(
            flag, dest=f"opt_{name}", default=None, help=f"see TrainConfig.{name} (docs/training.md)", **kwargs
        )
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from brainage.training.config import TrainConfig, load_config_file

    values = load_config_file(args.config) if args.config else {}
    values.update({k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None})
    config = TrainConfig.from_dict(values)

    from brainage.training.distributed import cleanup, init_from_env
    from brainage.training.trainer import train

    ctx = init_from_env()
    try:
        path = train(config, args.cache, args.out, ctx, restart_on_mismatch=args.restart_on_mismatch)
    finally:
        cleanup(ctx)
    if ctx.is_main:
        logging.getLogger("brainage").info("%s: %s", config.method, path)
    return 0


def _register_features(sub: argparse._SubParsersAction) -> None:
    from brainage.models.names import FEATURE_KINDS

    p = sub.add_parser(
        "features",
        help="frozen features of a trained run for every cache split -> <split>.npz",
        description="Encode every split of a cache with a trained model: OUT/<split>.npz with features (n, p) "
        "float32, age (n,) years, site (n,), participant_id (n,) and, for L1 models, prediction (n,) years. "
        "L1 models give the pooled embedding; contrastive models the run's configured kind.",
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (model.pt) or a model file")
    p.add_argument("--cache", required=True, type=Path, help="cache whose splits are encoded")
    p.add_argument("--out", required=True, type=Path, help="folder for the .npz files")
    p.add_argument("--kind", choices=list(FEATURE_KINDS), help="contrastive models only; default: the run's")
    p.add_argument("--device", help="default: the run's device option")
    p.add_argument(
        "--batch-size", type=positive_int, help="subjects per forward pass (default: the run's eval_batch_size)"
    )
    p.add_argument("--num-threads", type=positive_int, help="CPU threads of torch")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="fp32 (default) or bf16 autocast for the forward passes",
    )
    p.set_defaults(func=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    import torch

    from brainage.training import extract_features

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    written = extract_features(
        args.run,
        args.cache,
        args.out,
        kind=args.kind,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
    )
    logging.getLogger("brainage").info("features: %s", ", ".join(str(p) for p in written.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``sub``, in the order ``brainage --help`` lists them."""
    _register_train(sub)
    _register_features(sub)
