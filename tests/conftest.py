"""Fixtures shared by the test modules; the helpers they use are in helpers.py."""

from __future__ import annotations

import pytest

from helpers import write_openbhb


@pytest.fixture(scope="session")
def openbhb_dir(tmp_path_factory):
    """A read-only tiny OpenBHB folder in both layouts (copy it before corrupting it)."""
    root = tmp_path_factory.mktemp("openbhb")
    truth = write_openbhb(root, ramp=True)
    return root, truth


@pytest.fixture(scope="session")
def inference_run(tmp_path_factory):
    """A simulated data set (VBM grid / 4), its cache, a short L^exp run, a 1-epoch L1 run, the exp bundle.

    Shared by the export and predict tests (about 20 s on 2 cores).
    """
    from brainage.data.preprocess import preprocess
    from brainage.data.simulate import simulate_openbhb
    from brainage.inference import export_bundle
    from brainage.training import TrainConfig, train

    root = tmp_path_factory.mktemp("inference")
    simulate_openbhb(root / "data", n_subjects=100, downsample=4, seed=2, n_sites=4, modalities="vbm",
                     internal_fraction=0.25, n_jobs=2, progress=False)
    preprocess(root / "data", root / "cache", progress=False)
    short = dict(batch_size=16, width=0.125, lr=1e-3, schedule="cosine", device="cpu", progress=False, num_threads=1)
    train(TrainConfig(method="exp", epochs=4, **short), root / "cache", root / "run")
    train(TrainConfig(method="l1", epochs=1, **short), root / "cache", root / "run_l1")
    export_bundle(root / "run", root / "bundle", progress=False)
    return root
