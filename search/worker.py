"""What runs inside each Ray Train worker of a trial: Lightning on a TerraTorch segmentation task.

Kept apart from search/trial.py so that only these processes import torch's model stack,
TerraTorch and the backbones (about 15 s of CPU per process here); the Tune function and the
Train controller of every trial stay light. Metrics travel `ray.train.report` → Train V2's
`TuneReportCallback` → Tune, once per epoch, so ASHA can stop a trial between epochs.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Any

import lightning.pytorch as pl
import ray
import ray.train
import torch
import yaml
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

import em_backbones  # noqa: F401  (registers the project's backbones in this process)
from em_backbones.memory import gigabytes
from search.data import PreparedData
from search.faults import FaultGuard, cause_of
from search.memory_meter import PeakMemoryMeter
from search.space import parse_space
from search.storage import materialise
from search.terratorch_config import terratorch_config

VAL_METRIC = "val/mIoU"
TEST_METRIC = "test/mIoU"
SHARDABLE_DATAMODULE = "em_backbones.datamodules.ShardableMultiModalDataModule"


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


def train(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: build datamodule, task and Lightning Trainer from the TerraTorch config.

    The space arrives as its YAML text and the config is built here, not shipped from the trial:
    the tiles' local paths differ per node when they come from a storage URI.
    """
    space = parse_space(yaml.safe_load(loop_config["space_yaml"]), loop_config["space_source"])
    prepared = PreparedData.load(materialise(loop_config["data"]))
    config = terratorch_config(space, loop_config["params"], prepared)
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
