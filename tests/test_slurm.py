"""clusters/slurm/search.sbatch against a real slurmctld and two slurmd on this machine (tests/slurm_cluster.py).

Two jobs of two nodes each over one tiny space: the first is cancelled with `scancel` once a trial has finished;
the second resumes it with `--resume`, keeps that trial, trains the rest on both SLURM nodes and ends COMPLETED
with none of its Ray processes left; SLURM's own accounting (slurmdbd, `sacct`) records both jobs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, small_space
from tests.slurm_cluster import NODES, start_slurm_cluster, unavailable
from tests.test_resume import finished_trials, kept_trials

SCRIPT = REPO / "clusters" / "slurm" / "search.sbatch"
EPOCHS = 3
# Six trials, two at a time, and Tune's snapshots of its state and result files (what a resume reads, and what
# this test polls) every second instead of every 10 s (`TUNE_GLOBAL_CHECKPOINT_S`): a finished trial shows within a
# second and the cancel lands mid-search. With Tune's default, a fast machine finished the whole search before its
# first snapshot, and the cancel came after the end.
TRIALS = 6


@pytest.fixture(scope="module")
def slurm():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = start_slurm_cluster()
    yield cluster
    cluster.stop()


def job_processes(job_id: str) -> list[psutil.Process]:
    """Live processes SLURM started for that job (they carry its id in their environment), Ray's included."""
    left = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SLURM_JOB_ID") == job_id:
                left.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return left


def accounted(slurm, job_id: str, timeout: float = 30) -> str:
    """The job's sacct line once slurmctld has sent its end to slurmdbd."""
    deadline = time.monotonic() + timeout
    while not (line := slurm.sacct(job_id)) or line.split("|")[2] in ("RUNNING", "PENDING"):
        assert time.monotonic() < deadline, f"sacct has no finished record of job {job_id}: {line!r}"
        time.sleep(1)
    return line


def ray_nodes_of(output: str) -> dict[str, str]:
    """Ray node id -> SLURM node, from the lines the script prints once every node has joined."""
    return dict(re.findall(r"em-search: ray node (\w+) on (\S+) ", output))


def test_sbatch_search_cancelled_then_resumed_on_two_nodes(slurm, real_chips, tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(small_space(real_chips, name="slurm", tiers={2: ["em_prithvi"]}, **{
        "techniques.gradient_checkpointing": [False], "training.num_samples": TRIALS, "training.epochs": EPOCHS,
        "training.grace_period": EPOCHS, "evaluation.folds": 0})))
    out = tmp_path / "runs" / "slurm-search"
    env = {"EM_SEARCH_PYTHON": sys.executable, "EM_SEARCH_RUNS": str(tmp_path / "runs"), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    submit = ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", f"--output={tmp_path}/job-%j.out")

    # Job 1: cancelled once a trial has finished and the search is still going.
    first = slurm.sbatch(*submit, str(SCRIPT), str(space_file), "--out", str(out), cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while not kept_trials(out, EPOCHS):
        assert slurm.job(first).get("JobState") in ("PENDING", "RUNNING"), slurm.job(first)
        assert time.monotonic() < deadline, "no trial finished in job 1"
        time.sleep(0.5)
    subprocess.run(["scancel", first], env=slurm.env(), check=True)
    job = slurm.wait_for_job(first, timeout=120)
    assert job["JobState"] == "CANCELLED"
    before = kept_trials(out, EPOCHS)
    first_output = (tmp_path / f"job-{first}.out").read_text()
    assert f"stopping the search (resume with: --out {out} --resume)" in first_output
    assert not (out / "results.parquet").exists() and (out / "optuna_journal.log").is_file()
    assert 1 <= len(before) < TRIALS

    # Job 2: resumes the run directory and finishes it.
    second = slurm.sbatch(*submit, str(SCRIPT), str(space_file), "--out", str(out), "--resume", cwd=REPO, env=env)
    job = slurm.wait_for_job(second, timeout=420)
    second_output = (tmp_path / f"job-{second}.out").read_text()
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", second_output[-3000:]
    assert "— resuming" in second_output
    # The resumed search in its fresh process prints as quietly as a new one: no Tune box, results path or
    # TensorBoard hint (a restored Tuner printed them when Tune's output switches were set for new ones only).
    for unwanted in ("TensorBoard", "View detailed results", "Configuration for experiment"):
        assert unwanted not in first_output and unwanted not in second_output, unwanted

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == TRIALS and all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    after = finished_trials(out, EPOCHS)
    for trial_id, results in before.items():  # finished before scancel: kept as they were, not trained again
        assert after[trial_id] == results
    # The trials job 2 trained ran on both of its SLURM nodes (Ray node ids as the script printed them).
    nodes = ray_nodes_of(second_output)
    assert sorted(nodes.values()) == list(NODES)
    trained_in_second = [r for r in rows if r["trial_id"] not in before]
    assert {nodes[n] for r in trained_in_second for n in r["worker_node_ids"]} == set(NODES)
    # SLURM's accounting agrees: two nodes each, the first cancelled, the second completed with exit 0.
    first_line, second_line = accounted(slurm, first), accounted(slurm, second)
    print(f"sacct: {first_line}\nsacct: {second_line}")
    assert first_line.split("|")[2].startswith("CANCELLED") and first_line.split("|")[4] == "2"
    assert second_line.split("|")[2:5] == ["COMPLETED", "0:0", "2"]
    # Nothing of either job is left running, and the jobs' Ray temp dirs are gone.
    for job_id in (first, second):
        assert job_processes(job_id) == []
        assert not Path(f"/tmp/ray-{job_id}").exists()

