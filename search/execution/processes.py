"""Processes of one session: how the load benchmark and the tests find what a Ray start left running."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


def session_processes(leader: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose session leader is `leader` (a process started with setsid)."""
    alive = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == leader and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return alive


def kill_session(leader: int) -> list[psutil.Process]:
    """SIGKILL every live process of the session; ones that exit meanwhile are fine. Returns those found."""
    found = session_processes(leader)
    for proc in found:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return found


def end_session(leader: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the group a `start_new_session` child leads, give it `grace` seconds (daemons save their state
    then), and SIGKILL whatever of its session is still alive; one already gone is fine."""
    try:
        os.killpg(leader.pid, signal.SIGTERM)
        leader.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    kill_session(leader.pid)
