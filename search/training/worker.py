"""What trains a trial: Lightning on a TerraTorch segmentation task, built from the trial's TerraTorch config.

One fit path for both runners (search/execution/trial.py): a single-worker trial calls `train` inside its
Ray Tune actor, which Tune reuses for the next trial (`reuse_actors`), so the model stack below is
imported once per actor; a multi-worker (DDP) trial calls it in every Ray Train worker. Only the
report function and the Lightning strategy differ.

Nothing a trial sets survives it in a reused process: the seed is set by `seed_everything` at the
start of every trial, torch's thread count is set from the trial's CPUs, peak memory is measured
by a meter created per trial (CUDA peak statistics reset at its start), and the model, optimizer
and data loaders are released and garbage-collected at the end.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable

import lightning.pytorch as pl
import psutil
import ray
import torch
import yaml

import em_backbones.registered  # noqa: F401  (registers the project's backbones in this process)
from em_backbones.sizing.memory import gigabytes
from em_backbones.techniques.loading import release_heap
from search.data.base_config import instantiate, with_absolute_data_paths
from search.data.storage import materialise
from search.data.tiles import PreparedData
from search.plan.faults import cause_of
from search.plan.schema import Space, objective_value
from search.plan.space import effective_space, parse_space
from search.plan.terratorch_config import terratorch_config
from search.training.chip_scores import ChipConfusion
from search.training.fault_guard import FaultGuard
from search.training.memory_meter import PeakMemoryMeter
from search.training.system_metrics import SystemSampler

VAL_METRIC = "val/mIoU"
TEST_METRIC = "test/mIoU"
SHARDABLE_DATAMODULE = "em_backbones.datamodules.ShardableMultiModalDataModule"
Report = Callable[[dict[str, Any]], None]

TRIAL_OWNED_TRAINER_KEYS = ("accelerator", "devices", "callbacks", "logger", "enable_checkpointing",
                            "enable_progress_bar", "enable_model_summary", "strategy", "num_nodes", "plugins",
                            "default_root_dir")
TRIALS_IN_THIS_PROCESS = 0  # how many trials this process trained before the current one (0: a fresh process)


class EpochReporter(pl.Callback):
    """After each epoch's validation: report mIoU, peak GB and their ratio (plus where and how it ran)."""

    def __init__(self, meter: PeakMemoryMeter, report: Report, constant: dict[str, Any], overhead_gb: float,
                 system: SystemSampler) -> None:
        self.meter = meter
        self.system = system
        self.overhead_gb = overhead_gb  # what the trial occupies beside its peak on its device (memory.overhead_gb)
        self.report = report
        self.constant = constant  # reported with every epoch: seed, process facts, the prediction
        self.last: dict[str, Any] = {}  # the latest epoch's report, repeated with the test score
        self.started = self.created = time.monotonic()
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
        # Lightning's own set-up inside fit: datasets, loaders, optimizer, moving the model.
        self.constant["fit_setup_seconds"] = self.started - self.created

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        miou = float(trainer.callback_metrics.get(VAL_METRIC, float("nan")))
        loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
        workers = self.worker_peaks()
        # Per worker: the largest of the workers' own peaks, the figure that decides whether it fits.
        peak_gb = gigabytes(max(peak for _, peak in workers))
        breakdown = self.meter.peak_breakdown
        metrics = {
            **self.constant,
            "epoch": trainer.current_epoch + 1,
            "val_miou": miou,
            "train_loss": loss,
            "peak_gb": peak_gb,
            "occupied_gb": peak_gb + self.overhead_gb,
            **self.system.summary(),
            "memory_method": self.meter.method,
            "objective": objective_value(miou, peak_gb + self.overhead_gb),
            "train_seconds": time.monotonic() - self.started,
            "worker_node_ip": self.node_ip,
            "worker_node_ids": [node for node, _ in workers],
            "worker_peak_gb": [gigabytes(peak) for _, peak in workers],
            "world_size": trainer.world_size,
            "train_batches": int(trainer.num_training_batches),
        }
        if breakdown is not None:
            metrics.update({
                "param_gb": gigabytes(breakdown.weights),
                "grad_gb": gigabytes(breakdown.gradients),
                "optimizer_gb": gigabytes(breakdown.optimizer_state),
                "activation_gb": gigabytes(breakdown.activations + breakdown.recompute),  # recompute included
            })
        self.last = metrics
        self.report(metrics)


def trainer_for(config: dict[str, Any], callbacks: list[pl.Callback], distributed: bool) -> pl.Trainer:
    """Lightning's Trainer from the config's `trainer` section; Ray's DDP strategy for multi-worker trials."""
    # A base config's own loggers, callbacks and checkpoints belong to `terratorch fit`, not to a trial.
    args = {k: v for k, v in config["trainer"].items() if k not in TRIAL_OWNED_TRAINER_KEYS}
    common = dict(callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False, accelerator="auto",
                  logger=False, enable_checkpointing=False)
    if not distributed:
        return pl.Trainer(**args, **common, devices=1)
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    trainer = pl.Trainer(**args, **common, devices="auto", use_distributed_sampler=True, strategy=RayDDPStrategy(),
                         plugins=[RayLightningEnvironment()])
    return prepare_trainer(trainer)


