"""GPU packing by predicted memory, on a local Ray cluster that declares GPUs (Ray schedules declared GPUs on a CPU
machine; the trials train on the CPU there): light trials share a GPU, heavy ones have it alone, no GPU's shares
ever pass its memory, and an out-of-memory trial runs again once with twice its share.

Every proposal is Clay (tiny) at a share just under half the GPU: two fit side by side, and Tune starts up to three
at once, so light trials share the GPU whatever Optuna proposes; the out-of-memory retries ask for twice that
share, just under the whole GPU: those are the heavy trials that must have it alone."""

from __future__ import annotations

import itertools

import pyarrow.parquet as pq
import pytest
import ray
import yaml

from search.execution.run import run_search
from search.outcome.study import load_study
from tests.conftest import small_space

GPU_GB = 0.10  # per GPU (resources.gpu_memory_gb): Clay tiny asks for 0.47 of it, a retry of it for 0.94


@pytest.fixture(scope="module")
def packed_run(real_chips, tmp_path_factory, no_ray):
    tmp = tmp_path_factory.mktemp("packed")
    space = small_space(real_chips, tiers={2: ["em_clay"]}, **{
        "techniques.gradient_checkpointing": [False], "training.num_samples": 5, "training.epochs": 1,
        "training.scheduler": "fifo", "memory.overhead_gb": 0.0,
        "resources.gpu_memory_gb": GPU_GB, "resources.max_concurrent_trials": 3,
        # Optuna trial 2 runs out of memory once (its retry succeeds), trial 3 on both of its runs.
        "faults": [{"trial": 2, "kind": "oom", "epoch": 1, "attempts": 1},
                   {"trial": 3, "kind": "oom", "epoch": 1, "attempts": 2}]})
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    ray.init(num_cpus=3, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_search(tmp / "space.yaml", tmp / "run", echo=lambda line: None)
    finally:
        ray.shutdown()
    return outcome


def overlapping(a: dict, b: dict) -> bool:
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def test_light_trials_share_a_gpu_heavy_ones_have_it_alone_and_no_gpu_is_over_its_memory(packed_run):
    rows = [r for r in packed_run.rows if r["gpu_ids"]]
    assert rows and all(r["gpu_share"] is not None and len(r["gpu_ids"]) == 1 for r in rows)
    for r in rows:  # the share is (prediction + overhead) x 1.1 over the GPU's memory, to a hundredth up
        assert r["gpu_share"] >= r["predicted_gb"] * 1.1 / GPU_GB * (1 + r["oom_retries"]) - 1e-9 or r["gpu_share"] == 1
    light = [r for r in rows if r["gpu_share"] <= 0.5]
    heavy = [r for r in rows if r["gpu_share"] > 0.75]
    assert light and heavy
    # Light trials side by side on one GPU; a heavy trial never beside another trial on its GPU.
    assert any(a["gpu_ids"] == b["gpu_ids"] and overlapping(a, b) for a, b in itertools.combinations(light, 2))
    for h in heavy:
        assert not any(o is not h and o["gpu_ids"] == h["gpu_ids"] and overlapping(o, h) for o in rows)
    # At no moment do the predictions of the trials on one GPU (with overhead and margin) exceed its memory.
    for moment in {r["started_at"] for r in rows}:
        for gpu in {r["gpu_ids"][0] for r in rows}:
            on_it = [r for r in rows if r["gpu_ids"] == [gpu] and r["started_at"] <= moment < r["finished_at"]]
            assert sum(r["gpu_share"] for r in on_it) <= 1.0 + 1e-9
            assert sum(r["predicted_gb"] * 1.1 for r in on_it) <= GPU_GB + 1e-9


def test_out_of_memory_is_retried_once_with_twice_the_share_and_only_a_second_one_fails(packed_run):
    rows = packed_run.rows
    by_number = {}
    for r in rows:
        by_number.setdefault(r["trial_number"], []).append(r)
    first, retry = sorted(by_number[2], key=lambda r: r["oom_retries"])
    assert (first["status"], first["cause"]) == ("oom_retried", "out_of_memory")
    assert retry["status"] == "completed" and retry["oom_retries"] == 1 and retry["retry_of"] == first["trial_id"]
    assert retry["gpu_share"] == pytest.approx(min(1.0, 2 * first["gpu_share"]))
    twice = sorted(by_number[3], key=lambda r: r["oom_retries"])
    assert [r["status"] for r in twice] == ["oom_retried", "failed"] and twice[1]["cause"] == "out_of_memory"
    # Five configurations were proposed (retries are not new ones); Optuna heard each one's final outcome.
    assert len(by_number) == 5
    study = load_study(packed_run.out_dir, "test")
    states = {t.number: t.state.name for t in study.trials}
    assert states[2] == "COMPLETE" and states[3] == "FAIL" and len(study.trials) == 5
    assert len(pq.read_table(packed_run.out_dir / "results.parquet")) == 7
