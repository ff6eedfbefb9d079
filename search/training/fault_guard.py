"""The training-side half of search/plan/faults.py: a Lightning callback that fires injected faults and stops a NaN loss."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from search.plan.faults import Fault


class InjectedFault(RuntimeError):
    """Raised by a `raise` fault."""


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite; more epochs cannot fix it."""


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
