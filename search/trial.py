"""One trial: a Ray Train TorchTrainer running Lightning on a TerraTorch segmentation task.

`run_trial` is the Ray Tune trainable (a plain function of the sampled config); it writes the
trial's TerraTorch config, launches Ray Train and turns a reported training fault into a failed
trial. `train_worker` runs on each Ray Train worker: it builds the same config against the tiles
on its own node and trains. Metrics travel worker → `ray.train.report` → Train V2's
`TuneReportCallback` → Tune, once per epoch, so ASHA can stop a trial between epochs.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ray
import ray.train
import torch
import yaml
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from em_backbones.memory import gigabytes
from search.data import PreparedData
from search.faults import FaultGuard, cause_of
from search.memory_meter import PeakMemoryMeter
from search.space import Space
from search.storage import materialise
from search.terratorch_config import terratorch_config

VAL_METRIC = "val/mIoU"
TEST_METRIC = "test/mIoU"
SHARDABLE_DATAMODULE = "em_backbones.datamodules.ShardableMultiModalDataModule"
# Ray Train retries a worker group that does not start in time without limit by default. Seen on a
# busy 2-CPU machine: a start timed out, its placement group was created after the timeout and
# kept the CPU the retry needed, so the trial waited forever and so did the search. A bounded
# number of retries ends such a trial as failed; its controller exits and Ray frees what it held.
WORKER_START_RETRIES = 3


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


def instantiate(node: dict[str, Any]) -> Any:
    """Build `{class_path, init_args}` the way LightningCLI does, for one level of nesting."""
    module_name, _, class_name = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**node.get("init_args", {}))


class EpochReporter(pl.Callback):
    """After each epoch's validation: report mIoU, peak GB and their ratio to Ray Train.

    Ray's `RayTrainReportCallback` would also upload a checkpoint every epoch; ASHA needs only
    the metric, and a per-epoch checkpoint of a multi-GB backbone would dominate trial time, so
    this reports metrics alone (the winner is retrained from best.yaml).
    """

    def __init__(self, meter: PeakMemoryMeter, seed: int) -> None:
        self.meter = meter
        self.seed = seed
        self.last: dict[str, Any] = {}  # the latest epoch's report, repeated with the test score
        self.started = time.monotonic()
        self.node_ip = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()

    def worker_peaks(self) -> list[tuple[str, int]]:
        """(Ray node id, peak bytes) of every data-parallel worker; only rank 0's report reaches Tune."""
        mine = (self.node_id, int(self.meter.peak_bytes))
        if not torch.distributed.is_initialized():
            return [mine]
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, mine)
        return gathered

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        miou = float(trainer.callback_metrics.get(VAL_METRIC, float("nan")))
        loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
        workers = self.worker_peaks()
        # Per worker: the largest of the workers' own peaks, the figure that decides whether it fits.
        peak_gb = gigabytes(max(peak for _, peak in workers))
        breakdown = self.meter.peak_breakdown
        metrics = {
            "epoch": trainer.current_epoch + 1,
            "seed": self.seed,
            "val_miou": miou,
            "train_loss": loss,
            "peak_gb": peak_gb,
            "memory_method": self.meter.method,
            "objective": miou / peak_gb if peak_gb > 0 and math.isfinite(miou) else float("nan"),
            "train_seconds": time.monotonic() - self.started,
            "worker_node_ip": self.node_ip,
            "worker_node_ids": [node for node, _ in workers],
            "worker_peak_gb": [gigabytes(peak) for _, peak in workers],
            "world_size": trainer.world_size,
            "train_batches": int(trainer.num_training_batches),
        }
        if breakdown is not None:
            metrics.update({
                "param_gb": gigabytes(breakdown.parameters),
                "grad_gb": gigabytes(breakdown.gradients),
                "optimizer_gb": gigabytes(breakdown.optimizer_state),
                "activation_gb": gigabytes(breakdown.saved_activations),
            })
        self.last = metrics
        ray.train.report(metrics)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: build datamodule, task and Lightning Trainer from the TerraTorch config.

    The config is built here, not shipped from the trial, because the tiles' local paths differ
    per node when they come from a storage URI.
    """
    import em_backbones  # noqa: F401  (registers the project's backbones in this process)

    prepared = PreparedData.load(materialise(loop_config["data"]))
    config = terratorch_config(loop_config["space"], loop_config["params"], prepared)
    data_parallel = ray.train.get_context().get_world_size() > 1
    if data_parallel:
        # Lightning's sampler injection would re-batch TerraTorch's loaders to size 1
        # (em_backbones/datamodules.py); the subclass differs from TerraTorch's in nothing else.
        # One worker needs no sharding: it trains exactly best.yaml's datamodule, no injection.
        config["data"]["class_path"] = SHARDABLE_DATAMODULE
    pl.seed_everything(config["seed_everything"], workers=True, verbose=False)
    datamodule = instantiate(config["data"])
    task = instantiate(config["model"])
    meter = PeakMemoryMeter()
    reporter = EpochReporter(meter, config["seed_everything"])
    trainer_args = {k: v for k, v in config["trainer"].items() if k not in ("accelerator", "devices")}
    space: Space = loop_config["space"]
    trainer = pl.Trainer(
        **trainer_args,
        use_distributed_sampler=data_parallel,
        accelerator="auto",
        devices="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[meter, reporter, FaultGuard(space.fault_for(loop_config["params"]["trial_number"]))],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer = prepare_trainer(trainer)
    try:
        trainer.fit(task, datamodule=datamodule)
    except Exception as err:  # noqa: BLE001 - every training error ends this trial, none the search
        if data_parallel:
            raise  # the other ranks wait in collectives; only a raised error stops them
        # Reported, not raised: Ray Train would restart the worker and hit the same error again.
        ray.train.report({"fault": cause_of(err), "fault_error": f"{type(err).__name__}: {err}"[:500],
                          "objective": float("nan"), "epoch": trainer.current_epoch + 1,
                          "peak_gb": gigabytes(meter.peak_bytes), "val_miou": float("nan")})
        return
    if loop_config["params"].get("evaluate_test"):
        # Held-out evaluation (search/confirm.py): one more report, the last epoch's plus the test mIoU.
        trainer.test(task, datamodule=datamodule, verbose=False)
        ray.train.report({**reporter.last, "test_miou": float(trainer.callback_metrics.get(TEST_METRIC, float("nan")))})


def run_trial(config: dict[str, Any], space: Space, data: str, storage: str, resources: TrialResources) -> None:
    """Ray Tune trainable: sampled parameters in, a Ray Train run out; metrics flow per epoch.

    A configuration the estimator puts over the space's per-worker memory budget reports once,
    as infeasible with objective 0 (it produced no model), and never starts a worker.
    """
    context = ray.tune.get_context()
    tt_config = terratorch_config(space, config, PreparedData.load(materialise(data)))
    trial_dir = Path(context.get_trial_dir())
    (trial_dir / "terratorch_config.yaml").write_text(yaml.safe_dump(tt_config, sort_keys=False))
    budget = space.resources.memory_budget_gb
    if budget is not None and config["predicted_gb"] > budget:
        ray.tune.report({"infeasible": True, "predicted_gb": config["predicted_gb"], "objective": 0.0,
                         "epoch": 0, "val_miou": float("nan")})
        return
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"space": space, "params": config, "data": data},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}
            if resources.use_gpu else {"CPU": resources.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=context.get_trial_id(),
            storage_path=f"{storage.rstrip('/')}/train",
            callbacks=[TuneReportCallback()],
            # Restarts the workers, on any node with room, when one dies with its node.
            failure_config=ray.train.FailureConfig(max_failures=space.resources.max_failures,
                                                   controller_failure_limit=WORKER_START_RETRIES),
        ),
    )
    result = trainer.fit()
    fault = (result.metrics or {}).get("fault")
    if fault:
        raise TrialFailed(f"{fault}: {result.metrics['fault_error']}")
