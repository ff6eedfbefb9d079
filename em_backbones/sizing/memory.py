"""Measure a training step's memory, on CUDA or on the CPU.

On CUDA the allocator knows the truth: peak allocated bytes. On the CPU there is no allocator
counter to read, so the trial accounts for what training keeps alive at its peak, the moment
between the end of the forward pass and the start of backward:

    weights + gradients + optimizer state + tensors autograd saved for backward

Weights are parameters (quantized ones at their packed size), buffers and quantization constants.

Saved tensors are counted through `torch.autograd.graph.saved_tensors_hooks`, once per storage,
and storages that are parameters are not counted twice. With gradient checkpointing, backward
rebuilds one checkpointed layer at a time, and what that layer saves sits on top of everything
above: `RecomputeProbe` runs each distinct checkpointed layer once more without checkpointing,
on the inputs it saw, under the same count, and the largest is the step's `recompute` part.
Transient buffers freed inside the
forward pass are not included: the figure is a lower bound on the process's true peak, exact
for what scales with model size, batch and checkpointing, which is what the search compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bitsandbytes as bnb
import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from em_backbones.techniques.quantization import quantization_state_bytes

CPU_METHOD = "cpu_accounting(weights+grads+optimizer_state+saved_activations)"
CUDA_METHOD = "cuda_max_memory_allocated"


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes() if tensor.device.type != "meta" else tensor.numel() * tensor.element_size()


def parameter_bytes(model: nn.Module) -> int:
    return sum(tensor_bytes(p) for p in model.parameters())


def weight_bytes(model: nn.Module) -> int:
    """Everything the model holds: parameters (packed, for quantized layers), buffers, and the
    quantization constants bitsandbytes keeps beside its packed weights."""
    return parameter_bytes(model) + sum(tensor_bytes(b) for b in model.buffers()) + quantization_state_bytes(model)


def gradient_bytes(model: nn.Module) -> int:
    """Bytes the gradients of trainable parameters occupy (allocated or about to be)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


class SavedActivationCounter:
    """Counts bytes autograd saves for backward while active; one count per storage.

    Use as a context manager around a forward pass. `bytes` is the total held when the forward
    ends, which is the activation peak of the step. bitsandbytes' int8 matmul keeps its input on
    its autograd context rather than through `save_for_backward`, which the hooks cannot see; when
    `exclude` (the model) is given, inputs of its `Linear8bitLt` layers are counted by a forward hook.
    """

    def __init__(self, exclude: nn.Module | None = None, already_counted: set[int] | None = None) -> None:
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude else set()
        self._int8_layers = [m for m in exclude.modules() if isinstance(m, bnb.nn.Linear8bitLt)] if exclude else []
        self._handles: list = []
        self.seen: set[int] = set(already_counted or ())
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _count(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "meta":
            ptr = tensor.untyped_storage().data_ptr()
            if ptr not in self.seen and ptr not in self._exclude:
                self.seen.add(ptr)
                self.bytes += tensor.untyped_storage().nbytes()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._count(tensor)
        return tensor

    def _int8_input(self, module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled() and args and args[0].requires_grad:
            self._count(args[0])

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> "SavedActivationCounter":
        self._hooks.__enter__()
        self._handles = [m.register_forward_pre_hook(self._int8_input) for m in self._int8_layers]
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles = []


def checkpointed_units(model: nn.Module) -> list[nn.Module]:
    """The layers backward recomputes: Hugging Face's checkpointing layers, and blocks `checkpoint_blocks` wrapped."""
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", None) is True
            and (isinstance(m, GradientCheckpointingLayer) or getattr(m, "_em_checkpointed", False))]


class RecomputeProbe:
    """Bytes the recomputation of one checkpointed layer holds in backward, on top of the end of forward.

    Forward pre-hooks keep the inputs each distinct layer (type and input shapes) was first called
    with; `measure` runs those layers again with checkpointing off, under a saved-tensor count that
    skips what the forward already counted, and returns the largest. The random number generator is
    forked around it, so training continues exactly as without the probe.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._calls: dict[tuple, tuple[nn.Module, tuple, dict[str, Any]]] = {}
        self._handles = [unit.register_forward_pre_hook(self._capture, with_kwargs=True)
                         for unit in checkpointed_units(model)]

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if module.training and torch.is_grad_enabled():
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            self._calls.setdefault((type(module), shapes), (module, args, kwargs))

    def measure(self, already_counted: set[int]) -> int:
        for handle in self._handles:
            handle.remove()
        largest = 0
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            for module, args, kwargs in self._calls.values():
                module.gradient_checkpointing = False
                try:
                    with SavedActivationCounter(self._model, already_counted) as counter:
                        module(*args, **kwargs)
                finally:
                    module.gradient_checkpointing = True
                largest = max(largest, counter.bytes)
        self._calls.clear()
        return largest


@dataclass
class MemoryBreakdown:
    """One training step's peak memory in parts (bytes), measured (search/training/memory_meter.py) or predicted
    (em_backbones/sizing/estimate.py's MemoryEstimate, which adds what a GPU sees on top)."""

    weights: float
    gradients: float
    optimizer_state: float
    activations: float  # tensors autograd keeps for backward at the end of the forward pass
    recompute: float = 0.0  # with gradient checkpointing: one layer rebuilt in backward, on top of the rest

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer_state + self.activations + self.recompute


def gigabytes(n_bytes: float) -> float:
    return n_bytes / 1e9


def account_training_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> MemoryBreakdown:
    """The CPU accounting of one AdamW step of `model` on `batch` (loss: mean square of its outputs): weights,
    gradients, optimizer state, saved activations and the recomputed checkpointed unit. Two steps run: the
    second holds the optimizer state the first one created."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    memory = MemoryBreakdown(weight_bytes(model), 0, 0, 0)
    for _ in range(2):
        recompute = RecomputeProbe(model)
        with SavedActivationCounter(exclude=model) as counter:
            loss = sum(o.square().mean().float() for o in model(batch))  # the outputs as they are: no fp32 copy
        memory = MemoryBreakdown(weight_bytes(model), gradient_bytes(model), optimizer_state_bytes(optimizer),
                                 counter.bytes, recompute.measure(counter.seen))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return memory
