"""Debian's Prometheus, configured by the scrape file Ray generates for its cluster
(`<temp dir>/session_latest/metrics/prometheus/prometheus.yml`: every node's metrics port, found through the
service-discovery file Ray keeps up to date). Only the scrape interval is shortened, from Ray's 10 s to 1 s,
so a search of seconds is scraped several times.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from search.execution.processes import end_session
from tests.debian import command_path, missing_reason
from tests.local_cluster import free_port

RAY_SCRAPE_CONFIG = Path("session_latest", "metrics", "prometheus", "prometheus.yml")


def prometheus_missing() -> str | None:
    return missing_reason(("prometheus",), ("prometheus",))


@dataclass
class Prometheus:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str | float) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}",
                                    timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)

    def query_range(self, expr: str, start: float, end: float, step: float = 1) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)

    def stop(self) -> None:
        end_session(self.process)


def start_prometheus(ray_temp_dir: Path, data_dir: Path) -> Prometheus:
    config = yaml.safe_load((ray_temp_dir / RAY_SCRAPE_CONFIG).read_text())
    config["global"]["scrape_interval"] = "1s"
    data_dir.mkdir(parents=True)
    (data_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(data_dir / "prometheus.log", "w")
    process = subprocess.Popen([command_path("prometheus"), f"--config.file={data_dir / 'prometheus.yml'}",
                                f"--storage.tsdb.path={data_dir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prometheus = Prometheus(process, port)
    deadline = time.monotonic() + 60
    while True:
        try:
            # Ready, and both of the cluster's nodes found through Ray's service-discovery file.
            targets = json.loads(urllib.request.urlopen(f"{prometheus.url}/api/v1/targets", timeout=5).read())
            if len(targets["data"]["activeTargets"]) >= 2:
                return prometheus
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            prometheus.stop()
            raise RuntimeError(f"Prometheus did not find the cluster's nodes (log: {data_dir / 'prometheus.log'})")
        time.sleep(0.5)
