"""The HPC path on a real Slurm: a single-node cluster (munged, MariaDB, slurmdbd, slurmctld,
slurmd) is brought up for this module and torn down after it.

- a small workflow config (preprocess -> train) runs through ``--profile workflow/profiles/slurm``
  (its training on the CPU, so no GPU is requested); sacct shows every job with the profile's partition, CPUs,
  memory and time limit, and the outputs equal those of a local run of the same config;
- a 2-process ``torchrun`` training (gloo, CPU) runs as one Slurm job through
  ``workflow/profiles/slurm/torchrun.sbatch``, as docs/training.md tells users, and ends with
  the weights of the equivalent single-process run;
- the profile's submission of a GPU training job is read back from Slurm (accepted, held in a
  down partition, cancelled before it starts).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster
import torch
import yaml
from helpers import REPO, job_counts, write_cache, write_openbhb
from torch.utils.data import DistributedSampler

pytestmark = pytest.mark.slow
pytest.importorskip(
    "snakemake_executor_plugin_slurm",
    reason="needs snakemake-executor-plugin-slurm (the test extra installs it on Python >= 3.11)",
)

PROFILE = REPO / "workflow" / "profiles" / "slurm"
PROFILE_CONFIG = yaml.safe_load((PROFILE / "config.yaml").read_text())
RUN = "slurmtest"
# preprocess -> train on a hand-written OpenBHB folder: a rule of the profile's default resources
# and one with its own (train), a few seconds of work per job (each job also starts Snakemake
# twice, and the plugin polls sacct at growing intervals: ~40 s per job on 2 cores).
# `device: cpu` makes the train rule ask for no GPU.
TINY = {
    "run": RUN,
    "data": {"source": "openbhb", "layout": "auto", "modality": "vbm"},
    "preprocess": {"downsample": 1, "normalize": "zscore", "chunk": 64},
    "train": {
        "methods": ["l1"],
        "seeds": [0],
        "threads": 1,
        "epochs": 2,
        "batch_size": 4,
        "width": 0.125,
        "lr": 0.001,
        "device": "cpu",
    },
    "submission": {"enabled": False, "bundle": False},
    "debias": {"enabled": False},
}
TARGET = f"results/{RUN}/train/l1/seed0/model.pt"
SACCT_FIELDS = [
    "JobIDRaw",
    "Comment",
    "Partition",
    "ReqCPUS",
    "ReqMem",
    "TimelimitRaw",
    "ReqTRES",
    "State",
    "ExitCode",
    "WorkDir",
    "SubmitLine",
]


def profile_resources(rule: str) -> dict:
    """What the profile maps a rule to: its default resources overridden by the rule's own."""
    return {**PROFILE_CONFIG["default-resources"], **PROFILE_CONFIG.get("set-resources", {}).get(rule, {})}


def snakemake_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def snakemake_command(work: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), *args]


def slurm_command(work: Path, *args: str) -> list[str]:
    """The profile as users run it, plus a 1 s first status check (the plugin's default is 40 s)."""
    return snakemake_command(
        work,
        "--profile",
        str(PROFILE),
        "--workflow-profile",
        "none",
        "--slurm-init-seconds-before-status-checks",
        "1",
        *args,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.ensure_installed()
    if reason:
        pytest.skip(reason)
    resources = [profile_resources(rule) for rule in [None, *PROFILE_CONFIG.get("set-resources", {})]]
    partitions = list(dict.fromkeys(r["slurm_partition"] for r in resources))
    # The node declares enough for the largest request of the profile, twice over (two jobs at once).
    cpus = 2 * max(r["cpus_per_task"] for r in resources)
    memory = 2 * max(r["mem_mb"] for r in resources)
    with slurm_cluster.LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus, memory, partitions) as slurm:
        yield slurm


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("config")
    write_openbhb(folder / "openBHB", n=24)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "root": str(folder / "openBHB")}}))
    return path


