"""From one machine to a cluster: multi-worker (DDP) trials, a real two-node Ray cluster started with
`ray start`, the dashboard's token auth and state API, and live search metrics."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from search.data.tiles import PreparedData
from search.execution.run import run_search
from tests.conftest import REPO, small_space
from tests.local_cluster import start_two_node_cluster
from tests.prometheus import Prometheus, prometheus_missing, start_prometheus

SEARCH = "twonodes"
TRIAL_ACTOR = "ImplicitFunc"  # a single-worker trial trains in its Tune actor (a function trainable, reused)


def prithvi_space(real_chips, **overrides) -> dict:
    return small_space(real_chips, tiers={2: ["em_prithvi"]}, **{
        "techniques.gradient_checkpointing": [False], "training.epochs": 1, **overrides})


def test_two_workers_per_trial_train_data_parallel_on_shards_of_the_data(real_chips, tmp_path, embedded_ray):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(prithvi_space(real_chips, **{
        "training.num_samples": 1, "resources.workers_per_trial": 2})))
    answers: list[int] = []

    def echo(line: str) -> None:
        # Safe default: the embedded dashboard listens on loopback only and wants Ray's token.
        found = re.search(r"Ray dashboard: (http://\S+)", line)
        if found:
            assert found.group(1).startswith("http://127.0.0.1:")
            with pytest.raises(urllib.error.HTTPError) as unauthorised:
                urllib.request.urlopen(found.group(1) + "/api/v0/actors", timeout=10)
            answers.append(unauthorised.value.code)

    outcome = run_search(space_file, tmp_path / "run", echo=echo)
    assert answers == [401]
    (row,) = outcome.rows
    assert row["status"] == "completed", row["error"]
    assert row["workers"] == 2 and len(row["worker_peak_gb"]) == 2 and len(row["worker_node_ids"]) == 2
    # Memory is per worker: the larger of the two workers' own peaks, not their sum.
    assert row["peak_gb"] == pytest.approx(max(row["worker_peak_gb"]))
    assert 0.5 * row["predicted_gb"] < row["peak_gb"] < 2 * row["predicted_gb"]
    assert math.isfinite(row["train_loss"]) and 0.0 <= row["val_miou"] <= 1.0
    assert len(row["val_miou_per_epoch"]) == 1
    # Each worker sees half of the training tiles in full batches (the BatchSampler bug gave batches of 1).
    train_tiles = len(PreparedData.load(outcome.out_dir / "data").tiles["train"])
    batch_size = row["batch_size"]
    assert row["train_batches"] == math.ceil(train_tiles / 2) // batch_size
    assert row["train_batches"] < train_tiles // batch_size


@pytest.fixture(scope="module")
def two_nodes():
    cluster = start_two_node_cluster()
    yield cluster
    leftovers = cluster.stop()
    assert leftovers == [], f"processes of the test cluster survived stop(): {leftovers}"


@dataclass
class TwoNodeSearch:
    output: str
    out: Path
    store: Path
    best_seen: list[float]  # the search's gauges as the nodes' metrics endpoints showed them while it ran
    done_seen: list[float]
    prometheus: Prometheus | None
    prometheus_missing: str | None  # why no Prometheus could be started here
    window: tuple[float, float]  # when the search ran (Unix seconds)


@pytest.fixture(scope="module")
def two_node_search(two_nodes, real_chips, tmp_path_factory):
    """One search on the two-node cluster, watched by the nodes' metrics endpoints and by Debian's Prometheus
    started with the scrape configuration Ray generated for this cluster."""
    tmp_path = tmp_path_factory.mktemp("twonodes")
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(prithvi_space(real_chips, name=SEARCH, **{"training.num_samples": 3})))
    out, store = tmp_path / "run", tmp_path / "store"
    missing = prometheus_missing()
    prometheus = None if missing else start_prometheus(two_nodes.temp_dir, tmp_path / "prometheus")
    started = time.time()
    search = subprocess.Popen([sys.executable, "-m", "search", "run", str(space_file), "--out", str(out),
                               "--address", two_nodes.address, "--storage", store.as_uri()],
                              cwd=REPO, env=two_nodes.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    best_seen, done_seen = [], []
    gauge = re.compile(r'^ray_(search_\w+)\{[^}]*search="' + SEARCH + r'"[^}]*\} (\S+)$', re.M)
    while search.poll() is None:
        for metric, value in gauge.findall(two_nodes.metrics_text()):
            (best_seen if metric == "search_best_objective" else done_seen if metric == "search_trials_done"
             else []).append(float(value))
        time.sleep(1)
    output = search.stdout.read()
    assert search.returncode == 0, output[-3000:]
    yield TwoNodeSearch(output, out, store, best_seen, done_seen, prometheus, missing, (started, time.time()))
    if prometheus is not None:
        prometheus.stop()


def test_search_joins_a_two_node_cluster_uses_both_nodes_and_is_visible_in_the_dashboard(two_nodes, two_node_search):
    output, out, store = two_node_search.output, two_node_search.out, two_node_search.store
    # The search printed where to watch it, and the dashboard asks for the token as Ray intends.
    assert f"Ray dashboard: http://127.0.0.1:{two_nodes.dashboard_port}" in output
    assert "ray get-auth-token" in output
    with pytest.raises(urllib.error.HTTPError) as unauthorised:
        two_nodes.get("/api/v0/actors", token=None)
    assert unauthorised.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        two_nodes.get("/api/v0/actors", token="not-the-token")
    assert forbidden.value.code == 403

    # Both nodes trained, and the state API agrees with results.parquet on where.
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    result_nodes = {node for r in rows for node in r["worker_node_ids"]}
    cluster_nodes = {n["node_id"] for n in two_nodes.get("/api/v0/nodes")["data"]["result"]["result"]}
    assert result_nodes == cluster_nodes and len(cluster_nodes) == 2
    assert {a["node_id"] for a in two_nodes.actors(TRIAL_ACTOR)} == result_nodes
    # Both nodes' single CPU busy at once: two trials on different nodes ran side by side.
    overlaps = [(min(a["finished_at"], b["finished_at"]) - max(a["started_at"], b["started_at"])).total_seconds()
                for a, b in itertools.combinations(rows, 2) if a["worker_node_ids"] != b["worker_node_ids"]]
    assert overlaps and max(overlaps) >= 5, overlaps

    # The storage URI holds the run directory's layout: the tiles trials read, Tune's and Train's results.
    mirrored = store / out.name
    for name in ("space.yaml", "results.parquet", "best.yaml", "summary.json", "data/prepared.json"):
        assert (mirrored / name).is_file(), name
    assert (mirrored / "data").is_dir() and (mirrored / "tune").is_dir()
    trial_dirs = sorted(p.name for p in (mirrored / "tune").glob("run_trial_*") if p.is_dir())
    assert len(trial_dirs) == 3 and all(any(d.startswith(f"run_trial_{r['trial_id']}") for d in trial_dirs)
                                        for r in rows)
    assert not (mirrored / "train").exists()  # single-worker trials train in their Tune actors: no Ray Train runs

    # Live metrics reached the nodes' Prometheus endpoints while the search ran.
    assert two_node_search.done_seen and max(two_node_search.done_seen) >= 2
    objectives = [r["objective"] for r in rows]
    best_seen = two_node_search.best_seen
    assert best_seen and any(math.isclose(max(best_seen), o, rel_tol=1e-6) for o in objectives)


def test_prometheus_reads_the_search_metrics_with_rays_scrape_config_and_every_dashboard_panel_has_data(
        two_node_search):
    """Debian's Prometheus, configured only by the file Ray generated, scraped both nodes during the search; each
    panel of clusters/grafana/search-dashboard.json, evaluated by that Prometheus over the search's time, returns
    the search's own figures (GPU panels: nothing, on nodes without a GPU)."""
    if two_node_search.prometheus is None:
        pytest.skip(two_node_search.prometheus_missing)
    prometheus, window = two_node_search.prometheus, two_node_search.window
    rows = pq.read_table(two_node_search.out / "results.parquet").to_pylist()
    done = prometheus.query(f'max_over_time(ray_search_trials_done{{search="{SEARCH}"}}[1h])')
    assert len(done) == 1 and 1 <= float(done[0]["value"][1]) <= len(rows)
    (best,) = prometheus.query(f'max_over_time(ray_search_best_objective{{search="{SEARCH}"}}[1h])')
    assert any(math.isclose(float(best["value"][1]), r["objective"], rel_tol=1e-6) for r in rows)
    # Per-trial CPU from both nodes' trial processes, tagged with the results' trial ids.
    cpu = prometheus.query(f'max_over_time(ray_search_trial_cpu_percent{{search="{SEARCH}"}}[1h])')
    assert {c["metric"]["trial"] for c in cpu} <= {r["trial_id"] for r in rows} and len(cpu) >= 2
    assert len({c["metric"]["instance"] for c in cpu}) == 2
    assert all(0 < float(c["value"][1]) <= 100 * os.cpu_count() + 10 for c in cpu)
    rss = prometheus.query(f'max_over_time(ray_search_trial_rss_gb{{search="{SEARCH}"}}[1h])')
    assert all(0.3 < float(r["value"][1]) < 16 for r in rss) and len(rss) == len(cpu)

    dashboard = json.loads((REPO / "clusters" / "grafana" / "search-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            series = prometheus.query_range(target["expr"].replace("$search", SEARCH), *window)
            expected_empty = "gpu" in target["expr"]  # no GPU on these nodes
            assert bool(series) != expected_empty, (panel["title"], target["expr"])


def test_trials_on_a_lost_node_are_retried_on_the_surviving_one(two_nodes, real_chips, tmp_path):
    """Runs after the test above on the same cluster: it kills the second node for good. The trial whose
    actor died with the node is restarted by Tune (`resources.max_failures`) on the head."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(prithvi_space(real_chips, name="nodeloss", **{
        "training.num_samples": 2, "training.epochs": 2, "training.grace_period": 2})))
    nodes = two_nodes.get("/api/v0/nodes")["data"]["result"]["result"]
    head = next(n["node_id"] for n in nodes if n["is_head_node"] and n["state"] == "ALIVE")
    lost = next(n["node_id"] for n in nodes if not n["is_head_node"] and n["state"] == "ALIVE")
    out = tmp_path / "run"
    search = subprocess.Popen([sys.executable, "-m", "search", "run", str(space_file), "--out", str(out),
                               "--address", two_nodes.address, "--storage", (tmp_path / "store").as_uri()],
                              cwd=REPO, env=two_nodes.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and search.poll() is None:
        if any(a["node_id"] == lost and a["state"] == "ALIVE" for a in two_nodes.actors(TRIAL_ACTOR)):
            break
        time.sleep(1)
    else:
        pytest.fail("no trial worker started on the second node")
    time.sleep(5)  # mid-training
    two_nodes.kill_node(two_nodes.nodes[1])
    output, _ = search.communicate(timeout=600)
    assert search.returncode == 0, output[-3000:]

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["completed", "completed"], [r["error"] for r in rows]
    # Both trials finished on the head: the one that lost its node was restarted there by Tune.
    assert all(r["worker_node_ids"] == [head] for r in rows)
    lost_workers = [a for a in two_nodes.actors(TRIAL_ACTOR) if a["node_id"] == lost]
    assert lost_workers and all(a["state"] == "DEAD" for a in lost_workers)


@pytest.mark.parametrize("flag, value, message", [
    ("--address", "127.0.0.1:9", "--address 127.0.0.1:9: no Ray cluster answers there"),
    ("--address", "headnode:http", "--address headnode:http: expected 'auto' or HOST:PORT"),
    ("--storage", "file:///proc/no-such-dir", "--storage file:///proc/no-such-dir/run: cannot write there"),
])
def test_unreachable_cluster_or_storage_fails_fast_with_one_line_and_no_run_directory(
        flag, value, message, real_chips, write_space, tmp_path, capsys):
    from search.__main__ import main

    out = tmp_path / "run"
    assert main(["run", str(write_space(small_space(real_chips))), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not out.exists()
