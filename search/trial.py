"""One trial: a Ray Tune function that runs a Ray Train TorchTrainer and turns its faults into failures.

`run_trial` is the Ray Tune trainable (a plain function of the sampled config); it launches Ray
Train and turns a reported training fault into a failed trial. `run_confirmation` is the same for
the held-out stage (search/confirm.py). Each Train worker runs search/worker.py.

This module is light on purpose: every trial starts a Tune function process and a Train
controller process that import it, and neither trains; importing TerraTorch and the backbones
there cost ~30 s of CPU per trial on a 2-CPU machine. So the space travels as its YAML text and
only the workers parse it and import the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

# Ray Train retries a worker group that does not start in time without limit by default. Seen on a
# busy 2-CPU machine: a start timed out, its placement group was created after the timeout and
# kept the CPU the retry needed, so the trial waited forever and so did the search. A bounded
# number of retries ends such a trial as failed; its controller exits and Ray frees what it held.
# Not too few: after a node dies, starts fail fast until Ray marks the node dead (3 was too few
# once in the node-loss test), so a stuck trial now ends after at most 30 x 120 s.
WORKER_START_RETRIES = 30


class TrialFailed(RuntimeError):
    """A trial's training failed (NaN loss, out of memory, an exception); its cause leads the message."""


@dataclass(frozen=True)
class TrialResources:
    """What one trial asks of the cluster; chosen by the tuner from the space and the cluster."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled parameters, in plain values (no model imports)."""

    space_yaml: str  # the run's space.yaml, parsed again by each worker
    space_source: str
    memory_budget_gb: float | None
    max_failures: int
    data: str  # tiles: a local folder or a storage URI
    storage: str  # where Tune's and Train's results go
    resources: TrialResources


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; imports the model stack only in the worker process."""
    from search.worker import train

    train(loop_config)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune trainable: sampled parameters in, a Ray Train run out; metrics flow per epoch.

    A configuration the estimator puts over the space's per-worker memory budget reports once,
    as infeasible with objective 0 (it produced no model), and never starts a worker.
    """
    context = ray.tune.get_context()
    budget = setup.memory_budget_gb
    if budget is not None and config["predicted_gb"] > budget:
        # Every metric a searcher may read is present (Tune checks); none was measured.
        ray.tune.report({"infeasible": True, "predicted_gb": config["predicted_gb"], "objective": 0.0,
                         "epoch": 0, "val_miou": float("nan"), "peak_gb": float("nan")})
        return
    resources = setup.resources
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"space_yaml": setup.space_yaml, "space_source": setup.space_source, "params": config,
                           "data": setup.data},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}
            if resources.use_gpu else {"CPU": resources.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=context.get_trial_id(),
            storage_path=f"{setup.storage.rstrip('/')}/train",
            callbacks=[TuneReportCallback()],
            # Restarts the workers, on any node with room, when one dies with its node.
            failure_config=ray.train.FailureConfig(max_failures=setup.max_failures,
                                                   controller_failure_limit=WORKER_START_RETRIES),
        ),
    )
    result = trainer.fit()
    fault = (result.metrics or {}).get("fault")
    if fault:
        raise TrialFailed(f"{fault}: {result.metrics['fault_error']}")


def run_confirmation(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function of the held-out stage: one candidate at one seed, every epoch, then tested."""
    run_trial({**config["candidate"], "seed": config["seed"], "evaluate_test": True}, setup)
