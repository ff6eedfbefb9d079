"""Trial resources and concurrency come from the cluster, so trials can never starve their workers."""

from __future__ import annotations

import pytest

from search.execution.tuner import ResourceError, plan_resources
from search.plan.space import parse_space
from tests.conftest import small_space


def space_with(**resources):
    return parse_space({**small_space(None, **{"training.num_samples": 16}), "resources": resources})


def test_two_cpu_laptop_runs_two_single_worker_trials():
    trial, concurrent = plan_resources({"CPU": 2.0, "memory": 1e10}, space_with())
    assert (trial.num_workers, trial.cpus_per_worker, trial.gpus_per_worker) == (1, 1.0, 0.0)
    assert concurrent == 2


def test_gpu_cluster_packs_by_memory_by_default_and_counts_whole_gpus_when_told():
    trial, concurrent = plan_resources({"CPU": 64.0, "GPU": 8.0}, space_with(workers_per_trial=2, cpus_per_worker=4))
    assert trial.use_gpu and trial.packed and trial.gpus_per_worker == 1.0
    assert concurrent == 8  # packed: each trial's share is its own, so CPUs bound it (64 / (2 x 4))
    trial, concurrent = plan_resources({"CPU": 64.0, "GPU": 8.0},
                                       space_with(workers_per_trial=2, cpus_per_worker=4, pack="whole"))
    assert not trial.packed and concurrent == 4  # 8 GPUs / (2 workers x 1 GPU); CPUs would allow 8
    trial, _ = plan_resources({"CPU": 64.0, "GPU": 8.0}, space_with(gpus_per_worker=0.5))
    assert not trial.packed and trial.gpus_per_worker == 0.5  # a space that fixes the count keeps it
    trial, _ = plan_resources({"CPU": 2.0}, space_with())
    assert not trial.packed and not trial.use_gpu  # CPU-only clusters: as before


def test_concurrency_capped_by_space_and_samples():
    _, concurrent = plan_resources({"CPU": 64.0}, space_with(max_concurrent_trials=3))
    assert concurrent == 3
    _, concurrent = plan_resources({"CPU": 1000.0}, space_with())
    assert concurrent == 16


def test_trial_larger_than_cluster_is_refused():
    with pytest.raises(ResourceError, match=r"one trial needs 4 CPU \(2 workers\), the cluster has 2"):
        plan_resources({"CPU": 2.0}, space_with(workers_per_trial=2, cpus_per_worker=2))


def test_fractional_gpus_pack_the_capacity_tables_trials_onto_one_node():
    # clusters/README.md: InternVL2-26B QLoRA + checkpointing, 4 trials per 80 GB GPU → gpus_per_worker 0.25
    space = parse_space({**small_space(None, **{"training.num_samples": 100}),
                         "resources": {"gpus_per_worker": 0.25, "cpus_per_worker": 5}})
    trial, concurrent = plan_resources({"CPU": 192.0, "GPU": 8.0}, space)
    assert trial.gpus_per_worker == 0.25 and concurrent == 32  # GPUs bind: 8 / 0.25; CPUs would allow 38


def test_trial_processes_that_do_not_train_import_no_model_stack():
    """Tune pickles search.execution.trial into every trial actor and a DDP trial's Train controller imports it; neither
    imports TerraTorch, Lightning or bitsandbytes until something trains there (README: start-up cost)."""
    import subprocess
    import sys

    probe = ("import pickle, sys, search.execution.trial as t; "
             "pickle.loads(pickle.dumps(t.train_worker)); pickle.loads(pickle.dumps(t.run_trial)); "
             "print(sorted(m for m in ('terratorch', 'lightning', 'bitsandbytes', 'peft', 'em_backbones') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
