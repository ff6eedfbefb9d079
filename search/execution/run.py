"""`search run`: space file → prepared data → Ray Tune search → held-out stage and baselines → outputs.

Orchestration only: each step lives in its own module (data, tuner, confirm, baselines, export,
summary, report, storage); this one calls them in order, times them, and cleans up a run
directory that never got going.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from search.data.storage import check_writable, run_location, upload
from search.data.tiles import DataError, PreparedData, check_batches, prepare
from search.errors import UserError
from search.outcome.summary import RunOutcome
from search.plan.schema import Space
from search.plan.space import effective_space, load_space


class RunError(UserError, RuntimeError):
    """A run that cannot start; the run directory is removed before this is raised."""


RUN_RECORD = "run.json"  # where this run's Tune experiment and tiles live, for --resume


class Stopwatch:
    """Wall seconds per named step, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started


def default_out_dir(space: Space) -> Path:
    return Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim_out_dir(out: Path) -> None:
    """Create the run directory; refuse one that already holds files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out}: exists and is not empty; choose a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"--out {out}: cannot create the run directory ({err.strerror})") from None


def prepare_data(space: Space, out: Path, echo) -> PreparedData:
    """Tiles from a folder layout, or (with a base config) shapes and baseline tiles from the user's datamodule."""
    if space.base:
        from search.data.base_config import load_base
        from search.data.from_base import prepare_from_base

        prepared = prepare_from_base(load_base(space.base), space.base, out / "data", echo)
    else:
        prepared = prepare(space.data, out / "data", space.training.seed, warn=echo)
        check_batches(prepared, space.training.batch_size, space.resources.workers_per_trial)
    if space.evaluation.top_k and not prepared.tiles["test"]:
        raise DataError("evaluation.top_k: retraining on held-out chips needs a test split; name "
                        "data.test_chips, give more chips, or set evaluation.top_k: 0")
    return prepared


def start_run(space_path: str | Path, space: Space, out: Path, storage: str | None,
              echo) -> tuple[PreparedData, str, str]:
    """A new run directory: tiles prepared (and uploaded), space copied, run.json written last."""
    location = run_location(storage, out)
    if storage:
        check_writable(location)
    claim_out_dir(out)
    try:
        prepared = prepare_data(space, out, echo)
        shutil.copyfile(space_path, out / "space.yaml")
        data = str(prepared.root)
        if storage:
            data = f"{location}/data"
            upload(prepared.root, data)
        (out / RUN_RECORD).write_text(json.dumps({"location": location, "data": data}))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return prepared, location, data


def reopen_run(space_path: str | Path, out: Path) -> tuple[PreparedData, str, str]:
    """An interrupted run directory, checked to be one this space started."""
    from ray.tune import Tuner

    record = out / RUN_RECORD
    meta = json.loads(record.read_text()) if record.is_file() else None
    if meta is None or not Tuner.can_restore(f"{meta['location']}/tune"):
        raise RunError(f"--resume {out}: holds no search run to resume (no {RUN_RECORD} with a Tune experiment)")
    if Path(space_path).read_bytes() != (out / "space.yaml").read_bytes():
        raise RunError(f"--resume {out}: {space_path} differs from the space.yaml the run started with")
    return PreparedData.load(out / "data"), meta["location"], meta["data"]


def run_search(space_path: str | Path, out: Path | None = None, address: str | None = None,
               storage: str | None = None, resume: bool = False, echo=print,
               imports_seconds: float | None = None, mlflow: str | None = None,
               base: str | None = None) -> RunOutcome:
    """The whole run; `imports_seconds`: what the CLI process spent before it got here (for the breakdown)."""
    clock = Stopwatch()
    if imports_seconds is not None:
        clock.seconds["driver imports"] = imports_seconds
    space = load_space(space_path)
    if base is not None:
        space = dataclasses.replace(space, base=base)
    if space.base and not resume:
        from search.data.base_config import load_base

        load_base(space.base)  # a config that cannot work fails here, in one line, before any directory exists
    if resume and out is None:
        raise RunError("--resume needs --out DIR, the run directory to continue")
    out = (out or default_out_dir(space)).resolve()
    from search.execution.cluster import probe_reachable

    if address is not None:
        probe_reachable(address)
    with clock.step("data preparation"):
        prepared, location, data = reopen_run(space_path, out) if resume else start_run(space_path, space, out,
                                                                                          storage, echo)
    space = effective_space(space, prepared)  # a base config's shapes, epochs and precision
    # The baselines need only the tiles: they are computed in the background while Ray starts and trials train.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baselines")
    baselines = pool.submit(baseline_scores, prepared, space.training.seed)
    pool.shutdown(wait=False)
    try:
        with clock.step("Ray start"):
            session = start_session(space, out, location, data, address, resume, mlflow)
    except BaseException:
        if not resume:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return finish_run(space, session, prepared, out, location, resume, clock, echo, baselines)


