"""Lightning callback that measures each trial's peak training memory (see em_backbones.sizing.memory)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from em_backbones.sizing.memory import (
    CPU_METHOD,
    CUDA_METHOD,
    MemoryBreakdown,
    RecomputeProbe,
    SavedActivationCounter,
    gradient_bytes,
    optimizer_state_bytes,
    weight_bytes,
)


class PeakMemoryMeter(pl.Callback):
    """Peak bytes of a training step: CUDA allocator peak on GPU, documented accounting on CPU."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.peak_breakdown: MemoryBreakdown | None = None
        self._counter: SavedActivationCounter | None = None
        self._recompute: RecomputeProbe | None = None
        self._recompute_bytes: int | None = None  # measured at the first step: shapes do not change
        self.on_cuda = False

    @property
    def method(self) -> str:
        return CUDA_METHOD if self.on_cuda else CPU_METHOD

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_cuda = pl_module.device.type == "cuda"
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.on_cuda:
            if self._recompute_bytes is None:
                self._recompute = RecomputeProbe(pl_module)
            self._counter = SavedActivationCounter(exclude=pl_module).__enter__()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._counter is None:
            return
        self._counter.__exit__(None, None, None)
        if self._recompute is not None:
            self._recompute_bytes, self._recompute = self._recompute.measure(self._counter.seen), None
        optimizers = trainer.optimizers
        step = MemoryBreakdown(
            weights=weight_bytes(pl_module),
            gradients=gradient_bytes(pl_module),
            # The optimizer allocates its state at the first step, so from the second step on this
            # is the real state; the peak is taken over all steps of the trial.
            optimizer_state=sum(optimizer_state_bytes(o) for o in optimizers),
            activations=self._counter.bytes,
            recompute=self._recompute_bytes or 0,
        )
        self._counter = None
        if step.total > self.peak_bytes:
            self.peak_bytes, self.peak_breakdown = step.total, step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.on_cuda:
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(pl_module.device))
