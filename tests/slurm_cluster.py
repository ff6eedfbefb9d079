"""A real SLURM cluster on this one machine: munged, slurmctld and two slurmd in SLURM's multiple-slurmd mode
(two node names, one host), with private sockets, ports, state and logs under one temp dir.

Debian's `slurm-wlm` and `munge` are installed where they are missing (tests/debian.py); `unavailable()` says
why a cluster cannot be had here. `stop()` ends exactly the daemons it started.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from search.execution.processes import end_session
from tests.debian import command_path, missing_reason
from tests.local_cluster import free_port

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "slurmdbd", "mariadbd", "mariadb-install-db", "sacct")
NODES = ("node1", "node2")


def unavailable() -> str | None:
    """None where SLURM's daemons are here or could be installed; else the reason they cannot."""
    if os.geteuid() != 0:
        return "slurmd runs jobs as their users: it needs root, and this test runs as another user"
    return missing_reason(PACKAGES, DAEMONS)


@dataclass
class SlurmCluster:
    root: Path
    daemons: list[subprocess.Popen] = field(default_factory=list)
    dbd_port: int = field(default_factory=free_port)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for SLURM's client commands (sbatch, scontrol, ...) against this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def write_config(self) -> None:
        host = socket.gethostname()
        munge_socket = self.root / "munge.sock"
        node_lines = [f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs=1 "
                      "RealMemory=4000 State=UNKNOWN" for n in NODES]
        self.conf.write_text("\n".join([
            "ClusterName=emsearch",
            # Job ids differ from one test cluster to the next, and so do the jobs' Ray temp dirs (/tmp/ray-<job>).
            f"FirstJobId={random.randrange(10**5, 10**7)}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            "SlurmUser=root",
            f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={munge_socket}",
            f"StateSaveLocation={self.root}/state\nSlurmdSpoolDir={self.root}/spool/%n",
            f"SlurmctldPidFile={self.root}/slurmctld.pid\nSlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root}/slurmctld.log\nSlurmdLogFile={self.root}/slurmd-%n.log",
            # No cgroups in a container: track a step's processes by parentage; tasks unconfined.
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none",
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nSchedulerType=sched/backfill",
            "MpiDefault=none\nReturnToService=2\nJobAcctGatherType=jobacct_gather/none",
            # Accounting as a site has it (sacct): slurmdbd over a MariaDB of this cluster's own.
            "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1",
            # For munge, the "password" is munged's socket (the clients' connection to slurmdbd ignores AuthInfo).
            f"AccountingStoragePort={self.dbd_port}\nAccountingStoragePass={munge_socket}",
            "KillWait=30\nMinJobAge=600",
            *node_lines,
            f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def write_dbd_config(self, db_port: int) -> None:
        conf = self.root / "slurmdbd.conf"  # beside slurm.conf, where SLURM looks for it
        conf.write_text("\n".join([
            f"AuthType=auth/munge\nAuthInfo=socket={self.root}/munge.sock",
            f"DbdAddr=127.0.0.1\nDbdHost={socket.gethostname()}\nDbdPort={self.dbd_port}\nSlurmUser=root",
            f"PidFile={self.root}/slurmdbd.pid\nLogFile={self.root}/slurmdbd.log",
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1",
            f"StoragePort={db_port}\nStorageUser=root\nStorageLoc=slurm_acct_db",
            "",
        ]))
        conf.chmod(0o600)  # slurmdbd refuses a readable one: it may hold the database password

    def start_accounting(self) -> None:
        """A private MariaDB (no grant tables: only this test reaches its port), slurmdbd over it, and the
        cluster with one account registered, as `sacctmgr` does at a site."""
        db = self.root / "db"
        subprocess.run([command_path("mariadb-install-db"), "--no-defaults", f"--datadir={db}", "--user=root",
                        "--skip-test-db", "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True, timeout=120)
        db_port = free_port()
        self.spawn([command_path("mariadbd"), "--no-defaults", f"--datadir={db}", f"--socket={self.root}/db.sock",
                    f"--port={db_port}", "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
                    f"--pid-file={self.root}/db.pid"], "mariadbd")
        self.wait_for(lambda: (self.root / "db.sock").exists(), "MariaDB socket")
        self.write_dbd_config(db_port)
        self.spawn([command_path("slurmdbd"), "-D"], "slurmdbd")
        for args in (["add", "cluster", "emsearch"], ["add", "account", "em", "Cluster=emsearch"],
                     ["add", "user", "root", "Account=em", "Cluster=emsearch"]):
            self.wait_for(lambda: subprocess.run(["sacctmgr", "-i", *args], env=self.env(), capture_output=True)
                          .returncode == 0 or "already exists" in self.sacctmgr_last(args), f"sacctmgr {args}")

    def sacctmgr_last(self, args: list[str]) -> str:
        done = subprocess.run(["sacctmgr", "-i", *args], env=self.env(), capture_output=True, text=True)
        return done.stdout + done.stderr

    def sacct(self, job_id: str) -> str:
        """The job's allocation line from SLURM's accounting: id, name, state, exit code, nodes, elapsed."""
        done = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o",
                               "JobID,JobName,State,ExitCode,NNodes,NodeList,Start,End,Elapsed"],
                              env=self.env(), capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def start(self) -> None:
        (self.root / "state").mkdir()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.write_config()
        self.spawn([command_path("munged"), "--foreground", "--force", f"--socket={self.root}/munge.sock",
                    f"--key-file={key}", f"--pid-file={self.root}/munged.pid", f"--log-file={self.root}/munged.log",
                    f"--seed-file={self.root}/munged.seed"], "munged")
        self.wait_for(lambda: (self.root / "munge.sock").exists(), "munged's socket")
        self.start_accounting()
        self.spawn([command_path("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        for node in NODES:
            (self.root / "spool" / node).mkdir(parents=True)
            self.spawn([command_path("slurmd"), "-D", "-N", node, "-f", str(self.conf)], f"slurmd-{node}")
        self.wait_for(lambda: self.node_states() == {n: "idle" for n in NODES}, "both nodes idle in sinfo")

    def spawn(self, args: list[str], name: str) -> None:
        log = open(self.root / f"{name}.out", "w")
        self.daemons.append(subprocess.Popen(args, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True))

    def wait_for(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline or any(d.poll() is not None for d in self.daemons):
                raise RuntimeError(f"SLURM test cluster: no {what} after {timeout:.0f} s (logs in {self.root})")
            time.sleep(0.5)

    def node_states(self) -> dict[str, str]:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env(), capture_output=True, text=True)
        return dict(line.split() for line in done.stdout.splitlines() if line.strip())

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str]) -> str:
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=self.env(**env), capture_output=True,
                              text=True, check=True)
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, NodeList, ...)."""
        done = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env(), capture_output=True,
                              text=True)
        return dict(field.split("=", 1) for field in done.stdout.split() if "=" in field)

    def wait_for_job(self, job_id: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id)).get("JobState") in (None, "PENDING", "CONFIGURING", "RUNNING",
                                                            "COMPLETING"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.get('JobState')} after {timeout:.0f} s")
            time.sleep(1)
        return job

    def stop(self) -> None:
        for process in reversed(self.daemons):
            end_session(process)
        shutil.rmtree(self.root, ignore_errors=True)


def start_slurm_cluster() -> SlurmCluster:
    # Short: munged's and slurmd's socket paths live under it.
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp")))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
