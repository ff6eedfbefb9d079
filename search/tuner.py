"""Ray Tune orchestration: OptunaSearch (define-by-run) + ASHA, resources derived from the cluster.

Why concurrency is computed, not left to Tune: each trial's Tune function launches a Ray Train
run whose workers need their own CPUs/GPUs. If the Tune functions themselves held CPUs, N
concurrent trials could take every CPU and leave none for their workers — a deadlock (seen on a
2-CPU machine). So the Tune function reserves nothing (it only waits on Ray Train, whose
controller also reserves no CPU), and the number of concurrent trials is how many trials'
*workers* the cluster can hold at once.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search.live_metrics import LiveSearchMetrics
from search.space import DefineByRun, Space
from search.trial import TrialResources, run_trial

METRIC = "objective"
DRIVER_MEMORY_BYTES = 64 * 1024**2
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource that only the head node has
MODE = "max"


class ResourceError(RuntimeError):
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
    return trial, max(1, min(concurrent, space.num_samples))


class FailureAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, telling Optuna FAIL for every trial that did not finish cleanly.

    Ray's searcher tells COMPLETE with the last reported value even when the trial errored after
    some epochs, and passes a NaN objective on, which Optuna rejects, leaving that Optuna trial
    RUNNING forever. Here an errored trial, a reported fault or a non-finite objective is FAIL,
    so TPE does not learn from a value the configuration never really achieved.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        value = (result or {}).get(METRIC)
        failed = error or bool((result or {}).get("fault")) or \
            (result is not None and not (isinstance(value, (int, float)) and math.isfinite(value)))
        super().on_trial_complete(trial_id, None if failed else result, error=failed)


def optuna_searcher(space: Space, out_dir: Path) -> OptunaSearch:
    """Optuna TPE over the define-by-run space, its study kept in the run directory."""
    storage = JournalStorage(JournalFileBackend(str(out_dir / "optuna_journal.log")))
    return FailureAwareOptunaSearch(
        space=DefineByRun(space),
        metric=METRIC,
        mode=MODE,
        sampler=optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=max(2, space.num_samples // 3)),
        study_name=space.name,
        storage=storage,
    )


def build_tuner(space: Space, out_dir: Path, storage: str, data: str, resources: TrialResources,
                max_concurrent: int, resume: bool = False) -> tune.Tuner:
    """The search as one Tuner; `storage` (run directory or URI) holds Tune's and Train's results.

    Resuming restores Tune's experiment state (finished trials stay finished, interrupted ones
    run again from their start) and the pickled OptunaSearch, whose study lives on in the journal.
    """
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, space=space, data=data, storage=storage, resources=resources),
        # No CPU or GPU: only the trial's Ray Train workers hold those. Ray refuses an empty
        # bundle, so the function reserves the little memory it really uses. It runs on the head
        # node (as does its Train controller, in the same placement group), so losing a worker
        # node loses only Train workers, which Ray Train restarts wherever there is room.
        {"cpu": 0, "memory": DRIVER_MEMORY_BYTES, HEAD_NODE_RESOURCE: 0.001},
    )
    if resume:
        return tune.Tuner.restore(f"{storage.rstrip('/')}/tune", trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=optuna_searcher(space, out_dir),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=space.epochs,
                grace_period=space.grace_period,
                reduction_factor=space.reduction_factor,
            ),
            num_samples=space.num_samples,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[LiveSearchMetrics(space.name, METRIC)],
            verbose=1,
        ),
    )
