"""`search load`: a many-trial search with trivial budgets, watched from outside the driver.

The driver runs as its own process (its own session), exactly as a user starts it; this module
samples its resident memory while it runs, and after it exits lists every process still alive in
its session 30 s later: Ray processes a clean `ray.shutdown()` should have stopped. Trials are tiny Prithvi
models for one epoch on the packaged chips, so the figures measure the search machinery (Tune,
Optuna, trial scheduling, result handling), not training.

Trials train in reused Tune actors, so the same process trains trial after trial: each trial records
its process's resident memory when it starts (`rss_mb_at_start` in results.parquet); the growth of
that figure from each process's second trial to its last is what a leak between trials would show.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from search.execution.processes import kill_session, session_processes
from search.outcome.export import write_results

SHUTDOWN_GRACE_S = 30.0  # how long after the driver exits its Ray processes may take to end


@dataclass(frozen=True)
class LoadReport:
    trials: int
    completed: int
    failed: int
    wall_s: float
    trials_per_minute: float
    driver_rss_mb_after_first_trial: float
    driver_rss_mb_peak: float
    driver_rss_mb_last: float
    driver_growth_mb: float
    trial_processes: int
    trial_rss_mb_second_trial: float  # mean over processes, at the start of each one's second trial
    trial_rss_mb_last_trial: float  # mean over processes, at the start of each one's last trial
    trial_rss_growth_mb_per_trial: float  # mean slope between the two, per trial trained in between
    leftover_processes: int
    exit_code: int


def load_space(trials: int, data_root: str | None) -> dict:
    return {
        "name": f"load{trials}", "scale": "tiny", "tiers": {2: ["em_prithvi"]},
        "techniques": {"quantization_bits": [16], "lora_rank": [0], "gradient_checkpointing": [False]},
        "training": {"learning_rate": {"low": 1e-4, "high": 3e-3}, "batch_size": [4], "epochs": 1,
                     "grace_period": 1, "reduction_factor": 2, "num_samples": trials, "seed": 0},
        "data": {"root": data_root, "tile_size": 112},
        "decoder": {"name": "UperNetDecoder", "channels": 16},
        "evaluation": {"folds": 0},  # the search machinery alone; no held-out stage
    }


def trial_process_growth(rows: list[dict]) -> tuple[float, float, float]:
    """Mean RSS at the start of each process's second and last trial, and the mean growth per trial between.

    The first trial is left out: it imports the model stack and allocates what every later trial reuses."""
    seconds, lasts, slopes = [], [], []
    for pid in {r["pid"] for r in rows if r["pid"]}:
        mine = sorted((r for r in rows if r["pid"] == pid and r["rss_mb_at_start"]),
                      key=lambda r: r["trials_before_in_process"])
        if len(mine) >= 3:
            first, final = mine[1], mine[-1]
            seconds.append(first["rss_mb_at_start"])
            lasts.append(final["rss_mb_at_start"])
            steps = final["trials_before_in_process"] - first["trials_before_in_process"]
            slopes.append((final["rss_mb_at_start"] - first["rss_mb_at_start"]) / steps)
    mean = (lambda v: sum(v) / len(v) if v else float("nan"))
    return mean(seconds), mean(lasts), mean(slopes)


def finished_trials(run_dir: Path) -> int:
    return sum(1 for f in (run_dir / "tune").glob("run_trial_*/result.json") if f.stat().st_size > 0)



def outliving(leader: int, grace_s: float) -> list[psutil.Process]:
    """The session's processes still alive `grace_s` after its driver exited (a clean shutdown ends them in a
    few seconds; a busy 2-CPU machine once needed more than the 5 s this used to allow)."""
    deadline = time.monotonic() + grace_s
    while (left := session_processes(leader)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def run_load(trials: int, out: Path, data_root: str | None = None, echo=print) -> LoadReport:
    out.mkdir(parents=True, exist_ok=True)
    space_file, run_dir = out / f"load{trials}.yaml", out / f"load{trials}-run"
    space_file.write_text(yaml.safe_dump(load_space(trials, data_root)))
    started = time.monotonic()
    driver = subprocess.Popen([sys.executable, "-m", "search", "run", str(space_file), "--out", str(run_dir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    process = psutil.Process(driver.pid)
    samples: list[tuple[int, float]] = []  # (trials finished, driver RSS MB)
    while driver.poll() is None:
        try:
            samples.append((finished_trials(run_dir), process.memory_info().rss / 2**20))
        except (psutil.Error, OSError):
            pass
        time.sleep(2)
    wall = time.monotonic() - started
    leftovers = outliving(driver.pid, SHUTDOWN_GRACE_S)
    for proc in leftovers:
        try:
            echo(f"leftover: pid {proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    kill_session(driver.pid)
    rows = pq.read_table(run_dir / "results.parquet").to_pylist() if (run_dir / "results.parquet").exists() else []
    after_first = [rss for done, rss in samples if done >= 1] or [rss for _, rss in samples] or [0.0]
    second, last, slope = trial_process_growth(rows)
    report = LoadReport(
        trials=len(rows), completed=sum(r["status"] == "completed" for r in rows),
        failed=sum(r["status"] == "failed" for r in rows), wall_s=wall,
        trials_per_minute=len(rows) / (wall / 60) if wall > 0 else 0.0,
        driver_rss_mb_after_first_trial=after_first[0], driver_rss_mb_peak=max(after_first),
        driver_rss_mb_last=after_first[-1], driver_growth_mb=after_first[-1] - after_first[0],
        trial_processes=len({r["pid"] for r in rows if r["pid"]}), trial_rss_mb_second_trial=second,
        trial_rss_mb_last_trial=last, trial_rss_growth_mb_per_trial=slope,
        leftover_processes=len(leftovers), exit_code=driver.returncode)
    write_results(pa.Table.from_pylist([asdict(report)]), out / f"load{trials}.parquet")
    write_results(pa.table({"trials_finished": [done for done, _ in samples],
                            "driver_rss_mb": [rss for _, rss in samples]}), out / f"load{trials}-rss.parquet")
    echo("\n".join(f"{key:32s} {value:.1f}" if isinstance(value, float) else f"{key:32s} {value}"
                   for key, value in asdict(report).items()))
    return report


def load_command(args) -> int:
    """`python -m search load`: exit 1 when the search left processes behind."""
    return 0 if run_load(args.trials, args.out, args.data_root).leftover_processes == 0 else 1
