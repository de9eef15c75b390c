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

    Shared by the export and predict tests (about 25 s on 2 cores). Five sites put the lifespan site
    in training (ages 6 to 86; with four it is the external one and training ages span 8 to 30),
    and 10 epochs of 8 subjects give predictions that follow age on every seed tried (internal
    slope 0.24 to 0.44 over seeds 0-3; 4 epochs of 16 gave 0.00 to 0.27), which the age-bias
    calibration needs.
    """
    from brainage.data.preprocess import preprocess
    from brainage.data.simulate import simulate_openbhb
    from brainage.inference import export_bundle
    from brainage.training import TrainConfig, train

    root = tmp_path_factory.mktemp("inference")
    simulate_openbhb(
        root / "data",
        n_subjects=100,
        downsample=4,
        seed=7,
        n_sites=5,
        modalities="vbm",
        internal_fraction=0.25,
        n_jobs=2,
        progress=False,
    )
    preprocess(root / "data", root / "cache", progress=False)
    short = dict(batch_size=8, width=0.125, lr=2e-3, schedule="cosine", device="cpu", progress=False, num_threads=1)
    train(TrainConfig(method="exp", epochs=10, **short), root / "cache", root / "run")
    train(TrainConfig(method="l1", epochs=1, **short), root / "cache", root / "run_l1")
    export_bundle(root / "run", root / "bundle", progress=False)
    return root