@pytest.fixture(scope="module")
def runs(cluster, tiny_config, tmp_path_factory):
    """The tiny config through the Slurm profile and, meanwhile, locally:
    (Slurm work folder, its output, seconds, local work folder, local output)."""
    work, local = tmp_path_factory.mktemp("wf_slurm"), tmp_path_factory.mktemp("wf_local")
    local_log = local.parent / f"{local.name}.log"
    with open(local_log, "w") as log:
        local_run = subprocess.Popen(
            snakemake_command(
                local, "--cores", "1", "--workflow-profile", "none", TARGET, "--configfile", str(tiny_config)
            ),
            env=snakemake_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            start = time.monotonic()
            result = subprocess.run(
                slurm_command(work, TARGET, "--configfile", str(tiny_config)),
                env=slurm_env(cluster),
                capture_output=True,
                text=True,
                timeout=600,
            )
            seconds = time.monotonic() - start
            local_run.wait(timeout=600)
        finally:
            if local_run.poll() is None:
                local_run.kill()
                local_run.wait()
    local_out = local_log.read_text()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:] + cluster.log_tails()
    assert local_run.returncode == 0, local_out[-5000:]
    return work, result, seconds, local, local_out


def slurm_env(cluster) -> dict[str, str]:
    return {**snakemake_env(), **cluster.env, "PATH": f"{Path(sys.executable).parent}:{cluster.env['PATH']}"}


