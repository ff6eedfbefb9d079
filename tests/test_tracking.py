"""Tracking never loses a search: an MLflow server that is not there, or that goes away mid-run.

The server is MLflow's own (`mlflow server`, from mlflow-skinny plus Flask in the test extra), on a
SQLite store the test reads back to see what reached it.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from search.__main__ import main
from tests.conftest import small_space


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_nobody_runs_is_one_line_before_ray_starts(write_space, real_chips, tmp_path, capsys,
                                                                     monkeypatch):
    def start_ray(address):
        raise AssertionError("the run went on to start Ray")

    # The session's shared Ray may be up (ray.is_initialized() says nothing then): the run must not get to its start.
    monkeypatch.setattr("search.execution.run.connect_cluster", start_ray)
    out = tmp_path / "run"
    started = time.monotonic()
    code = main(["run", str(write_space(small_space(real_chips))), "--out", str(out), "--mlflow", "http://127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith("error: --mlflow http://127.0.0.1:1: no tracking server answers"), err
    assert time.monotonic() - started < 15  # was 255 s of MLflow's retries, then a traceback
    assert not out.exists()


def runs_in(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
        try:
            return db.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.OperationalError:  # the server is still creating its tables
            return 0


@pytest.fixture
def mlflow_server(tmp_path):
    store = tmp_path / "server" / "mlflow.db"
    store.parent.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=store.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # its background job runner (a pool of huey consumers) is not needed for tracking
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )  # its own process group: uvicorn runs in a child
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                stop(server)
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)
    yield uri, store, server
    stop(server)


def stop(server: subprocess.Popen) -> None:
    """The server and its uvicorn worker, at once (as a crashed host would go)."""
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


def test_a_server_that_goes_away_mid_run_costs_one_warning_and_no_trial(
    mlflow_server, write_space, real_chips, tmp_path, capfd, embedded_ray
):
    uri, store, server = mlflow_server

    def stop_after_the_first_trial_run() -> None:
        while runs_in(store) < 2 and server.poll() is None:  # the study's parent run, then a trial's
            time.sleep(0.2)
        stop(server)

    killer = threading.Thread(target=stop_after_the_first_trial_run, daemon=True)
    killer.start()
    out = tmp_path / "run"
    code = main(["run", str(write_space(small_space(real_chips, **{"training.num_samples": 3}))), "--out", str(out),
                 "--mlflow", uri])
    killer.join(timeout=5)
    err = capfd.readouterr().err
    assert code == 0, err[-2000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 3 and all(r["status"] in ("completed", "stopped_early") for r in rows)
    warnings = [line for line in err.splitlines() if "stopped answering" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow at {uri} stopped answering"), warnings
    assert server.poll() is not None and runs_in(store) >= 2  # it had the study and a trial before it went
