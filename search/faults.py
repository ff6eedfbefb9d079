"""Trial failures: a NaN-loss stop, causes for results.parquet, and fault injection for testing.

Fault injection is a documented testing aid, off unless a space lists `faults:`; each entry makes
one trial (Optuna's trial number, the order trials are proposed in, from 0) raise, produce a NaN
loss, or run out of memory at the first batch of a chosen epoch, so the search's handling of
failures can be exercised for real.

Why a single-worker trial catches its own failure and reports it instead of raising: Ray Train
restarts a worker group after *any* worker error (FailureConfig.max_failures), which is what a
lost node needs, but a NaN loss or an OOM would fail again the same way. Reporting the fault ends
the trial at once; the Tune function then turns it into a failed trial (search/trial.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl
import torch

FAULT_KINDS = ("raise", "nan", "oom")
CAUSE_EXCEPTION = "exception"
CAUSE_NAN = "nan_loss"
CAUSE_OOM = "out_of_memory"
CAUSE_NODE = "node_lost"
CAUSE_INFEASIBLE = "over_memory_budget"
CAUSE_WORKERS_NOT_STARTED = "workers_not_started"  # Ray Train's worker group never started (search/trial.py)


@dataclass(frozen=True)
class Fault:
    trial: int  # Optuna trial number
    kind: str  # one of FAULT_KINDS
    epoch: int = 1  # 1-based; the fault fires at this epoch's first training batch


class InjectedFault(RuntimeError):
    """Raised by a `raise` fault."""


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite; more epochs cannot fix it."""


def cause_of(error: BaseException | str) -> str:
    """A short cause for results.parquet from an exception or its text."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    if "WorkerGroupStartupTimeoutError" in text or "worker group startup timed out" in text:
        return CAUSE_WORKERS_NOT_STARTED
    if "NonFiniteLoss" in text:
        return CAUSE_NAN
    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return CAUSE_OOM
    if any(marker in text for marker in ("ActorDiedError", "NodeDiedError", "RayActorError", "node died",
                                         "ActorUnavailableError")):
        return CAUSE_NODE
    return CAUSE_EXCEPTION


class FaultGuard(pl.Callback):
    """Stops training at the first non-finite loss, and fires this trial's injected fault, if any."""

    def __init__(self, fault: Fault | None = None) -> None:
        self.fault = fault

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        fault = self.fault
        if fault is None or batch_idx != 0 or trainer.current_epoch + 1 != fault.epoch:
            return
        if fault.kind == "raise":
            raise InjectedFault(f"injected fault: trial {fault.trial} raises at epoch {fault.epoch}")
        if fault.kind == "oom":
            # The exception PyTorch's CUDA caching allocator raises; a real CPU OOM kills the process.
            raise torch.OutOfMemoryError(f"injected fault: CUDA out of memory (trial {fault.trial}, "
                                         f"epoch {fault.epoch})")
        if fault.kind == "nan":
            with torch.no_grad():  # poison one trainable weight: the loss turns NaN the honest way
                next(p for p in pl_module.parameters() if p.requires_grad).fill_(float("nan"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLoss(f"train loss {float(loss)} at epoch {trainer.current_epoch + 1}, batch {batch_idx}")
