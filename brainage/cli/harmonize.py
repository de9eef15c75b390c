"""``harmonize``: a training cache -> its ComBat-harmonised cache (docs/harmonization.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _register_harmonize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "harmonize",
        help="training cache -> ComBat-harmonised cache (fitted on train with sex and age protected; "
        "age-free transform)",
        description="Fit ComBat (neuroHarmonize) on the training split of a cache, chunked over "
        "voxels, with sex and the training ages protected, and write a harmonised cache in the same "
        "format plus model.npz. Every split, train included, goes through one age-free transform "
        "(--adjust) that needs only the site label; external (unseen) sites follow --external.",
    )
    p.add_argument("--cache", required=True, type=Path, help="training cache folder (brainage preprocess)")
    p.add_argument("--out", required=True, type=Path, help="harmonised cache folder to write")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="voxels per ComBat chunk; EB priors are estimated per chunk (default 20000)",
    )
    p.add_argument(
        "--external",
        default="none",
        choices=["none", "transductive"],
        help="external sites: none = left unharmonised (default, what a challenge submission "
        "could do); transductive = estimated from the external subjects as a group (not "
        "challenge-compliant)",
    )
    p.add_argument(
        "--adjust",
        default="location",
        help="age-free transform: location = x - sigma*gamma_site (default); location-scale = "
        "(x - m_site - sigma*gamma_site)/sqrt(delta_site) + m_site (docs/harmonization.md)",
    )
    p.add_argument(
        "--age-degree",
        type=int,
        default=2,
        choices=[0, 1, 2, 3],
        help="polynomial degree of the standardised training ages protected at fit time (default 2; "
        "0 = age not modelled)",
    )
    p.add_argument("--no-eb", action="store_true", help="no empirical-Bayes shrinkage of the site effects")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_harmonize)


def _run_harmonize(args: argparse.Namespace) -> int:
    from brainage.harmonize import DEFAULT_CHUNK_SIZE, harmonize_cache

    meta = harmonize_cache(
        args.cache,
        args.out,
        chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
        external=args.external,
        eb=not args.no_eb,
        age_degree=args.age_degree,
        adjust=args.adjust,
        progress=not args.quiet,
    )
    info = meta["harmonization"]
    logging.getLogger("brainage").info(
        "harmonised cache %s: %d training subjects, %d sites, %d chunks, external strategy %r",
        args.out,
        info["n_fit_subjects"],
        len(info["sites"]),
        info["n_chunks"],
        info["external_strategy"],
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``sub``, in the order ``brainage --help`` lists them."""
    _register_harmonize(sub)
