"""Ray Tune orchestration: OptunaSearch (define-by-run) + ASHA, resources derived from the cluster.

Concurrency is how many trials' workers the cluster holds at once. A single-worker trial's Tune
actor holds its worker's CPUs/GPUs and trains itself; Tune reuses these actors from trial to trial
(`reuse_actors`), so the model stack is imported once per slot, not once per trial. A
multi-worker trial's Tune function reserves nothing and runs Ray Train, whose workers hold the
CPUs/GPUs: if that function held CPUs, N concurrent trials could take every CPU and leave none for
their workers — a deadlock (seen on a 2-CPU machine).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.data.storage import whole_file_storage
from search.errors import UserError
from search.execution.live_metrics import LiveSearchMetrics
from search.execution.packing import gpu_share_of
from search.execution.progress import TrialLines
from search.execution.searcher import METRIC, objectives_of, optuna_searcher
from search.execution.trial import TrialResources, TrialSetup, run_trial
from search.plan.schema import Space

DRIVER_MEMORY_BYTES = 64 * 1024**2
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource that only the head node has


@dataclass
class SearchSession:
    """A connected cluster and the search's Tuner, ready to fit."""

    connection: Any  # search.execution.cluster.Connection: Ray's context (dashboard URL), whether the run owns it
    setup: TrialSetup
    concurrent: int
    tuner: tune.Tuner
    tracking: Any = None  # the MLflow callback, when the run is tracked (search/execution/tracking.py)

    def describe(self, space: Space) -> str:
        r = self.setup.resources
        how = "in its own reused Tune actor" if r.in_process else "as a Ray Train run"
        gpus = "its GPU share by predicted memory" if r.packed else f"{r.gpus_per_worker:g} GPU"
        return (f"trials: {space.training.num_samples}, at most {self.concurrent} at once, each {r.num_workers} "
                f"worker(s) x {r.cpus_per_worker:g} CPU / {gpus}, trained {how}")


class ResourceError(UserError, RuntimeError):
    """The cluster cannot hold even one trial as the space asks for it."""


def packs_by_memory(cluster: dict[str, float], space: Space) -> bool:
    """`resources.pack`, or by default: by memory where the cluster has GPUs and the space fixes no GPU count."""
    if space.resources.pack is not None:
        return space.resources.pack == "memory" and float(cluster.get("GPU", 0)) > 0
    return float(cluster.get("GPU", 0)) > 0 and space.resources.gpus_per_worker is None


def plan_resources(cluster: dict[str, float], space: Space) -> tuple[TrialResources, int]:
    """Per-trial resources and how many trials fit at once, from the cluster's totals. Packed by memory, the GPU
    count is each trial's own share, so only CPUs bound how many run at once (Ray holds the rest pending)."""
    spec = space.resources
    cluster_gpus = float(cluster.get("GPU", 0))
    gpus = spec.gpus_per_worker if spec.gpus_per_worker is not None else (1.0 if cluster_gpus > 0 else 0.0)
    packed = packs_by_memory(cluster, space)
    trial = TrialResources(spec.workers_per_trial, spec.cpus_per_worker, gpus, packed)
    need = {"CPU": trial.num_workers * trial.cpus_per_worker,
            "GPU": 0.0 if packed else trial.num_workers * trial.gpus_per_worker}
    fits = []
    for resource, amount in need.items():
        if amount <= 0:
            continue
        have = float(cluster.get(resource, 0))
        if have < amount:
            raise ResourceError(f"resources: one trial needs {amount:g} {resource} "
                                f"({trial.num_workers} workers), the cluster has {have:g}")
        fits.append(math.floor(have / amount + 1e-9))
    concurrent = min(fits) if fits else 1
    if spec.max_concurrent_trials is not None:
        concurrent = min(concurrent, spec.max_concurrent_trials)
    return trial, max(1, min(concurrent, space.training.num_samples))


def scheduler_of(space: Space) -> TrialScheduler:
    training = space.training
    if training.scheduler == "fifo":
        return FIFOScheduler()
    goal = objectives_of(space)
    return ASHAScheduler(time_attr="training_iteration", metric=goal.scheduler_metric, mode=goal.scheduler_mode,
                         max_t=training.epochs, grace_period=training.grace_period,
                         reduction_factor=training.reduction_factor)


def trial_setup(space: Space, space_yaml: str, data: str, storage: str, resources: TrialResources) -> TrialSetup:
    return TrialSetup(space_yaml, space.source, space.resources.memory_budget_gb, space.resources.max_failures,
                      data, storage, resources)


