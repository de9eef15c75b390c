"""A throw-away single-node Slurm for tests: munged, MariaDB, slurmdbd, slurmctld and slurmd.

Everything lives in one folder (configuration, state, logs, sockets) and listens on free
loopback ports, so a Slurm that the machine may already run is left alone. The daemons run
without systemd as the current user and are stopped by their process ids.

Accounting goes through slurmdbd and MariaDB rather than ``AccountingStorageType=none``:
``sacct`` reads jobs (requested CPUs, memory, time limit, partition, submit line) only from
the accounting database, and it is the executor plugin's default job-status command, so the
workflow profile runs unmodified, as on a production cluster, instead of with the plugin's
``status_command: squeue`` and ``no_account`` fallbacks.

Client commands find this cluster through ``SLURM_CONF``, except inside a job: the executor
plugin's job step (snakemake-executor-plugin-slurm-jobstep 0.6) runs each rule with ``srun``
after removing every ``SLURM_*`` variable but the job's identity, ``SLURM_CONF`` included, so
``srun`` reads the configuration where it does on a production node, ``/etc/slurm/slurm.conf``.
The cluster links that path to its configuration while it runs (root only), and refuses to
start where the machine has a Slurm configuration of its own.

Debian 12 packages: ``munge``, ``slurmctld``, ``slurmd``, ``slurmdbd``, ``slurm-client``,
``mariadb-server``; :func:`ensure_installed` installs the missing ones when run as root.
"""

from __future__ import annotations

import csv
import getpass
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

PACKAGES = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "slurmdbd": "slurmdbd",
    "sbatch": "slurm-client",
    "sacct": "slurm-client",
    "sacctmgr": "slurm-client",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
}
"""The executables the cluster needs, and the Debian package of each."""

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
"""Where Debian's ``srun`` reads the configuration when ``SLURM_CONF`` is unset."""
OTHER_CONFIGS = (Path("/etc/slurm-llnl/slurm.conf"), Path("/run/slurm/conf"))
MARKER = "brainage-test-cluster"
"""A file in the folder of a cluster made here (a link at :data:`SYSTEM_CONF` into it is ours)."""
CLUSTER = "brainagetest"
ACCOUNT = "brainage"


def which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def missing_packages() -> list[str]:
    return sorted({package for exe, package in PACKAGES.items() if which(exe) is None})


def ensure_installed() -> str | None:
    """Install the missing packages with apt-get; a reason to skip where no cluster can be made.

    Raises:
        RuntimeError: apt-get failed (the message holds its output).
    """
    if os.geteuid() != 0:
        return f"a local Slurm needs root: srun inside its jobs reads the configuration at {SYSTEM_CONF}" + (
            f", and the Debian packages {' '.join(missing_packages())}" if missing_packages() else ""
        )
    _remove_stale_link()
    taken = [str(p) for p in (SYSTEM_CONF, *OTHER_CONFIGS) if p.exists() or p.is_symlink()]
    if taken:
        return (
            f"this machine has a Slurm configuration of its own ({', '.join(taken)}); a test cluster would mix with it"
        )
    missing = missing_packages()
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"a local Slurm needs the packages {' '.join(missing)} and this machine has no apt-get"
    # Debian's maintainer scripts would start munge and MariaDB as system services; the
    # policy-rc.d convention (exit 101) tells invoke-rc.d not to, for the install's duration.
    policy = Path("/usr/sbin/policy-rc.d")
    planted = not policy.exists()
    if planted:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:  # a stale package list: refresh it once
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
            result = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        if planted:
            policy.unlink()
    if result.returncode != 0 or missing_packages():
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return None


def _remove_stale_link() -> None:
    """Remove a link at :data:`SYSTEM_CONF` left by a test cluster that is no longer running."""
    if not SYSTEM_CONF.is_symlink():
        return
    folder = Path(os.readlink(SYSTEM_CONF)).parent
    pid = folder / "slurmctld.pid"
    if (folder / MARKER).exists() and not (pid.exists() and _alive(int(pid.read_text().split()[0]))):
        SYSTEM_CONF.unlink()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def _stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


