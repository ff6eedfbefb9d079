"""Resume: SIGKILL the driver mid-search, then `run --resume` finishes it without losing or re-running trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import yaml

from search.__main__ import main
from search.execution.processes import kill_session
from search.execution.run import run_search
from search.outcome.study import load_study
from tests.conftest import REPO, small_space


def recorded(out: Path) -> dict[str, list[dict]]:
    """trial id → the results Tune has recorded for it so far."""
    trials = {}
    for result_file in (out / "tune").glob("run_trial_*/result.json"):
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if results:
            trials[results[-1]["trial_id"]] = results
    return trials


def finished_trials(out: Path, epochs: int) -> dict[str, list[dict]]:
    """trial id → the results Tune recorded for it, for trials whose last epoch is recorded."""
    return {trial: results for trial, results in recorded(out).items() if results[-1].get("epoch") == epochs}


def terminated(out: Path) -> set[str]:
    """Trials Tune's latest snapshot of its experiment state holds as finished: what a resume keeps. A trial whose
    last epoch is on disk but whose snapshot was taken before it returned is still RUNNING there, and a resume
    trains it again (Tune's rule for a trial without a checkpoint)."""
    states = sorted((out / "tune").glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        trials = [json.loads(data) for data, _ in json.loads(states[-1].read_text())["trial_data"]]
    except json.JSONDecodeError:  # read while Tune rewrites it: the next poll sees the whole file
        return set()
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


def kept_trials(out: Path, epochs: int) -> dict[str, list[dict]]:
    """Finished trials, as recorded, that a resume must keep (see `terminated`)."""
    done = terminated(out)
    return {trial: results for trial, results in finished_trials(out, epochs).items() if trial in done}


def test_sigkilled_search_resumes_without_losing_or_rerunning_trials(real_chips, tmp_path, embedded_ray):
    epochs = 4  # a warm trial of 4 tiny epochs lasts seconds: time to kill the driver in the middle of the search
    trials = 3  # one at a time: at the kill at least one has finished and at least the last one has not
    space = small_space(real_chips, tiers={2: ["em_prithvi"]}, **{
        "techniques.gradient_checkpointing": [False], "training.num_samples": trials, "training.epochs": epochs,
        "training.grace_period": epochs, "resources.max_concurrent_trials": 1})
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    out = tmp_path / "run"
    # Tune snapshots its state and result files (what the poll below reads) every second, not every 10 s: on a fast
    # machine the whole search could end before its first snapshot (tests/test_slurm.py saw it).
    driver = subprocess.Popen([sys.executable, "-m", "search", "run", str(space_file), "--out", str(out)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    deadline = time.monotonic() + 300
    # Kill the driver as soon as the second trial has reported an epoch (one trial at a time: the first has
    # finished by then). The kill usually lands early in the second trial; on a fast machine the second may have
    # finished before the poll sees it (its results reach the driver in a burst), never the third.
    while time.monotonic() < deadline and driver.poll() is None:
        if len(recorded(out)) >= 2:
            break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    before = kept_trials(out, epochs)
    assert 1 <= len(before) < trials, f"expected a search cut short, saw finished {sorted(before)}"
    driver.wait()
    kill_session(driver.pid)  # the embedded Ray the killed driver started
    assert not (out / "results.parquet").exists()

    outcome = run_search(space_file, out, resume=True)
    rows = outcome.rows
    assert len(rows) == trials and len({r["trial_id"] for r in rows}) == trials
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert set(before) <= {r["trial_id"] for r in rows}
    after = finished_trials(out, epochs)
    for trial_id, results in before.items():  # finished before the kill: kept, not trained again
        assert after[trial_id] == results  # same results, same timestamps
    assert (out / "best.yaml").is_file()
    assert len(pq.read_table(out / "results.parquet")) == trials
    # The Optuna study went on from its journal: three trials, numbers 0-2, each told COMPLETE once.
    assert sorted(r["trial_number"] for r in rows) == list(range(trials))
    study = load_study(out, space["name"])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * trials


def test_resume_refuses_a_directory_without_a_run(real_chips, write_space, tmp_path, capsys):
    space_file = write_space(small_space(real_chips))
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    assert main(["run", str(space_file), "--out", str(empty), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --resume {empty}: holds no search run to resume") and "\n" not in err
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]  # nothing added, nothing removed


def test_sigterm_during_a_search_ends_it_with_one_line_saying_how_to_resume(tmp_path):
    """`kill` or a scheduler's SIGTERM while the search runs: exit 143 and one line naming the resume command,
    instead of Ray's handler's stack traces (the run directory is resumable as after SIGKILL, above)."""
    program = ("import os, signal, time\nfrom pathlib import Path\n"
               "from search.execution.run import resumable_on_sigterm\n"
               "with resumable_on_sigterm('spaces/x.yaml', Path('/runs/x')):\n"
               "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\n"
               "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM and done.stdout == ""
    assert done.stderr == ("search stopped by SIGTERM; go on with: "
                           "python -m search run spaces/x.yaml --out /runs/x --resume\n")


KILLED_MID_WRITE = """import sys, time, pyarrow.fs as pafs
from search.data.storage import whole_file_storage
fs = whole_file_storage(sys.argv[2]) if sys.argv[1] == "whole" else pafs.LocalFileSystem()
stream = fs.open_output_stream(sys.argv[2])
stream.write(b"new state " * 50_000)
stream.flush()
print("half", flush=True)
time.sleep(60)
stream.write(b"new state " * 50_000)
stream.close()
"""


def killed_mid_write(filesystem: str, target: Path) -> bytes:
    """What `target` holds after a process that was rewriting it through pyarrow, as Tune's sync does, is killed."""
    target.write_bytes(b"old state, whole")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, filesystem, str(target)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "half\n"
    writer.kill()
    writer.wait()
    return target.read_bytes()


def test_a_state_file_rewritten_when_the_driver_is_killed_stays_whole(tmp_path):
    """Tune copies its experiment state into storage with pyarrow. Straight into the file, a kill mid-copy leaves a
    part of the new state that no resume can read (the CI failure: EOFError unpickling the searcher); through the
    run's storage filesystem the old whole file stays until the new one is whole."""
    assert killed_mid_write("local", tmp_path / "plain.pkl") == b"new state " * 50_000  # half of the new state
    assert killed_mid_write("whole", tmp_path / "state.pkl") == b"old state, whole"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".state.pkl.")  # removed by the next --resume
