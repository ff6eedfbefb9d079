"""A real SLURM cluster on this one machine: munged, slurmctld and two slurmd in SLURM's multiple-slurmd mode
(two node names, one host), with private sockets, ports, state and logs under one temp dir.

Debian's `slurm-wlm` and `munge` are installed where they are missing (tests/debian.py); `unavailable()` says
why a cluster cannot be had here. `stop()` ends exactly the daemons it started.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.debian import command_path, missing_reason
from tests.local_cluster import free_port

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")
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
            "AccountingStorageType=accounting_storage/none",
            # No accounting database: each finished job's state is a line in this file (and scontrol keeps it).
            f"JobCompType=jobcomp/filetxt\nJobCompLoc={self.root}/jobcomp.txt",
            "KillWait=30\nMinJobAge=600",
            *node_lines,
            f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

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
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
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
