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

import optuna
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from search.errors import UserError
from search.execution.live_metrics import LiveSearchMetrics
from search.execution.progress import TrialLines
from search.execution.trial import TrialResources, TrialSetup, run_trial
from search.outcome.study import journal_storage
from search.plan.sampling import DefineByRun
from search.plan.schema import Space

METRIC = "objective"
FLOOR_CONSTRAINT = "val_miou_below_floor"  # Optuna constraint: the accuracy floor minus the trial's val mIoU
DRIVER_MEMORY_BYTES = 64 * 1024**2
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource that only the head node has
MODE = "max"


@dataclass(frozen=True)
class Objectives:
    """What Optuna optimises and the one scalar ASHA compares trials on at each rung."""

    searcher_metric: str | list[str]
    searcher_mode: str | list[str]
    scheduler_metric: str
    scheduler_mode: str


def objectives_of(space: Space) -> Objectives:
    """`accuracy_per_gb`: one scalar for both. `pareto`: Optuna gets (val mIoU max, peak GB min).

    ASHA then ranks on val mIoU, not on mIoU/GB: a configuration's peak GB is fixed from its first
    training step, so the only thing a further epoch can reveal is accuracy. Ranking rungs on
    mIoU/GB would let memory alone stop every heavy configuration at the first rung and empty the
    accurate end of the front; a light configuration ASHA stops keeps its exact GB and a lower
    bound of its accuracy, so it still lands on the front if it belongs there.
    """
    if space.objective == "pareto":
        return Objectives(["val_miou", "peak_gb"], ["max", "min"], "val_miou", "max")
    return Objectives(METRIC, MODE, METRIC, MODE)


@dataclass
class SearchSession:
    """A connected cluster and the search's Tuner, ready to fit."""

    context: Any  # Ray's runtime context (dashboard URL)
    setup: TrialSetup
    concurrent: int
    tuner: tune.Tuner
    tracking: Any = None  # the MLflow callback, when the run is tracked (search/execution/tracking.py)

    def describe(self, space: Space) -> str:
        r = self.setup.resources
        how = "in its own reused Tune actor" if r.in_process else "as a Ray Train run"
        return (f"trials: {space.training.num_samples}, at most {self.concurrent} at once, each {r.num_workers} "
                f"worker(s) x {r.cpus_per_worker:g} CPU / {r.gpus_per_worker:g} GPU, trained {how}")


class ResourceError(UserError, RuntimeError):
    """The cluster cannot hold even one trial as the space asks for it."""


def plan_resources(cluster: dict[str, float], space: Space) -> tuple[TrialResources, int]:
    """Per-trial resources and how many trials fit at once, from the cluster's totals."""
    spec = space.resources
    cluster_gpus = float(cluster.get("GPU", 0))
    gpus = spec.gpus_per_worker if spec.gpus_per_worker is not None else (1.0 if cluster_gpus > 0 else 0.0)
    trial = TrialResources(spec.workers_per_trial, spec.cpus_per_worker, gpus)
    need = {"CPU": trial.num_workers * trial.cpus_per_worker, "GPU": trial.num_workers * trial.gpus_per_worker}
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


class FailureAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, telling Optuna FAIL for every trial that did not finish cleanly.

    Ray's searcher tells COMPLETE with the last reported value even when the trial errored after
    some epochs, and passes a NaN objective on, which Optuna rejects, leaving that Optuna trial
    RUNNING forever. Here an errored trial, a reported fault or a non-finite objective is FAIL,
    so TPE does not learn from a value the configuration never really achieved.
    """

    def __init__(self, *args, floor: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.floor = floor  # the accuracy floor: a trial below it is infeasible for Optuna, whatever its memory

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = dict(result) if result else None
        miou = (result or {}).get("val_miou")
        if self.floor is not None and isinstance(miou, (int, float)) and math.isfinite(miou) \
                and trial_id in self._ot_trials:
            # Feasible when <= 0: TPE keeps proposing near configurations that cleared it, as with the budget.
            self._ot_trials[trial_id].set_constraint(FLOOR_CONSTRAINT, self.floor - miou)
        if result and result.get("infeasible"):
            # Never trained: no accuracy at its predicted memory; the trial's constraint marks it infeasible.
            result.update(val_miou=0.0, peak_gb=result["predicted_gb"])
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(name) for name in metrics]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        failed = error or bool((result or {}).get("fault")) or (result is not None and not finite)
        super().on_trial_complete(trial_id, None if failed else result, error=failed)


def optuna_searcher(space: Space, out_dir: Path, floor: float | None = None) -> OptunaSearch:
    """Optuna TPE over the define-by-run space, its study kept in the run directory; `floor`: the accuracy floor,
    an Optuna constraint."""
    # Optuna logs every study it creates and every trial it is told of at INFO; the console has its own lines.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = journal_storage(out_dir)
    goal = objectives_of(space)
    return FailureAwareOptunaSearch(
        space=DefineByRun(space),
        metric=goal.searcher_metric,
        mode=goal.searcher_mode,
        sampler=optuna.samplers.TPESampler(seed=space.training.seed,
                                           n_startup_trials=max(2, space.training.num_samples // 3)),
        study_name=space.name,
        storage=storage,
        floor=floor,
    )


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

    In-process trials: the worker's CPUs/GPUs, on any node. Ray Train trials: no CPU or GPU (Ray
    refuses an empty bundle, so the little memory the function really uses), on the head node, as
    is its Train controller (same placement group), so losing a worker node loses only Train
    workers, which Ray Train restarts wherever there is room.
    """
    resources = setup.resources
    if resources.in_process:
        bundle = {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
    else:
        bundle = {"cpu": 0, "memory": DRIVER_MEMORY_BYTES, HEAD_NODE_RESOURCE: 0.001}
    return tune.with_resources(tune.with_parameters(trainable, setup=setup), bundle)


def run_config(name: str, setup: TrialSetup, space: Space, live_metrics: bool = True,
               callbacks: tuple = (), label: str = "trial", total: int | None = None, echo=print) -> tune.RunConfig:
    """Tune's experiment `<storage>/<name>`.

    Training errors end their trial as reported faults (search/training/worker.py), so what reaches Tune as
    an error is an actor that died (its node lost, killed for memory): an in-process trial is
    restarted by Tune up to `resources.max_failures` times; a Ray Train trial's workers are
    restarted by Ray Train instead.

    The console gets one line per trial start and end (search/execution/progress.py) instead of Tune's
    tables: `verbose=0` with Tune's original output engine (`RAY_AIR_NEW_OUTPUT=0`; the newer one prints an
    experiment box and a results path at every verbosity, the run directory line already says where they are).
    Tune's result loggers are named: CSV and JSON, which its ResultGrid reads back;
    its TensorBoard logger, which nothing here reads and which warns on every list-valued metric, is left
    out (`TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`, Tune's own switch for exactly this).
    """
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    retries = setup.max_failures if setup.resources.in_process else 0
    watchers = [LiveSearchMetrics(space.name, METRIC)] if live_metrics else []
    lines = TrialLines(label, total, echo, space.training.epochs)
    return tune.RunConfig(name=name, storage_path=setup.storage,
                          failure_config=tune.FailureConfig(max_failures=retries),
                          callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), lines, *watchers, *callbacks],
                          verbose=0)


def build_tuner(space: Space, out_dir: Path, setup: TrialSetup, max_concurrent: int,
                resume: bool = False, callbacks: tuple = (), floor: float | None = None, echo=print) -> tune.Tuner:
    """The search as one Tuner; `storage` (run directory or URI) holds Tune's and Train's results.

    Resuming restores Tune's experiment state (finished trials stay finished, interrupted ones
    run again from their start) and the pickled OptunaSearch, whose study lives on in the journal.
    """
    trainable = with_trial_resources(run_trial, setup)
    if resume:
        return tune.Tuner.restore(f"{setup.storage.rstrip('/')}/tune", trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=optuna_searcher(space, out_dir, floor),
            scheduler=scheduler_of(space),
            num_samples=space.training.num_samples,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
        ),
        run_config=run_config("tune", setup, space, callbacks=callbacks, total=space.training.num_samples, echo=echo),
    )
