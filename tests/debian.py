"""Debian packages a test needs (SLURM, munge, Prometheus): installed with apt-get where missing, as CI does.

`missing_reason` returns None once the commands are here, else why they cannot be had on this machine: the
tests that need them skip with that reason and only then.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def have(command: str) -> bool:
    return bool(shutil.which(command)) or Path("/usr/sbin", command).exists()


def command_path(command: str) -> str:
    return shutil.which(command) or str(Path("/usr/sbin", command))


def missing_reason(packages: tuple[str, ...], commands: tuple[str, ...]) -> str | None:
    if all(have(c) for c in commands):
        return None
    wanted = " and ".join(packages)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"Debian's {wanted} are not installed, and installing them needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # a fresh image may not have the package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not all(have(c) for c in commands):
        return f"apt-get could not install {wanted}: {done.stderr.strip()[-300:]}"
    return None
