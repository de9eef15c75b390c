"""What only CUDA runs: bf16 autocast training, channels_last_3d, the device-resident volume
store, the CUDA RNG state in checkpoints, bf16 feature extraction, and a step loop without host
synchronisation. Skipped without a GPU; ``python benchmarks/gpu_check.py`` runs them and reports
each. Needs torch, monai, numpy and pandas only (no conftest fixtures: run it with ``--noconftest`` where
the imaging stack is missing)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from helpers import tiny, write_cache

from brainage.training import TrainConfig, extract_features, train
from brainage.training.checkpoint import CHECKPOINT_FORMAT, build_model, load_file, save_file
from brainage.training.data import VolumeStore
from brainage.training.trainer import (
    autocast_context,
    contrastive_loss,
    make_criterion,
    regression_loss,
    use_channels_last,
)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GRID = (32, 32, 32)  # the deepest feature maps keep 2 x 2 x 2 voxels, so BatchNorm has data to normalise


def on_cuda(method: str, **kw):
    return tiny(method, device="cuda", **kw)


def epoch_losses(run) -> list[float]:
    return [float(line.split(",")[2]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]


def finite_weights(path) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in torch.load(path, weights_only=True)["model"].values()
        if t.is_floating_point()
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cache"), n=(48, 8, 6), grid=GRID)


def test_bf16_autocast_training_is_finite_and_close_to_fp32(cache, tmp_path):
    """precision auto = bf16 autocast on CUDA. On the same weights and batch, the bf16 loss is
    within 0.05 of the fp32 one for L1 (of ~1) and L^exp (of ~0.3): bf16 keeps 8 significant
    bits (relative rounding 2^-9) and a forward pass of a few dozen such roundings moves the
    outputs by about 1 % (0.010 and 0.012 measured with CPU bf16 autocast). Training then runs
    a few epochs with finite losses and weights. (Whole runs are not compared: a 0.4 % change of
    the initial weights already moves an epoch's mean loss by up to 0.08.)"""
    volumes = torch.from_numpy(np.load(cache / "train.npy")[:8]).float().unsqueeze(1).cuda()
    ages = torch.linspace(10, 80, 8, device="cuda")
    for method in ("l1", "exp"):
        config = on_cuda(method)
        torch.manual_seed(0)
        model = build_model(config).cuda().train()
        losses = []
        for precision in ("bf16", "fp32"):
            with autocast_context(TrainConfig(**{**config.to_dict(), "precision": precision}), torch.device("cuda")):
                if method == "l1":
                    loss, _ = regression_loss(model, volumes, (ages - 45) / 20)
                else:
                    loss = contrastive_loss(model, volumes, ages, make_criterion(config), views=2)
            losses.append(float(loss.detach()))
        assert abs(losses[0] - losses[1]) < 0.05, (method, losses)
    for method, epochs in (("l1", 1), ("exp", 2)):
        run = train(on_cuda(method, epochs=epochs), cache, tmp_path / method)
        assert all(math.isfinite(v) for v in epoch_losses(tmp_path / method)) and finite_weights(run)


def test_channels_last_3d_matches_the_default_layout(cache):
    """The same weights and batch through channels_last_3d and through the contiguous layout (fp32,
    TF32 off) give the float64 loss and gradients to float32 accuracy. This network's float32
    gradients are ~2e-5 (about 2^9 u) from float64 on the CPU; 2^-10 leaves cuDNN's algorithms a
    factor 50, while a wrong layout would be off by O(1)."""
    config = on_cuda("exp", precision="fp32")
    assert use_channels_last(config, torch.device("cuda"))  # on by default on CUDA
    volumes = torch.from_numpy(np.load(cache / "train.npy")[:8]).unsqueeze(1)
    ages = torch.linspace(10, 80, 8, device="cuda")
    criterion = make_criterion(config)

    def loss_and_grad(dtype, channels_last):
        torch.manual_seed(0)
        model = build_model(config).to("cuda", dtype).train()
        x = volumes.to("cuda", dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            assert model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
        loss = contrastive_loss(model, x, ages.to(dtype), criterion, views=2)
        loss.backward()
        return loss.detach().double(), torch.cat([p.grad.flatten() for p in model.parameters()]).double()

    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        loss64, grad64 = loss_and_grad(torch.float64, False)
        for channels_last in (False, True):
            loss, grad = loss_and_grad(torch.float32, channels_last)
            assert float((loss - loss64).abs() / loss64.abs()) < 2.0**-10, channels_last
            assert float((grad - grad64).norm() / grad64.norm()) < 2.0**-10, channels_last
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def test_device_resident_store(tmp_path):
    """The split copied once to the GPU (float16), indexed there by indices on either device; the
    streaming store (pinned memory, non-blocking copy) returns the same batch; NaN rows are named."""
    cache = write_cache(tmp_path / "cache", grid=GRID)
    volumes = np.load(cache / "train.npy", mmap_mode="r")
    resident = VolumeStore(volumes, "cuda", resident=None, name="train")
    streaming = VolumeStore(volumes, "cuda", resident=False, name="train")
    assert resident.resident and resident.data.device.type == "cuda" and resident.data.dtype == torch.float16
    index = torch.tensor([5, 0, 17, 3])
    expected = torch.from_numpy(np.asarray(volumes[[5, 0, 17, 3]], dtype=np.float32)).unsqueeze(1)
    for batch in (resident.batch(index.cuda()), resident.batch(index), streaming.batch(index)):
        assert batch.device.type == "cuda" and batch.shape == (4, 1, *GRID)
        assert torch.equal(batch.cpu(), expected)
    bad = write_cache(tmp_path / "bad", grid=GRID, nan_row=7)
    bad_volumes = np.load(bad / "train.npy", mmap_mode="r")
    with pytest.raises(ValueError, match=r"row\(s\) \[7\]"):
        VolumeStore(bad_volumes, "cuda", resident=True, name="train")
    with pytest.raises(ValueError, match=r"row\(s\) \[7\]"):
        VolumeStore(bad_volumes, "cuda", resident=False, name="train").batch([2, 7])
    run = train(on_cuda("l1", epochs=1, data_on_device="off"), cache, tmp_path / "streamed")
    assert finite_weights(run)


def test_cuda_rng_state_is_checkpointed_and_restored(cache, tmp_path):
    """The checkpoint holds the CUDA generator's state; a resumed run on the GPU restores it
    (training draws nothing from it, so the state a run ends with is the one it resumed from)."""
    out = tmp_path / "run"
    train(on_cuda("exp", epochs=2), cache, out, stop_after=1)
    payload = load_file(out / "checkpoint.pt", CHECKPOINT_FORMAT)
    assert payload["rng"]["cuda"].dtype == torch.uint8
    torch.cuda.manual_seed(12345)
    planted = torch.cuda.get_rng_state()
    assert not torch.equal(planted, payload["rng"]["cuda"])
    payload["rng"]["cuda"] = planted
    save_file(out / "checkpoint.pt", payload)
    torch.cuda.manual_seed(999)
    model = train(on_cuda("exp", epochs=2), cache, out)
    assert torch.equal(torch.cuda.get_rng_state(), planted)
    assert torch.equal(load_file(out / "checkpoint.pt", CHECKPOINT_FORMAT)["rng"]["cuda"], planted)
    assert len(epoch_losses(out)) == 2 and finite_weights(model)


def test_bf16_feature_extraction_close_to_fp32(cache, tmp_path):
    """As on the CPU (tests/test_training.py): bf16 rows within 5 % of fp32 (8 significant bits,
    a few dozen roundings), entries within 0.02."""
    run = tmp_path / "run"
    train(on_cuda("exp", epochs=1), cache, run)
    with np.load(extract_features(run, cache, tmp_path / "f32", device="cuda")["train"]) as f:
        fp32 = f["features"]
    with np.load(extract_features(run, cache, tmp_path / "bf16", device="cuda", precision="bf16")["train"]) as f:
        bf16 = f["features"]
    row_error = np.linalg.norm(bf16 - fp32, axis=1) / np.linalg.norm(fp32, axis=1)
    assert 0 < row_error.max() < 0.05, row_error.max()
    np.testing.assert_allclose(bf16, fp32, atol=0.02)


def _synchronisations(cache, out, **kw) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(on_cuda("exp", epochs=1, **kw), cache, out)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_step_loop_does_not_synchronise_per_step(tmp_path):
    """The host waits for the GPU a fixed number of times per run (set-up, the epoch's end, the
    checkpoint) and once per 20 steps (the divergence check), not once per step: 4 times as
    many steps add at most 2 synchronisations (the check after step 20 and its collective)."""
    few = write_cache(tmp_path / "few", n=(48, 8, 6), grid=GRID)  # 6 steps of 8
    many = write_cache(tmp_path / "many", n=(192, 8, 6), grid=GRID)  # 24 steps of 8
    _synchronisations(few, tmp_path / "warm-up")
    n_few = _synchronisations(few, tmp_path / "few-run")
    n_many = _synchronisations(many, tmp_path / "many-run")
    assert n_many - n_few <= 2, (n_few, n_many)