def _strip(value, keys=("path", "source", "signature", "signatures", "split_signatures", "fingerprint")):
    """JSON without the entries derived from absolute paths (they differ between two folders)."""
    if isinstance(value, dict):
        return {k: _strip(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_strip(v, keys) for v in value]
    return value


def assert_same_outputs(a: Path, b: Path) -> int:
    """Every file under results/ and resources/ of two runs of one config holds the same data.

    Logs and benchmark timings exist in both; torch files are compared tensor by tensor,
    metrics without their timing columns, JSON without path-derived entries, the rest byte
    for byte. Returns the number of files compared.
    """
    files = sorted(p.relative_to(a) for top in ("results", "resources") for p in (a / top).rglob("*") if p.is_file())
    other = sorted(p.relative_to(b) for top in ("results", "resources") for p in (b / top).rglob("*") if p.is_file())
    assert files == other
    for rel in files:
        x, y = a / rel, b / rel
        if {"logs", "benchmarks"} & set(rel.parts):
            continue
        if rel.suffix == ".pt":
            wx, wy = (torch.load(p, weights_only=True)["model"] for p in (x, y))
            assert wx.keys() == wy.keys() and all(torch.equal(wx[k], wy[k]) for k in wx), rel
        elif rel.name == "metrics.csv":
            rows = [[line.split(",")[:4] for line in p.read_text().splitlines()] for p in (x, y)]
            assert rows[0] == rows[1], rel  # epoch, lr, loss, train_mae
        elif rel.suffix == ".json":
            assert _strip(json.loads(x.read_text())) == _strip(json.loads(y.read_text())), rel
        else:
            assert x.read_bytes() == y.read_bytes(), rel
    return len(files)


def test_workflow_jobs_run_on_slurm_with_the_profile_resources(cluster, runs):
    work, result, seconds, local, local_out = runs
    expected = {rule: n for rule, n in job_counts(local_out).items() if rule != "total"}

    rows = cluster.sacct(SACCT_FIELDS)  # Snakemake saw every job COMPLETED in sacct: the records are there
    jobs = {r["JobIDRaw"]: r for r in rows if "." not in r["JobIDRaw"] and r["WorkDir"] == str(work)}
    steps = {r["JobIDRaw"].split(".")[0] for r in rows if r["JobIDRaw"].endswith(".0")}
    submitted: dict[str, int] = {}
    for job_id, job in jobs.items():
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        submitted[rule] = submitted.get(rule, 0) + 1
        want = profile_resources(rule)
        got = {k: job[k] for k in ("Partition", "ReqCPUS", "ReqMem", "TimelimitRaw", "State", "ExitCode")}
        assert got == {
            "Partition": want["slurm_partition"],
            "ReqCPUS": str(want["cpus_per_task"]),
            "ReqMem": f"{want['mem_mb']}M",
            "TimelimitRaw": str(want["runtime"]),
            "State": "COMPLETED",
            "ExitCode": "0:0",
        }, (rule, job)
        assert "gres/gpu" not in job["ReqTRES"], (rule, job["ReqTRES"])
        assert job_id in steps, f"{rule}: no srun step ran in Slurm job {job_id}"
    assert submitted == expected, (submitted, result.stderr[-3000:])
    assert {"train", "preprocess"} <= set(submitted)  # a set-resources rule and a default one
    assert assert_same_outputs(work, local) >= 8
    print(f"\nSlurm workflow: {len(jobs)} jobs in {seconds:.0f} s")


class _RankMajor(DistributedSampler):
    """The single process's sample order rearranged as 2 processes gather it: each batch of
    ``batch`` subjects as rank 0's half (its positions 0, 2, 4, ...) then rank 1's (1, 3, 5, ...)."""

    batch = 0

    def __iter__(self):
        order = list(super().__iter__())
        b = self.batch
        return iter([i for s in range(0, len(order), b) for rank in (0, 1) for i in order[s : s + b][rank::2]])


def _halves(build_model):
    """``build_model`` whose network encodes the two halves of a batch separately, as 2 processes
    do (each process's BatchNorm sees its half only)."""

    def build(config):
        model = build_model(config)
        forward = model.forward

        def by_process(x):
            half = x.shape[0] // 2
            return torch.cat([forward(x[:half].clone()), forward(x[half:].clone())])

        model.forward = by_process
        return model

    return build


def test_torchrun_ddp_job_matches_single_process(cluster, tmp_path, monkeypatch):
    """Two gloo processes launched by workflow/profiles/slurm/torchrun.sbatch in one Slurm job
    end with exactly the weights of one process that encodes the two halves of each batch
    separately and sees the gathered order: the same floating-point operations in the same
    order, up to exact factors of 2 (the gather's backward doubles the gradient, DDP halves it).
    Any rounding difference would not stay small here: a 1e-6 relative change of the initial
    weights moves these weights by 10 to 50 % of their displacement within 6 steps (small
    batches through BatchNorm), so the only tolerance that tests anything is zero."""
    from brainage.training import TrainConfig, train, trainer

    cache = write_cache(tmp_path / "cache", n=(24, 4, 4))
    options = dict(method="exp", seed=3, epochs=2, batch_size=8, width=0.125, lr=1e-3, device="cpu", num_threads=1)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    job = cluster.sbatch(
        f"--chdir={tmp_path}",
        "--cpus-per-task=2",
        "--mem=4000",
        "--time=10",
        f"--output={tmp_path / 'ddp.log'}",
        "--export=ALL,NPROC=2",
        str(PROFILE / "torchrun.sbatch"),
        f"--cache={cache}",
        f"--out={tmp_path / 'ddp'}",
        *flags,
    )

    monkeypatch.setattr(trainer, "build_model", _halves(trainer.build_model))
    monkeypatch.setattr(trainer, "DistributedSampler", _RankMajor)
    monkeypatch.setattr(_RankMajor, "batch", options["batch_size"])
    torch.manual_seed(options["seed"])
    initial = {k: v.detach().clone() for k, v in trainer.build_model(TrainConfig(**options)).named_parameters()}
    single = train(TrainConfig(**options, progress=False), cache, tmp_path / "single")

    state = cluster.wait_for(job, timeout=240)
    log = (tmp_path / "ddp.log").read_text() if (tmp_path / "ddp.log").exists() else ""
    assert (state["State"], state["ExitCode"], state["ReqCPUS"]) == ("COMPLETED", "0:0", "2"), log[-3000:]
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    ddp, one = (torch.load(path, weights_only=True)["model"] for path in (tmp_path / "ddp" / "model.pt", single))
    assert all(not torch.equal(one[k], initial[k]) for k in initial if "bias" not in k)  # every weight moved
    # Parameters only: each process keeps its own running BatchNorm statistics (rank 0's are saved).
    assert [k for k in initial if not torch.equal(ddp[k], one[k])] == []
    metrics = [(tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("ddp", "single")]
    assert [row.split(",")[:3] for row in metrics[0]] == [row.split(",")[:3] for row in metrics[1]]


def interrupt(run: subprocess.Popen, signals: tuple[int, ...], wait: float) -> None:
    """Send ``signals`` one by one to ``run``, each followed by up to ``wait`` s for it to end."""
    for sig in signals:
        run.send_signal(sig)
        try:
            run.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_gpu_training_job_request(cluster, runs, tiny_config, tmp_path):
    """A training job that may use a GPU (``device: auto``), as the profile submits it: accepted
    by Slurm with the train rule's resources and one GPU, held in a down partition, and
    cancelled by Snakemake on Ctrl-C before it starts."""
    work = tmp_path / "work"
    shutil.copytree(runs[0], work, symlinks=True)
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text("train:\n  device: auto\n")
    want = profile_resources("train")
    partition = want["slurm_partition"]
    cluster.set_partition_state(partition, "DOWN")
    log = tmp_path / "snakemake.log"
    with open(log, "w") as out:
        run = subprocess.Popen(
            slurm_command(work, TARGET, "--forcerun", "train", "--configfile", str(tiny_config), str(gpu)),
            env=slurm_env(cluster),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            jobs = []
            while not jobs and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.5)
                jobs = [r for r in cluster.sacct(SACCT_FIELDS) if r["WorkDir"] == str(work) and r["Partition"]]
            assert len(jobs) == 1 and jobs[0]["State"] == "PENDING", (jobs, log.read_text()[-3000:])
            # Ctrl-C: Snakemake cancels its jobs. (A job cancelled with scancel instead reads
            # "CANCELLED by <uid>" in sacct, which the plugin 2.6 takes for a running job.)
            # Once in a CI-like run Snakemake printed nothing after the first SIGINT and was still
            # up 120 s later; a user would press Ctrl-C again, then send SIGTERM (which Snakemake
            # also handles by cancelling its jobs). The finally clause cancels whatever is left.
            interrupt(run, (signal.SIGINT, signal.SIGINT, signal.SIGTERM), wait=40)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            cluster.run("scancel", f"--partition={partition}", check=False)
            cluster.set_partition_state(partition, "UP")
    job = jobs[0]
    submit = f" {job['SubmitLine']} "
    for argument in (
        "--gpus=1",
        f"--cpus-per-task={want['cpus_per_task']}",
        f"--mem {want['mem_mb']}",
        f"-t {want['runtime']}",
        f"-p {partition}",
        "--ntasks-per-gpu=1",
    ):
        assert f" {argument} " in submit, (argument, job["SubmitLine"])
    assert " --comment rule_train_wildcards_" in submit  # the plugin names the rule there
    tres = dict(item.split("=") for item in job["ReqTRES"].split(","))
    assert (tres["cpu"], tres["mem"], tres["gres/gpu"]) == (str(want["cpus_per_task"]), f"{want['mem_mb']}M", "1")
    final = cluster.wait_for(job["JobIDRaw"], timeout=30)
    assert final["State"].startswith("CANCELLED"), (final, log.read_text()[-3000:])
    assert not [
        r for r in cluster.sacct(SACCT_FIELDS) if r["JobIDRaw"].startswith(job["JobIDRaw"] + ".")
    ]  # no step ran
