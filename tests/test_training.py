"""Training: config validation, identical-view shortcut, determinism, checkpoints, features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import EPS32, REPO, ROUNDING_MARGIN, network_rounding, tiny, write_cache

from brainage.io import temporary_affixes
from brainage.losses import KernelizedContrastiveLoss
from brainage.models import BrainAgeNet
from brainage.training import CheckpointError, TrainConfig, extract_features, load_config_file, load_model, train
from brainage.training.checkpoint import build_model
from brainage.training.data import build_augmentation, make_views
from brainage.training.trainer import contrastive_loss


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cache"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


# ----------------------------------------------------------------------------- config


def test_config_rejects_unknown_names_and_lists_valid_ones():
    with pytest.raises(
        ValueError, match="unknown method 'expo'.*did you mean 'exp'.*'l1', 'combat_l1', 'yaware', 'thr', 'exp'"
    ):
        TrainConfig(method="expo")
    with pytest.raises(ValueError, match="unknown kernel 'gauss'.*'rbf', 'gaussian', 'cauchy'"):
        TrainConfig(method="exp", kernel="gauss")
    with pytest.raises(ValueError, match="unknown formulation"):
        TrainConfig(method="exp", formulation="ref")
    with pytest.raises(ValueError, match="unknown training option.*'lr_rate'.*valid options are: method, seed"):
        TrainConfig.from_dict({"method": "l1", "lr_rate": 0.1})
    with pytest.raises(ValueError, match="needs a method"):
        TrainConfig.from_dict({"lr": 0.1})
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(method="l1", batch_size=0)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        TrainConfig(method="l1", device="gpu")
    assert TrainConfig.from_dict({"method": "thr", "lr": 1}).lr == 1.0


def test_config_file_reads_workflow_train_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: x\ntrain:\n  methods: [l1]\n  seeds: [0]\n  threads: 1\n  epochs: 7\n  width: 0.25\n")
    values = load_config_file(path)
    assert values == {"epochs": 7, "width": 0.25}
    assert TrainConfig.from_dict({"method": "l1", **values}).epochs == 7


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(cache, tmp_path):
    with pytest.raises(ValueError, match="'cuda' requested but CUDA is not available"):
        train(tiny("l1", device="cuda"), cache, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_split(cache, tmp_path):
    with pytest.raises(ValueError, match="batch_size 64 is larger than the training split"):
        train(tiny("l1", batch_size=64), cache, tmp_path / "run")


def test_nan_volume_named(tmp_path):
    bad = write_cache(tmp_path / "bad", nan_row=5)
    with pytest.raises(ValueError, match=r"non-finite voxel values.*row\(s\) \[5\]"):
        train(tiny("l1"), bad, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_unknown_augmentation():
    with pytest.raises(
        ValueError,
        match=r"augmentations\[0\]: 'RandFlipd' is not an allowed augmentation \(did you "
        r"mean 'RandFlip'\?\)",
    ):
        build_augmentation([{"name": "RandFlipd", "keys": ["x"]}])
    with pytest.raises(ValueError, match=r"augmentations\[1\]: 'RandFlp' is not an allowed augmentation.*RandFlip"):
        build_augmentation([{"name": "RandFlip"}, {"name": "RandFlp"}])
    with pytest.raises(ValueError, match=r"augmentations\[0\] \(RandFlip\): unknown argument\(s\) \['axis'\]"):
        build_augmentation([{"name": "RandFlip", "axis": 0}])


# ----------------------------------------------------------------------------- identical views


def test_one_forward_equals_stacked_views_with_batchnorm():
    """Running the network once and repeating equals running it on the V stacked copies.

    In float64, so that agreement to 1e-10 shows an identity rather than rounding luck.
    """
    torch.manual_seed(0)
    b, v = 6, 2
    x = torch.randn(b, 1, 16, 16, 16, dtype=torch.float64)
    ages = torch.tensor([10.0, 12.0, 30.0, 31.0, 60.0, 75.0], dtype=torch.float64)
    criterion = KernelizedContrastiveLoss(method="exp", formulation="reference")
    net_a = BrainAgeNet(0.125).double().train()
    net_b = BrainAgeNet(0.125).double().train()
    net_b.load_state_dict(net_a.state_dict())

    loss_a = contrastive_loss(net_a, x, ages, criterion, views=v, augment=None)
    loss_a.backward()
    z = net_b(torch.cat([x] * v)).view(v, b, -1).transpose(0, 1)
    loss_b = criterion(z, ages)
    loss_b.backward()

    assert loss_a.dtype == torch.float64
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-12, atol=0)
    grads_a = dict(net_a.named_parameters())
    # one absolute scale: biases followed by BatchNorm have an exactly zero gradient (rounding noise).
    # The two graphs sum in other orders; the longest sum, the stem's weight gradient over the
    # V * B * 8^3 = 6,144 output voxels, rounds by <= 6,144 * 2^-53 ~ 7e-13 of the gradient scale, and
    # the backward chains some 20 such layers: 1e-11 * scale.
    scale = max(float(p.grad.abs().max()) for p in net_b.parameters())
    for name, p in net_b.named_parameters():
        torch.testing.assert_close(grads_a[name].grad, p.grad, rtol=0, atol=1e-11 * scale, msg=name)
    # BatchNorm: same running mean; running variance from the unbiased estimate over n rows,
    # n = B for the shortcut and V*B for the stacked copies (momentum 0.1, initial variance 1).
    bn_a, bn_b = net_a.encoder.bn1, net_b.encoder.bn1
    torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean, rtol=1e-12, atol=1e-14)
    n_a, n_b = b * 16**3 // 8, v * b * 16**3 // 8  # the stem halves each axis: 8^3 voxels per volume
    ratio = (bn_a.running_var - 0.9) / (bn_b.running_var - 0.9)
    expected = (n_a / (n_a - 1)) / (n_b / (n_b - 1))
    torch.testing.assert_close(ratio, torch.full_like(ratio, expected), rtol=1e-9, atol=0)


def test_augmented_views_differ():
    augment = build_augmentation([{"name": "RandGaussianNoise", "prob": 1.0, "std": 0.5, "sample_std": False}])
    augment.set_random_state(seed=0)
    x = torch.zeros(3, 1, 8, 8, 8)
    stacked = make_views(x, 2, augment)
    assert stacked.shape == (6, 1, 8, 8, 8)
    assert not torch.equal(stacked[:3], stacked[3:])
    assert 0.45 < float(stacked.std()) < 0.55


# ----------------------------------------------------------------------------- training


def test_deterministic_on_cpu(cache, tmp_path):
    a = train(tiny("yaware"), cache, tmp_path / "a")
    b = train(tiny("yaware"), cache, tmp_path / "b")
    c = train(tiny("yaware", seed=1), cache, tmp_path / "c")
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    rows = (tmp_path / "a" / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "epoch,lr,loss,train_mae,seconds,samples_per_s" and len(rows) == 3


def test_in_process_resume_matches(cache, tmp_path):
    full = train(tiny("thr", epochs=3), cache, tmp_path / "full")
    part = train(tiny("thr", epochs=3), cache, tmp_path / "part", stop_after=1)
    assert part.name == "checkpoint.pt" and not (tmp_path / "part" / "model.pt").exists()
    prefix, suffix = temporary_affixes(tmp_path / "part" / "checkpoint.pt")
    leftover = tmp_path / "part" / f"{prefix}k1ll3d{suffix}"  # what a kill during a write leaves
    leftover.write_bytes(b"partial")
    resumed = train(tiny("thr", epochs=3), cache, tmp_path / "part")
    assert not leftover.exists()
    wf, wr = weights(full), weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_rerun_after_a_workflow_removed_the_outputs_of_a_finished_checkpoint(cache, tmp_path):
    """Snakemake deletes the declared outputs (model.pt, metrics.csv) of a job killed after its last
    checkpoint; the rerun resumes at the last epoch, trains nothing and must write both again."""
    run = tmp_path / "run"
    train(tiny("thr", epochs=2), cache, run)
    metrics, model = (run / "metrics.csv").read_text(), weights(run / "model.pt")
    (run / "metrics.csv").unlink()
    (run / "model.pt").unlink()
    train(tiny("thr", epochs=2), cache, run)
    assert (run / "metrics.csv").read_text() == metrics
    again = weights(run / "model.pt")
    assert all(torch.equal(model[k], again[k]) for k in model)


def test_step_schedule_and_l1_learns(cache, tmp_path):
    cfg = tiny("l1", epochs=12, lr=3e-3, step_size=4, step_gamma=0.5, batch_size=6)
    train(cfg, cache, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()[1:]
    lrs = [float(line.split(",")[1]) for line in lines]
    assert lrs == pytest.approx([3e-3] * 4 + [1.5e-3] * 4 + [7.5e-4] * 4)
    maes = [float(line.split(",")[3]) for line in lines]
    ages = np.array([float(r.split("\t")[2]) for r in (cache / "train.tsv").read_text().splitlines()[1:]])
    assert maes[-1] < 0.8 * np.abs(ages - ages.mean()).mean()  # better than predicting the mean age


# ----------------------------------------------------------------------------- checkpoints


def test_corrupted_checkpoint(cache, tmp_path):
    out = tmp_path / "run"
    train(tiny("l1", epochs=1), cache, out)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: cannot be read as a brainage"):
        train(tiny("l1", epochs=2), cache, out)
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: cannot be read"):
        train(tiny("l1", epochs=2), cache, out)


def test_mismatched_checkpoint(cache, tmp_path):
    out = tmp_path / "run"
    train(tiny("exp", epochs=1), cache, out)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint\.pt: was written by a run with other options \(method: "
        r"checkpoint 'exp' vs now 'thr'",
    ):
        train(tiny("thr", epochs=1), cache, out)
    # same preprocessing signature, other data (a rebuilt cache): caught by the fingerprint
    other = write_cache(tmp_path / "other", seed=3)
    with pytest.raises(CheckpointError, match="was trained on another cache"):
        train(tiny("exp", epochs=1), other, out)
    # workflows: set the stale checkpoint aside and retrain
    train(tiny("exp", epochs=1), other, out, restart_on_mismatch=True)
    assert (out / "checkpoint.pt.stale").is_file()
    assert torch.load(out / "model.pt", weights_only=True)["cache"]["path"] == str(other.resolve())
    # weights of another width under this run's config
    payload = torch.load(out / "model.pt", weights_only=True)
    payload["model"] = BrainAgeNet(0.25).state_dict()
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: weights do not match the network: .*shape mismatch"):
        load_model(tmp_path / "bad.pt")
    torch.save({"format": "something-else", "version": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign\.pt: expected a 'brainage-model' file"):
        load_model(tmp_path / "foreign.pt")


# ----------------------------------------------------------------------------- features


def test_features_files(cache, tmp_path):
    run_l1 = tmp_path / "l1"
    train(tiny("l1", epochs=1), cache, run_l1)
    written = extract_features(run_l1, cache, tmp_path / "f_l1")
    assert set(written) == {"train", "internal_test", "external_test"}
    table = [r.split("\t") for r in (cache / "internal_test.tsv").read_text().splitlines()[1:]]
    with np.load(written["internal_test"], allow_pickle=False) as f:
        assert f["features"].shape == (8, 64) and f["features"].dtype == np.float32
        assert f["age"].tolist() == pytest.approx([float(r[2]) for r in table])
        assert f["site"].dtype.kind == "U" and f["site"].tolist() == [r[4] for r in table]
        assert f["participant_id"].tolist() == [r[1] for r in table]
        prediction = f["prediction"]
    # prediction in years, recomputed from the weights and the training ages' mean/std
    train_ages = np.array([float(r.split("\t")[2]) for r in (cache / "train.tsv").read_text().splitlines()[1:]])
    stored = torch.load(run_l1 / "model.pt", weights_only=True)
    # float32 ages (rounded by 2^-24) and float32 pairwise sums over 24 values: a few EPS32
    assert stored["age_mean"] == pytest.approx(train_ages.mean(), rel=16 * EPS32)
    assert stored["age_std"] == pytest.approx(train_ages.std(), rel=16 * EPS32)
    net = BrainAgeNet(0.125, head="regression")
    net.load_state_dict(stored["model"])
    net.eval()
    x = torch.from_numpy(np.load(cache / "internal_test.npy").astype(np.float32))[:, None]
    with torch.no_grad():
        expected = net(x).numpy().astype(np.float64) * stored["age_std"] + stored["age_mean"]
    # the same float32 network over other batches (another order of the conv sums), then a float32
    # multiply-add in years
    atol = ROUNDING_MARGIN * network_rounding(net, x) * stored["age_std"] + EPS32 * np.abs(expected).max()
    np.testing.assert_allclose(prediction, expected, rtol=0, atol=atol)

    run_c = tmp_path / "exp"
    train(tiny("exp", epochs=1), cache, run_c)
    with np.load(extract_features(run_c, cache, tmp_path / "f_exp")["train"]) as f:
        assert f["features"].shape == (24, 128) and "prediction" not in f.files
        np.testing.assert_allclose(np.linalg.norm(f["features"], axis=1), 1.0, atol=1e-5)
    with np.load(extract_features(run_c, cache, tmp_path / "f_emb", kind="embedding")["train"]) as f:
        assert f["features"].shape == (24, 64)
    with pytest.raises(ValueError, match="no projection head"):
        extract_features(run_l1, cache, tmp_path / "x", kind="projection")


def test_nan_features_write_nothing(cache, tmp_path):
    run = tmp_path / "run"
    train(tiny("exp", epochs=1), cache, run)
    payload = torch.load(run / "model.pt", weights_only=True)
    payload["model"]["head.2.bias"][0] = float("nan")
    torch.save(payload, run / "model.pt")
    with pytest.raises(ValueError, match=r"24 of 24 train subject\(s\) have NaN/inf features.*nothing was written"):
        extract_features(run, cache, tmp_path / "feat")
    assert not (tmp_path / "feat").exists() or not list((tmp_path / "feat").iterdir())


def test_features_on_another_grid(cache, tmp_path):
    run = tmp_path / "run"
    train(tiny("l1", epochs=1), cache, run)
    other = write_cache(tmp_path / "other", grid=(16, 18, 16))
    with pytest.raises(CheckpointError, match=r"trained on a \(16, 16, 16\) grid, but the cache .* has \(16, 18, 16\)"):
        extract_features(run, other, tmp_path / "feat")


@pytest.mark.slow
def test_training_path_imports_without_imaging_stack(tmp_path, cache):
    """GPU machines have torch, monai and numpy but not nibabel/nilearn/sklearn."""
    code = (
        "import sys\n"
        "for name in ('nibabel', 'nilearn', 'sklearn', 'neuroHarmonize', 'snakemake', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "from brainage.training import TrainConfig, train, extract_features\n"
        f"cfg = TrainConfig(method='exp', epochs=1, batch_size=8, width=0.125, progress=False, device='cpu')\n"
        f"train(cfg, {str(cache)!r}, {str(tmp_path / 'run')!r})\n"
        f"extract_features({str(tmp_path / 'run')!r}, {str(cache)!r}, {str(tmp_path / 'f')!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "f" / "external_test.npz").is_file()


def test_cuda_code_paths_run_on_cpu(cache, tmp_path):
    """channels_last_3d (a CUDA default) forced on CPU trains to the same weights as the default
    memory layout; bf16 feature extraction (forward only) stays close to fp32.

    The layouts run other kernels, which sum float32 terms in another order. How far such a
    change of order moves this training is measured here, on this CPU: the same run with 2
    threads instead of 1 (which splits the sums differently) gives the floor. Adam turns the
    rounding noise of any near-zero gradient into full-size steps, so the floor is not at float32
    epsilon (it was ~3e-5 of the displacement from the initial weights when this was written);
    the layouts must agree within 10 times it, while a layout bug moves the weights by O(1) of
    their displacement.
    """
    run = tmp_path / "run"
    train(tiny("exp", channels_last="on", epochs=1), cache, run)
    plain = train(tiny("exp", epochs=1), cache, tmp_path / "plain")
    threads = train(tiny("exp", epochs=1, num_threads=2), cache, tmp_path / "threads")
    torch.manual_seed(tiny("exp").seed)
    initial = build_model(tiny("exp")).state_dict()

    def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[k].double().ravel() for k in sorted(initial) if initial[k].is_floating_point()])

    w_cl, w_plain, w_threads, w_init = (
        flat(w) for w in (weights(run / "model.pt"), weights(plain), weights(threads), initial)
    )
    moved = torch.linalg.vector_norm(w_plain - w_init)
    floor = torch.linalg.vector_norm(w_threads - w_plain) / moved
    assert 0 < floor < 1e-3, float(floor)  # a change of summation order is visible, and small
    assert torch.linalg.vector_norm(w_cl - w_plain) / moved <= 10 * floor
    with np.load(extract_features(run, cache, tmp_path / "f32")["train"]) as f:
        fp32 = f["features"]
    with np.load(extract_features(run, cache, tmp_path / "bf16", precision="bf16")["train"]) as f:
        bf16 = f["features"]
    assert not np.array_equal(fp32, bf16)
    # bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.4 %); a forward pass of a few dozen
    # such roundings stays within a few percent of fp32, row by row. Unit-norm rows of 128 values
    # have entries of ~0.09, so a wrong row, head or normalisation moves them by more than 0.02.
    row_error = np.linalg.norm(bf16 - fp32, axis=1) / np.linalg.norm(fp32, axis=1)
    assert row_error.max() < 0.05, row_error.max()
    np.testing.assert_allclose(bf16, fp32, atol=0.02)


def test_bf16_training_on_cpu_is_refused(cache, tmp_path):
    with pytest.raises(ValueError, match="precision='bf16' is not supported for training on cpu"):
        train(tiny("exp", precision="bf16"), cache, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cosine_schedule_and_sgd(cache, tmp_path):
    train(tiny("exp", optimizer="sgd", lr=0.01, schedule="cosine", epochs=4), cache, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()[1:]
    lrs = [float(line.split(",")[1]) for line in lines]
    expected = [0.005 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["optimizer"]
    assert state["param_groups"][0]["momentum"] == 0.9 and "momentum_buffer" in next(iter(state["state"].values()))


def test_augmented_training_is_deterministic(cache, tmp_path):
    augment = [
        {"name": "RandFlip", "prob": 0.5, "spatial_axis": 0},
        {"name": "RandGaussianNoise", "prob": 1.0, "std": 0.2},
    ]
    a = train(tiny("exp", augmentations=augment), cache, tmp_path / "a")
    b = train(tiny("exp", augmentations=augment), cache, tmp_path / "b")
    plain = train(tiny("exp"), cache, tmp_path / "plain")
    wa, wb, wp = weights(a), weights(b), weights(plain)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wp[k]) for k in wa)


def test_json_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3, "kernel": "cauchy"}))
    assert load_config_file(path) == {"epochs": 3, "kernel": "cauchy"}


def test_tensorboard_scalars_when_installed(cache, tmp_path, monkeypatch):
    """TensorBoard is optional; a stand-in SummaryWriter records what the trainer logs."""
    import types

    logged: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            logged.append((tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            logged.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    train(tiny("l1", epochs=2), cache, tmp_path / "run")
    losses = [(step, value) for tag, value, step in logged if tag == "loss"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()[1:]
    assert losses == [(i + 1, pytest.approx(float(r.split(",")[2]))) for i, r in enumerate(rows)]
    assert {tag for tag, _, _ in logged} == {"loss", "train_mae", "lr", "samples_per_s", "closed"}


@pytest.mark.parametrize("bad_step", [3, 25])
def test_divergence_leaves_last_checkpoint_intact(tmp_path, monkeypatch, bad_step):
    """A NaN loss at step 3 (read at the check after step 20 of 30) or 25 (read at the epoch's
    end) raises there; the weights of the diverged steps never reach a file."""
    from brainage.training import TrainingDivergedError, trainer

    assert trainer.DIVERGENCE_CHECK_STEPS == 20  # the step numbers below are chosen for it
    cache = write_cache(tmp_path / "cache", n=(60, 8, 6))
    config = tiny("l1", batch_size=2, epochs=3)  # 30 steps per epoch
    out = tmp_path / "run"
    train(config, cache, out, stop_after=1)
    before = (out / "checkpoint.pt").read_bytes()
    calls = {"n": 0}
    regression_loss = trainer.regression_loss

    def nan_from(model, x, targets):
        calls["n"] += 1
        loss, prediction = regression_loss(model, x, targets)
        return (loss * float("nan") if calls["n"] >= bad_step else loss), prediction

    monkeypatch.setattr(trainer, "regression_loss", nan_from)
    with pytest.raises(
        TrainingDivergedError,
        match=rf"loss is nan at epoch 2 step {bad_step}; the last checkpoint "
        rf".*checkpoint.pt is intact",
    ):
        train(config, cache, out)
    assert calls["n"] == (20 if bad_step <= 20 else 30)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not (out / "model.pt").exists()