def predicted_gb(space: Space, params: dict[str, Any]) -> float | None:
    """The estimator's peak for this trial, unless the driver already predicted it (a memory budget)."""
    if params.get("predicted_gb") is not None:
        return float(params["predicted_gb"])
    from search.plan.sampling import predicted_peak_gb

    return predicted_peak_gb(space, params["backbone"], params)


def process_facts(cpus: float, import_seconds: float) -> dict[str, Any]:
    """Facts about the process a trial runs in, for the start-up breakdown and the leak benchmark."""
    return {"pid": os.getpid(), "trials_before_in_process": TRIALS_IN_THIS_PROCESS,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "import_seconds": import_seconds, "rss_mb_at_start": psutil.Process().memory_info().rss / 2**20,
            "torch_threads": torch.get_num_threads(), "cpus": cpus}


REPORTED_AT = "reported_at"


def stamped(report: Report) -> Report:
    """Each report with the moment it was made (Unix seconds, to the microsecond). Tune's `timestamp` is whole
    seconds (Ray's session overwrites any other), and a trial's span (results' `started_at`, `finished_at`:
    the last report's time less Tune's `time_total_s`) was then off by up to a second: enough to show a
    trial beside the one before it on a packed GPU, which Ray had not scheduled."""
    return lambda metrics: report({**metrics, REPORTED_AT: time.time()})


def train(loop_config: dict[str, Any], report: Report, distributed: bool = False, cpus: float = 1.0,
          import_seconds: float = 0.0) -> None:
    """Build datamodule, task and Trainer from the trial's TerraTorch config and fit; report every epoch.

    A training error of a single-worker trial is reported as its fault and ends the trial (raising
    would make Ray restart it and fail the same way); a multi-worker trial raises, because the
    other ranks wait in collectives until an error stops them.
    """
    global TRIALS_IN_THIS_PROCESS
    started = time.monotonic()
    report = stamped(report)
    torch.set_num_threads(max(1, int(cpus)))  # the trial's own CPUs, whatever a previous trial set
    params = loop_config["params"]
    prepared = PreparedData.load(materialise(loop_config["data"]))
    space = effective_space(parse_space(yaml.safe_load(loop_config["space_yaml"]), loop_config["space_source"]),
                            prepared)
    config = terratorch_config(space, params, prepared)
    if prepared.base_dir:
        config = with_absolute_data_paths(config, prepared.base_dir)
    if distributed and config["data"]["class_path"].endswith("GenericMultiModalDataModule"):
        # Lightning's sampler injection would re-batch TerraTorch's loaders to size 1
        # (em_backbones/datamodules.py); the subclass differs from TerraTorch's in nothing else.
        # Any other datamodule (a base config's own) is used as written.
        config["data"]["class_path"] = SHARDABLE_DATAMODULE
    meter = PeakMemoryMeter()
    constant = {**process_facts(cpus, import_seconds), "seed": config["seed_everything"], "fold": params.get("fold"),
                "predicted_gb": predicted_gb(space, params)}
    trial_id = loop_config.get("trial_id")
    system = SystemSampler(constant["gpu_ids"], {"search": space.name, "trial": trial_id} if trial_id else None).start()
    reporter = EpochReporter(meter, report, constant, space.memory.overhead_gb, system)
    chips = ChipConfusion(prepared.num_classes)
    trainer = task = datamodule = None
    try:
        pl.seed_everything(config["seed_everything"], workers=True, verbose=False)
        datamodule = instantiate(config["data"])
        task = instantiate(config["model"])
        fault = space.fault_for(params.get("trial_number"))
        if fault is not None and params.get("oom_retries", 0) >= fault.attempts:
            fault = None  # injected on its first `attempts` runs only: an out-of-memory retry may then succeed
        trainer = trainer_for(config, [meter, reporter, chips, FaultGuard(fault)], distributed)
        reporter.constant["setup_seconds"] = time.monotonic() - started
        trainer.fit(task, datamodule=datamodule)
        if params.get("evaluate_test"):
            # Held-out evaluation (search/execution/held_out.py): one more report, the last epoch's plus the test
            # mIoU (TerraTorch's, pooled over the test chips) and each test chip's confusion matrix.
            trainer.test(task, datamodule=datamodule, verbose=False)
            report({**reporter.last, "test_miou": float(trainer.callback_metrics.get(TEST_METRIC, float("nan"))),
                    "chip_confusion": chips.as_lists()})
    except Exception as err:  # noqa: BLE001 - every training error ends this trial, none the search
        if distributed:
            raise
        epoch = trainer.current_epoch + 1 if trainer is not None else 0
        report({**constant, "fault": cause_of(err), "fault_error": f"{type(err).__name__}: {err}"[:500],
                "objective": float("nan"), "epoch": epoch, "peak_gb": gigabytes(meter.peak_bytes),
                "val_miou": float("nan")})
    finally:
        system.stop()
        TRIALS_IN_THIS_PROCESS += 1
        del trainer, task, datamodule, reporter
        release_memory()


def release_memory() -> None:
    """Collect the finished trial's objects and hand freed heap pages back to the OS.

    Without `malloc_trim`, glibc keeps the freed arenas of one trial's tensors and a reused process's
    RSS creeps up trial after trial (measured: +390 MB over 6 one-epoch trials, flat with it).
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    release_heap()