class LocalSlurm:
    """One node (``localhost``) in the given partitions, with accounting; use as a context manager.

    Args:
        root: folder for everything the cluster writes.
        cpus, memory_mb: what the node declares (``SlurmdParameters=config_overrides`` lets it
            declare more than the machine has, so that jobs keep the resources a production
            profile asks for; nothing enforces them: ``task/none``).
        partitions: partition names; the first is the default.
        gpus: GPUs the node declares (``gres/gpu`` backed by ``/dev/null``): requests for them
            are accepted and accounted; nothing here runs on them.
    """

    def __init__(self, root: Path, cpus: int, memory_mb: int, partitions: Sequence[str], gpus: int = 1) -> None:
        self.root = Path(root)
        self.cpus, self.memory_mb, self.partitions, self.gpus = cpus, memory_mb, list(partitions), gpus
        self.user = getpass.getuser()
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge.socket"
        self._mariadb: subprocess.Popen | None = None
        self._pid_files = {name: self.root / f"{name}.pid" for name in ("slurmd", "slurmctld", "slurmdbd", "munged")}

    # ------------------------------------------------------------------ environment and commands

    @property
    def env(self) -> dict[str, str]:
        """The caller's environment pointed at this cluster (and at no other Slurm job)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = SEARCH_PATH
        return env

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n{self.log_tails()}"
            )
        return result

    def sbatch(self, *arguments: str) -> str:
        """Submit; returns the job id."""
        return self.run("sbatch", "--parsable", *arguments).stdout.strip().split(";")[0]

    def sacct(self, fields: Iterable[str], *arguments: str) -> list[dict[str, str]]:
        """Every job and step in the accounting database (``--allusers`` since 1970), one dict each.

        slurmctld sends records to slurmdbd asynchronously: a job shows up a moment after its
        submission, and its final state a moment after it ends.
        """
        fields = list(fields)
        out = self.run(
            "sacct",
            "--allusers",
            "--starttime",
            "1970-01-01",
            "--parsable2",
            "--noheader",
            "--format",
            ",".join(fields),
            *arguments,
        ).stdout
        rows = csv.reader(io.StringIO(out), delimiter="|", quoting=csv.QUOTE_NONE)
        return [dict(zip(fields, row, strict=False)) for row in rows if row]

    def wait_for(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll sacct until the job has ended; its row (State, ExitCode, ...)."""
        fields = ["JobIDRaw", "State", "ExitCode", "ReqCPUS", "Partition", "Elapsed"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = [r for r in self.sacct(fields, "--jobs", job_id) if r["JobIDRaw"] == job_id and r["Partition"]]
            if rows and rows[0]["State"].split()[0] not in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"):
                return rows[0]
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} did not end within {timeout} s\n{self.log_tails()}")

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.err")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # ------------------------------------------------------------------ configuration

    def _write_config(self) -> None:
        ports = {name: free_port() for name in ("mariadb", "slurmdbd", "slurmctld", "slurmd")}
        self.ports = ports
        r = self.root
        (r / "state").mkdir(parents=True, exist_ok=True)
        (r / "spool").mkdir(exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        partitions = "\n".join(
            f"PartitionName={name} Nodes=localhost MaxTime=INFINITE State=UP" + (" Default=YES" if i == 0 else "")
            for i, name in enumerate(self.partitions)
        )
        self.conf.write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser={self.user}
SlurmdUser={self.user}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={self._pid_files["slurmctld"]}
SlurmdPidFile={self._pid_files["slurmd"]}
SlurmctldLogFile={r / "slurmctld.log"}
SlurmdLogFile={r / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
ReturnToService=2
KillWait=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports["slurmdbd"]}
AccountingStoragePass={self.munge_socket}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
{partitions}
""")
        (r / "gres.conf").write_text(f"Name=gpu File=/dev/null Count={self.gpus}\n" if self.gpus else "")
        dbd = r / "slurmdbd.conf"  # read from the folder of SLURM_CONF
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["slurmdbd"]}
SlurmUser={self.user}
PidFile={self._pid_files["slurmdbd"]}
LogFile={r / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser={self.user}
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    # ------------------------------------------------------------------ start and stop

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not come up within {timeout} s\n{self.log_tails()}")

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _start_mariadb(self) -> None:
        data = self.root / "mariadb"
        common = ["--no-defaults", f"--datadir={data}", f"--user={self.user}", "--innodb-log-file-size=4M"]
        result = subprocess.run(
            [which("mariadb-install-db"), *common, "--skip-test-db", "--auth-root-authentication-method=normal"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
        # A database for this test only, on a loopback port: no grant tables, so slurmdbd's
        # StorageUser needs no password.
        self._mariadb = subprocess.Popen(
            [
                which("mariadbd"),
                *common,
                f"--socket={self.root / 'mariadb.sock'}",
                f"--port={self.ports['mariadb']}",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--innodb-buffer-pool-size=16M",
                f"--pid-file={self.root / 'mariadb.pid'}",
                f"--log-error={self.root / 'mariadb.err'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait("MariaDB", lambda: self._port_open(self.ports["mariadb"]))

    def start(self) -> LocalSlurm:
        self._write_config()
        (self.root / MARKER).touch()
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)
        env = self.env
        subprocess.run(
            [
                which("munged"),
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={self.root / 'munge.key'}",
                f"--log-file={self.root / 'munged.log'}",
                f"--pid-file={self._pid_files['munged']}",
                f"--seed-file={self.root / 'munged.seed'}",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        self._start_mariadb()
        subprocess.run([which("slurmdbd")], check=True, env=env, capture_output=True)
        self._wait(
            "slurmdbd", lambda: self.run("sacctmgr", "--noheader", "list", "cluster", check=False).returncode == 0
        )
        self.run("sacctmgr", "--immediate", "add", "cluster", CLUSTER)
        self.run("sacctmgr", "--immediate", "add", "account", ACCOUNT, f"cluster={CLUSTER}")
        self.run("sacctmgr", "--immediate", "add", "user", self.user, f"account={ACCOUNT}", f"defaultaccount={ACCOUNT}")
        subprocess.run([which("slurmctld"), "-f", str(self.conf)], check=True, env=env, capture_output=True)
        subprocess.run(
            [which("slurmd"), "-f", str(self.conf), "-N", "localhost"], check=True, env=env, capture_output=True
        )
        self._wait(
            "the node",
            lambda: (
                self.run("sinfo", "--noheader", "--format=%P %t", check=False).stdout.split()
                == [word for i, name in enumerate(self.partitions) for word in (name + "*" * (i == 0), "idle")]
            ),
        )
        return self

    def set_partition_state(self, partition: str, state: str) -> None:
        self.run("scontrol", "update", f"PartitionName={partition}", f"State={state}")

    def stop(self) -> None:
        """Cancel every job, stop the daemons (by pid), delete the database files; logs stay."""
        if self.conf.exists() and self._pid_files["slurmctld"].exists():
            self.run("scancel", f"--user={self.user}", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run("squeue", "--noheader", check=False).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "slurmdbd"):
            path = self._pid_files[name]
            if path.exists():
                _stop_pid(int(path.read_text().split()[0]))
        if self._mariadb is not None:
            self._mariadb.terminate()
            try:
                self._mariadb.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._mariadb.kill()
                self._mariadb.wait()
            self._mariadb = None
        munged = self._pid_files["munged"]
        if munged.exists():
            _stop_pid(int(munged.read_text().split()[0]))
        shutil.rmtree(self.root / "mariadb", ignore_errors=True)
        if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == self.conf:
            SYSTEM_CONF.unlink()

    def __enter__(self) -> LocalSlurm:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
