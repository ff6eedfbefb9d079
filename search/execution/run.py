"""`search run`: space file → prepared data → baselines and the accuracy floor → Ray Tune search → the rest.

Orchestration only: each step lives in its own module (data, baselines, tuner, held_out, export,
summary, report, storage); this one starts the run, times its steps, and cleans up a run directory
that never got going; search/execution/finish.py runs the steps after the search.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from search.data.storage import PARTIAL_SUFFIX, check_writable, run_location, upload, whole_file_storage
from search.data.tiles import DataError, PreparedData, check_batches, prepare
from search.errors import UserError
from search.imports import import_heavy
from search.plan.schema import Space
from search.plan.space import effective_space, load_space

if TYPE_CHECKING:  # the outcome side (scipy and all) is imported while Ray starts, not before (SEARCH_MODULES)
    from search.outcome.summary import RunOutcome


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
        prepared = prepare(space.data, out / "data", space.training.seed, space.evaluation.folds, warn=echo)
        check_batches(prepared, space.training.batch_size, space.resources.workers_per_trial)
    if space.base and space.evaluation.folds and not prepared.tiles.get("test"):
        raise DataError(f"evaluation.folds: the base config's datamodule ({space.base}) has no test split to hold "
                        "out; give it one or set evaluation.folds: 0")
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
    if meta is None or not Tuner.can_restore(f"{meta['location']}/tune",
                                             storage_filesystem=whole_file_storage(meta["location"])):
        raise RunError(f"--resume {out}: holds no search run to resume (no {RUN_RECORD} with a Tune experiment)")
    for partial in out.rglob(f"*{PARTIAL_SUFFIX}"):  # writes the kill cut short; the whole files before them stand
        partial.unlink()
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
    if mlflow is not None and not resume:
        from search.execution.tracking import check_reachable, tracking_uri

        check_reachable(tracking_uri(mlflow, out))  # before Ray starts and before anything is written
    with clock.step("data preparation"):
        prepared, location, data = reopen_run(space_path, out) if resume else start_run(space_path, space, out,
                                                                                          storage, echo)
    space = effective_space(space, prepared)  # a base config's shapes, epochs and precision
    # The baselines need only the tiles: they are fitted while Ray starts; the floor they set is needed by the
    # searcher before the first trial.
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="while-ray-starts")
    baselines = pool.submit(search_baselines, prepared, space.training.seed)
    pool.submit(import_search_modules)
    if space.resources.memory_budget_gb is not None:  # the searcher predicts each proposal's memory in the driver
        from search.plan.sampling import warm_prediction

        pool.submit(warm_prediction, space)
    pool.shutdown(wait=False)
    connection = None
    try:
        with clock.step("Ray start"):
            connection = connect_cluster(address)
        with clock.step("baselines (waiting for them)"):
            scores = baselines.result()
        floor = accuracy_floor_of(space, scores)
        with clock.step("search set-up"):
            session = start_session(space, connection, out, location, data, resume, mlflow, floor, echo)
    except BaseException:
        if not resume:
            shutil.rmtree(out, ignore_errors=True)
        if connection is not None:
            connection.end()  # a run that fails to start ends the Ray it started
        raise
    from search.execution.finish import finish_run

    with resumable_on_sigterm(space_path, out):
        return finish_run(space, session, prepared, out, location, resume, clock, echo, scores, floor)


@contextmanager
def resumable_on_sigterm(space_path: str | Path, out: Path):
    """SIGTERM (`kill`, SLURM's `scancel`) ends the driver at once, as SIGKILL would, with one line saying how to
    go on: Tune's experiment state and Optuna's journal are written as trials finish, so the run directory is
    resumable (tests/test_resume.py). Without this Ray's own handler prints stack traces for a plain stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        sys.stderr.write(
            f"search stopped by SIGTERM; go on with: python -m search run {space_path} --out {out} --resume\n"
        )
        sys.stderr.flush()
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# What the driver imports between Ray's start and the first trial: Tune and Optuna (the tuner), the outcome side
# (finish), and MLflow through Ray's MLflow callback module, which Tune imports to tag the callbacks it is given
# for its usage statistics, MLflow on or not. Imported while `ray.init` waits for Ray's processes (whose own
# imports, aiohttp and gRPC, are other modules), they no longer hold back the trials: 1.3 s of the
# peer-equivalent search's critical path.
SEARCH_MODULES = ("search.execution.tuner", "search.execution.finish", "ray.air.integrations.mlflow")


def import_search_modules() -> None:
    for name in SEARCH_MODULES:
        import_heavy(name)


def search_baselines(prepared: PreparedData, seed: int) -> list[dict]:
    """The baselines on one thread (Ray is starting); a baseline that fails costs only itself."""
    from threadpoolctl import threadpool_limits

    from search.outcome.baselines import search_baselines as fit_and_score

    with threadpool_limits(limits=1):
        return [b.as_dict() for b in fit_and_score(prepared, seed)]


def accuracy_floor_of(space: Space, baselines: list[dict]) -> dict | None:
    """`objective.min_val_miou`, or the best non-deep baseline's validation mIoU: a trial below it cannot win."""
    from search.outcome.baselines import BaselineScore, accuracy_floor

    if space.min_val_miou is not None:
        return {"val_miou": space.min_val_miou, "source": "objective.min_val_miou"}
    best = accuracy_floor([BaselineScore(**b) for b in baselines])
    return None if best is None else {"val_miou": best[0], "source": best[1]}


def connect_cluster(address: str | None):
    from search.execution.cluster import connect

    return connect(address)


def start_session(space: Space, connection, out: Path, location: str, data: str, resume: bool, mlflow: str | None,
                  floor: dict | None, echo=print):
    """Trial resources planned from the cluster, the Tuner built (nothing trained yet)."""
    import ray

    from search.execution.packing import gpu_memory_gb
    from search.execution.tracking import mlflow_callback, tracking_uri
    from search.execution.tuner import SearchSession, build_tuner, plan_resources, trial_setup

    uri = tracking_uri(mlflow, out)
    tracking = mlflow_callback(uri, out.name, space.name) if uri and not resume else None
    resources, concurrent = plan_resources(ray.cluster_resources(), space)
    setup = trial_setup(space, (out / "space.yaml").read_text(), data, location, resources)
    gpu_memory = gpu_memory_gb(space.resources.gpu_memory_gb) if resources.packed else None
    if gpu_memory is not None:  # packing predicts each proposal's memory in the driver: import its stack now
        from search.plan.sampling import warm_prediction

        warm_prediction(space)
    tuner = build_tuner(space, out, setup, concurrent, resume, callbacks=(tracking,) if tracking else (),
                        floor=floor["val_miou"] if floor else None, echo=echo, gpu_memory=gpu_memory)
    return SearchSession(connection, setup, concurrent, tuner, tracking)


def run_command(args) -> int:
    """`python -m search run SPACE`: the whole run; the breakdown counts what the CLI process spent importing."""
    import psutil

    run_search(args.space, args.out, args.address, args.storage, args.resume,
               imports_seconds=time.time() - psutil.Process().create_time(), mlflow=args.mlflow, base=args.base)
    return 0