def with_trial_resources(trainable: Callable, setup: TrialSetup):
    """The Tune trainable with what its actor reserves.

    In-process trials: the worker's CPUs/GPUs, on any node; packed by memory, the GPU share in the
    trial's own config (a function of the config: Tune's way to size trials one by one). Ray Train
    trials: no CPU or GPU (Ray refuses an empty bundle, so the little memory the function really
    uses), on the head node, as is its Train controller (same placement group), so losing a worker
    node loses only Train workers, which Ray Train restarts wherever there is room.
    """
    resources = setup.resources
    if not resources.in_process:
        bundle = {"cpu": 0, "memory": DRIVER_MEMORY_BYTES, HEAD_NODE_RESOURCE: 0.001}
    elif resources.packed:
        def bundle(config: dict) -> PlacementGroupFactory:
            share = gpu_share_of(config)
            return PlacementGroupFactory([{"CPU": resources.cpus_per_worker,
                                           "GPU": resources.gpus_per_worker if share is None else min(share, 1.0)}])
    else:
        bundle = {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
    return tune.with_resources(tune.with_parameters(trainable, setup=setup), bundle)


def tune_output_switches() -> None:
    """Tune's own switches for what it prints and logs, set before any Tuner is built or restored (a restored
    Tuner reads them too: the resumed run of a fresh process printed Tune's experiment box, results path and
    TensorBoard hint when they were set only for a new one).

    `RAY_AIR_NEW_OUTPUT=0`: Tune's original output engine, silent at `verbose=0` (the newer one prints an
    experiment box and a results path at every verbosity; the run directory line already says where they are).
    `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`: no TensorBoard logger, which nothing here reads and which warns on
    every list-valued metric.
    """
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def run_config(name: str, setup: TrialSetup, space: Space, live_metrics: bool = True,
               callbacks: tuple = (), label: str = "trial", total: int | None = None, echo=print) -> tune.RunConfig:
    """Tune's experiment `<storage>/<name>`.

    Training errors end their trial as reported faults (search/training/worker.py), so what reaches Tune as
    an error is an actor that died (its node lost, killed for memory): an in-process trial is
    restarted by Tune up to `resources.max_failures` times; a Ray Train trial's workers are
    restarted by Ray Train instead.

    The console gets one line per trial start and end (search/execution/progress.py) instead of Tune's
    tables (`verbose=0`, with `tune_output_switches`, which `restored_or_new` sets). Tune's result loggers are
    named: CSV and JSON, which its ResultGrid reads back.
    """
    retries = setup.max_failures if setup.resources.in_process else 0
    watchers = [LiveSearchMetrics(space.name, METRIC)] if live_metrics else []
    lines = TrialLines(label, total, echo, space.training.epochs)
    return tune.RunConfig(name=name, storage_path=setup.storage, storage_filesystem=whole_file_storage(setup.storage),
                          failure_config=tune.FailureConfig(max_failures=retries),
                          callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), lines, *watchers, *callbacks],
                          verbose=0)


def restored_or_new(name: str, trainable, setup: TrialSetup, resume: bool, new: Callable[[], tune.Tuner]) -> tune.Tuner:
    """Tune's experiment `<storage>/<name>` restored where a resumed run already started it (its finished trials are
    kept, not trained again), else `new()`; every Tuner of a run is made here, after Tune's output switches."""
    tune_output_switches()
    path = f"{setup.storage.rstrip('/')}/{name}"
    filesystem = whole_file_storage(path)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                  storage_filesystem=filesystem)
    return new()


def build_tuner(space: Space, out_dir: Path, setup: TrialSetup, max_concurrent: int,
                resume: bool = False, callbacks: tuple = (), floor: float | None = None, echo=print,
                gpu_memory: float | None = None) -> tune.Tuner:
    """The search as one Tuner; `storage` (run directory or URI) holds Tune's and Train's results.

    Resuming restores Tune's experiment state (finished trials stay finished, interrupted ones
    run again from their start) and the pickled OptunaSearch, whose study lives on in the journal.
    """
    trainable = with_trial_resources(run_trial, setup)
    return restored_or_new("tune", trainable, setup, resume, lambda: tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=optuna_searcher(space, out_dir, floor, gpu_memory),
            scheduler=scheduler_of(space),
            # Packed trials that run out of memory are retried by the searcher, which counts its own samples.
            num_samples=-1 if gpu_memory is not None else space.training.num_samples,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
        ),
        run_config=run_config("tune", setup, space, callbacks=callbacks, total=space.training.num_samples, echo=echo),
    ))
