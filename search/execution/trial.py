"""One trial: a Ray Tune function that trains in its own (reused) actor, or launches Ray Train for DDP.

Single-worker trials train inside the Tune actor itself, and the Tuner reuses actors
(`TuneConfig(reuse_actors=True)`, Ray's intended way to stop paying process start-up per trial):
the ~15 s of importing torch, Lightning and TerraTorch is paid once per actor, not once per
trial. Ray Tune resets a function trainable between trials by ending its training thread;
search/training/worker.py makes sure nothing a trial set carries over.

Multi-worker (data-parallel) trials keep Ray Train: the Tune function reserves no CPU and runs a
`TorchTrainer` whose workers call the same `search.training.worker.train`.

This module is light on purpose: it is what Tune pickles into every actor, and the Train
controller of a DDP trial imports it too; the model stack is imported at the first training.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.tune

from search.data.storage import whole_file_storage
from search.imports import import_heavy

# Ray Train retries a worker group that does not start in time without limit by default. Seen on a
# busy 2-CPU machine: a start timed out, its placement group was created after the timeout and
# kept the CPU the retry needed, so the trial waited forever and so did the search. A bounded
# number of retries ends such a trial as failed; its controller exits and Ray frees what it held.
# Not too few: after a node dies, starts fail fast until Ray marks the node dead (3 was too few
# once in the node-loss test), so a stuck trial now ends after at most 30 x 120 s.
WORKER_START_RETRIES = 30


@dataclass(frozen=True)
class TrialResources:
    """What one trial asks of the cluster; chosen by the tuner from the space and the cluster."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    packed: bool = False  # GPUs by predicted memory: each trial's share rides in its config (`gpu_share`)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def in_process(self) -> bool:
        """One worker: train in the Tune actor itself, no Ray Train worker group."""
        return self.num_workers == 1


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled parameters, in plain values (no model imports)."""

    space_yaml: str  # the run's space.yaml, parsed again where the trial trains
    space_source: str
    memory_budget_gb: float | None
    max_failures: int
    data: str  # tiles: a local folder or a storage URI
    storage: str  # where Tune's and Train's results go
    resources: TrialResources


def import_model_stack() -> tuple[Any, float]:
    """`search.training.worker.train` and the seconds this call spent importing it (0 once this process has);
    imported with the garbage collector paused and then frozen (search/imports.py: 13 -> 9 s of CPU here)."""
    started = time.monotonic()
    warm = "search.training.worker" in sys.modules
    train = import_heavy("search.training.worker").train
    return train, 0.0 if warm else time.monotonic() - started


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function of a data-parallel trial."""
    train, import_seconds = import_model_stack()
    world = ray.train.get_context().get_world_size()
    train(loop_config, ray.train.report, distributed=world > 1, cpus=loop_config["cpus"],
          import_seconds=import_seconds)


def infeasible(config: dict[str, Any], budget: float | None) -> str | None:
    """Why a configuration cannot train here: over the per-worker memory budget, or more than one GPU's memory."""
    if budget is not None and config.get("predicted_gb") is not None and config["predicted_gb"] > budget:
        return f"predicted {config['predicted_gb']:.4g} GB > memory_budget_gb {budget:g}"
    if (config.get("gpu_share") or 0) > 1:
        return f"predicted {config['predicted_gb']:.4g} GB needs {config['gpu_share']:.2f} GPUs' memory"
    return None


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune trainable: sampled parameters in, one report per epoch out.

    A configuration the estimator puts over the space's per-worker memory budget reports once,
    as infeasible with objective 0 (it produced no model), and never trains.
    """
    reason = infeasible(config, setup.memory_budget_gb)
    if reason:
        # Every metric a searcher may read is present (Tune checks); none was measured.
        ray.tune.report({"infeasible": True, "infeasible_reason": reason, "predicted_gb": config["predicted_gb"],
                         "objective": 0.0, "epoch": 0, "val_miou": float("nan"), "peak_gb": float("nan")})
        return
    resources = setup.resources
    loop_config = {"space_yaml": setup.space_yaml, "space_source": setup.space_source, "params": config,
                   "data": setup.data, "cpus": resources.cpus_per_worker,
                   "trial_id": ray.tune.get_context().get_trial_id()}
    if resources.in_process:
        train, import_seconds = import_model_stack()
        train(loop_config, ray.tune.report, cpus=resources.cpus_per_worker, import_seconds=import_seconds)
        return
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker,
                                  "GPU": config.get("gpu_share") or resources.gpus_per_worker}
            if resources.use_gpu else {"CPU": resources.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=ray.tune.get_context().get_trial_id(),
            storage_path=f"{setup.storage.rstrip('/')}/train", storage_filesystem=whole_file_storage(setup.storage),
            callbacks=[TuneReportCallback()],
            # Restarts the workers, on any node with room, when one dies with its node.
            failure_config=ray.train.FailureConfig(max_failures=setup.max_failures,
                                                   controller_failure_limit=WORKER_START_RETRIES),
        ),
    )
    trainer.fit()


def run_confirmation(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function of the held-out stage: one method on one fold at one seed, every epoch, then tested (or, for
    a trial choosing the reference's learning rate, `run` = {"evaluate_test": False}: the search's split, as a
    search trial)."""
    run_trial({**config["candidate"], "evaluate_test": True, **config["run"]}, setup)
