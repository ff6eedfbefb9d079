"""Processes of one session: how the load benchmark and the tests find what a Ray start left running."""

from __future__ import annotations

import os

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