def baseline_scores(prepared: PreparedData, seed: int) -> list[dict]:
    """The baselines on one thread (the trials have the CPUs); a baseline that fails costs only itself."""
    from threadpoolctl import threadpool_limits

    from search.outcome.baselines import compute_baselines

    with threadpool_limits(limits=1):
        return [b.as_dict() for b in compute_baselines(prepared, seed)]


def start_session(space: Space, out: Path, location: str, data: str, address: str | None, resume: bool,
                  mlflow: str | None = None):
    """Ray joined or started, trial resources planned, the Tuner built (nothing trained yet)."""
    import ray

    from search.execution.cluster import connect
    from search.execution.tracking import mlflow_callback, tracking_uri
    from search.execution.tuner import SearchSession, build_tuner, plan_resources, trial_setup

    uri = tracking_uri(mlflow, out)
    tracking = mlflow_callback(uri, out.name, space.name) if uri and not resume else None
    context = connect(address)
    resources, concurrent = plan_resources(ray.cluster_resources(), space)
    setup = trial_setup(space, (out / "space.yaml").read_text(), data, location, resources)
    tuner = build_tuner(space, out, setup, concurrent, resume, callbacks=(tracking,) if tracking else ())
    return SearchSession(context, setup, concurrent, tuner, tracking)


def finish_run(space: Space, session, prepared: PreparedData, out: Path, location: str, resume: bool,
               clock: Stopwatch, echo, baselines: Future) -> RunOutcome:
    """Search, export, held-out stage, baselines, summary, report, mirror; each step timed."""
    from search.execution.cluster import dashboard_lines
    from search.execution.held_out import held_out_stage
    from search.outcome.export import export_winners, write_results
    from search.outcome.results import slot_utilisation, to_table, trial_rows
    from search.outcome.summary import closing_lines, outcome_of, write_summary

    for line in dashboard_lines(session.context):
        echo(line)
    echo(f"run directory: {out}" + (f" (mirrored to {location})" if location != str(out) else "")
         + (" — resuming" if resume else ""))
    echo(session.describe(space))
    with clock.step("search"):
        grid = session.tuner.fit()
    from search.execution.tracking import close_study

    close_study(session.tracking)
    rows = trial_rows(grid, space.training.epochs, space.scale, space.resources.memory_budget_gb)
    write_results(to_table(rows), out / "results.parquet")
    utilisation = slot_utilisation(rows, session.concurrent, clock.seconds["search"])
    front, best = export_winners(space, rows, prepared, out)
    with clock.step("held-out stage"):
        confirmation = held_out_stage(space, rows, best, session, resume, out, echo)
    with clock.step("baselines (waiting for them)"):
        scores = baselines.result()
    outcome = outcome_of(out, space, prepared, rows, best, front, confirmation, scores, utilisation,
                         session.concurrent, clock.seconds)
    write_summary(outcome)
    with clock.step("report"):
        from search.outcome.report import write_report

        report = write_report(out)
    write_summary(outcome)  # again, with the report's seconds in the breakdown
    if location != str(out):
        from search.data.storage import mirror_outputs

        mirror_outputs(out, location)
    for line in closing_lines(outcome):
        echo(line)
    echo(f"report: {report}")
    return outcome


def run_command(args) -> int:
    """`python -m search run SPACE`: the whole run; the breakdown counts what the CLI process spent importing."""
    import psutil

    run_search(args.space, args.out, args.address, args.storage, args.resume,
               imports_seconds=time.time() - psutil.Process().create_time(), mlflow=args.mlflow, base=args.base)
    return 0
