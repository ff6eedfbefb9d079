"""A two-node Ray cluster on this one machine, started with `ray start` the way a user would.

Each node is its own `ray start --block` process in its own session, on free ports, sharing one
short temp dir (Unix socket paths must stay under 108 bytes) and a token only this cluster knows.
`stop()` ends exactly those sessions' processes and nothing else Ray may be running here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from search.execution.processes import session_processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    temp_dir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    metrics_ports: list[int] = field(default_factory=list)
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Environment for every process that talks to this cluster: token auth, this token."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   # Every process pushes its metrics to its node's exporter each second (Ray's default: 10 s),
                   # so a trial process of a few seconds is seen before the search ends it.
                   RAY_metrics_report_interval_ms="1000")
        return env

    def start_node(self, head: bool, num_cpus: int = 1) -> subprocess.Popen:
        metrics_port = free_port()
        self.metrics_ports.append(metrics_port)
        # The `ray` script of this interpreter's environment: CI runs pytest without activating the venv.
        args = [str(Path(sys.executable).with_name("ray")), "start", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0",
                f"--metrics-export-port={metrics_port}", f"--dashboard-agent-listen-port={free_port()}",
                "--node-ip-address=127.0.0.1"]
        if head:
            args += ["--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp_dir}",
                     "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"]
        else:
            args += [f"--address={self.address}"]
        log = open(self.temp_dir / f"node{len(self.nodes)}.log", "w")
        node = subprocess.Popen(args, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(node)
        return node

    def wait_for_nodes(self, count: int, timeout: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                alive = [n for n in self.get("/api/v0/nodes")["data"]["result"]["result"] if n["state"] == "ALIVE"]
                if len(alive) >= count:
                    return alive
            except (urllib.error.URLError, ConnectionError, KeyError, TypeError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes did not come up in {timeout:.0f} s (logs: {self.temp_dir})")

    def get(self, path: str, token: str | None = "own") -> dict:
        """GET a dashboard endpoint, authenticated with this cluster's token unless token=None."""
        request = urllib.request.Request(self.dashboard + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {self.token if token == 'own' else token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def actors(self, class_name: str) -> list[dict]:
        """The state API's actors of one class (alive and recently dead)."""
        path = f"/api/v0/actors?limit=1000&detail=1&filter_keys=class_name&filter_predicates=%3D&filter_values={class_name}"
        return self.get(path)["data"]["result"]["result"]

    def metrics_text(self) -> str:
        text = []
        for port in self.metrics_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    text.append(response.read().decode())
            except (urllib.error.URLError, ConnectionError):
                pass
        return "\n".join(text)

    def session_pids(self, node: subprocess.Popen) -> list[int]:
        """Every live process in that node's session: `ray start`, raylet, GCS, workers."""
        return [proc.pid for proc in session_processes(node.pid)]

    def kill_node(self, node: subprocess.Popen) -> None:
        for pid in self.session_pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait(timeout=30)

    def stop(self) -> list[int]:
        """Stop the nodes (workers first); returns the pids of this cluster still alive after it."""
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
                try:
                    node.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self.kill_node(node)
        deadline = time.monotonic() + 15  # SIGKILLed processes take a moment to be gone
        while (leftovers := [pid for node in self.nodes for pid in self.session_pids(node)]) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return leftovers


def start_two_node_cluster() -> LocalCluster:
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")))
    try:
        cluster.start_node(head=True)
        cluster.wait_for_nodes(1)
        cluster.start_node(head=False)
        cluster.wait_for_nodes(2)
    except BaseException:
        cluster.stop()
        raise
    return cluster
