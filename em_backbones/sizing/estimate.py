"""Analytic training-step memory of a backbone: weights, gradients, optimizer state, activations.

Why analytic: the search must know whether InternVL2-40B with QLoRA fits a 24 GB GPU before it
spends an hour finding out, on machines that could never hold it. Parameter figures are exact
counts of the architecture, built on the `meta` device (no memory); activations follow
Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"):
per layer, a sum of s·b·(c·width) terms, one per tensor autograd keeps for backward.

Korthikanti's GPT layer is s·b·h·(34 + 5·a·s/h) bytes at 16 bits with dropout. Our layers have
no dropout (masks gone) and use SDPA (the 5·a·s/h attention-matrix term gone), and their MLPs,
norms and attention differ, so each block kind below lists its own terms; the coefficients were
read off the tensors one block of each kind saves for backward (a `saved_tensors_hooks` trace),
exactly as the paper derives 34 from the ops of a GPT layer. Which terms count depends on what
trains:
- `always`: needed for the input gradient (norm inputs, SDPA's q/k/v/output, activation inputs).
- `linear`: a Linear's input, kept only for its weight gradient — when the layer trains, when LoRA
  adapts it (lora_A needs it), or when it is 8-bit (bitsandbytes' int8 matmul keeps its input).
  A frozen 4-bit layer keeps only its packed weight.
- `norm`: RMSNorm / layer-scale products kept for their weight gradient; frozen under LoRA.
- `stem`: inputs of pretrained, non-quantized embeddings and projectors; frozen under LoRA.

Gradient checkpointing keeps one hidden state (h per token) per layer at the end of forward and
rebuilds one layer at a time in backward: `recompute` is that one layer, part of the true peak
and of `total`, as in the CPU accounting of `em_backbones.sizing.memory` (which measures it by rerunning
the layer). The peak a GPU sees adds `overhead` (allocator fragmentation and workspaces, stated
as 10% of the accounted bytes; the CUDA context itself is outside `max_memory_allocated`).
The Mamba-2 terms model transformers' PyTorch reference scan (what runs without `mamba_ssm`);
its chunked scan keeps chunk x chunk decay matrices per head, padded to `mamba_chunk_size`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from accelerate import init_empty_weights
from torch import nn

from em_backbones.activations import Architecture
from em_backbones.registry import build_backbone
from em_backbones.sizing.device import CUDA_CONTEXT_BYTES
from em_backbones.sizing.memory import MemoryBreakdown
from em_backbones.techniques.apply import lora_target_modules
from em_backbones.techniques.config import PRECISION_BYTES, Techniques
from em_backbones.techniques.quantization import quantizable_linears, quantized_weight_bytes

OVERHEAD_FRACTION = 0.10


def adamw_state_bytes(trainable: int, tensors: int, p_bytes: int) -> int:
    """AdamW's state: two moments per trainable parameter and a step counter per parameter tensor."""
    return 2 * p_bytes * trainable + 4 * tensors


@dataclass(frozen=True)
class ParameterGroups:
    """Parameter counts of the unquantized backbone, split the way techniques treat them."""

    quantizable: tuple[tuple[int, int], ...]  # (in, out) of each Linear/expert matrix that gets quantized
    quantizable_bias: int
    other: int  # floating parameters and buffers that stay at training precision
    new: int  # of `other`: trains even under LoRA
    lora_targets: tuple[tuple[int, int], ...]  # (in, out) of each LoRA-adapted layer
    tensors: int  # parameter tensors, for the optimizer's per-tensor step counters


@dataclass
class MemoryEstimate(MemoryBreakdown):
    """Predicted bytes of one training step: the parts the CPU accounting measures (`total`, the recomputed
    checkpointed layer included), plus a stated overhead, which make the peak a GPU sees."""

    trainable_params: int = 0

    @property
    def overhead(self) -> float:
        return OVERHEAD_FRACTION * self.total

    @property
    def peak(self) -> float:
        return self.total + self.overhead

    @property
    def gpu_footprint(self) -> float:
        """What one trial takes of a GPU: the allocator's peak plus its process's CUDA context."""
        return self.peak + CUDA_CONTEXT_BYTES

    def plus(self, other: MemoryBreakdown) -> "MemoryEstimate":
        """This estimate with another part of the task (decoder, head, loss) added, part by part."""
        return MemoryEstimate(weights=self.weights + other.weights, gradients=self.gradients + other.gradients,
                              optimizer_state=self.optimizer_state + other.optimizer_state,
                              activations=self.activations + other.activations,
                              recompute=self.recompute + other.recompute, trainable_params=self.trainable_params)


@functools.lru_cache(maxsize=64)
def backbone_profile(name: str, scale: str, img_size: int,
                     modalities: tuple[str, ...]) -> tuple[ParameterGroups, Architecture]:
    """Parameter groups and layer shapes of the unquantized backbone, built with empty weights
    (free at any scale); computed once per backbone, scale, size and modalities."""
    with init_empty_weights():  # buffers stay real: some builders compute with them (TerraMind)
        model = build_backbone(name, scale=scale, img_size=img_size, modalities=list(modalities))
    return parameter_groups(model), model.memory_architecture(img_size, tuple(modalities))


def parameter_groups(model: nn.Module) -> ParameterGroups:
    quantizable, quantized_params, bias = [], set(), 0
    for blocks in model.quantizable_blocks():
        for _, linear in quantizable_linears(blocks):
            quantizable.append((linear.in_features, linear.out_features))
            quantized_params.add(id(linear.weight))
            if linear.bias is not None:
                bias += linear.bias.numel()
    for parent, attr in getattr(model, "expert_modules", list)():
        for weights in (getattr(parent, attr).gate_up_proj, getattr(parent, attr).down_proj):
            quantizable += [(weights.shape[2], weights.shape[1])] * weights.shape[0]
            quantized_params.add(id(weights))
    floating = [t for t in [*model.parameters(), *model.buffers()] if id(t) not in quantized_params]
    other = sum(t.numel() for t in floating) - bias
    names = set(lora_target_modules(model))
    lora = tuple((m.in_features, m.out_features) for n, m in model.named_modules() if n in names)
    return ParameterGroups(tuple(quantizable), bias, other, sum(p.numel() for p in model.new_parameters()), lora,
                           sum(1 for _ in model.parameters()))


def estimate(name: str, scale: str, techniques: Techniques, batch_size: int, img_size: int,
             precision: str = "32-true", modalities: tuple[str, ...] = ("S1RTC", "S2L2A")) -> MemoryEstimate:
    """Predicted memory of one training step of the backbone alone (AdamW, loss on its outputs)."""
    groups, arch = backbone_profile(name, scale, img_size, tuple(modalities))
    p_bytes = act_bytes = PRECISION_BYTES[precision]
    bits, rank = techniques.quantization_bits, techniques.lora_rank
    quantizable = sum(i * o for i, o in groups.quantizable)

    if bits == 16:
        weights = p_bytes * (quantizable + groups.quantizable_bias + groups.other)
    else:
        weights = sum(quantized_weight_bytes(i, o, bits, techniques.double_quant) for i, o in groups.quantizable) \
            + p_bytes * (groups.quantizable_bias + groups.other)
    lora_params = rank * sum(i + o for i, o in groups.lora_targets)
    weights += p_bytes * lora_params
    if rank > 0:
        trainable = lora_params + groups.new
    elif bits < 16:
        trainable = groups.other
    else:
        trainable = quantizable + groups.quantizable_bias + groups.other
    gradients = p_bytes * trainable
    optimizer = adamw_state_bytes(trainable, groups.tensors, p_bytes)

    linear = rank > 0 or bits != 4  # only frozen 4-bit layers keep no input (see the module docstring)
    norm = rank == 0
    b = batch_size
    lora_per_token = rank + (techniques.lora_dropout > 0) * 1.25 * sum(i for i, _ in groups.lora_targets) / max(
        1, len(groups.lora_targets))
    activations = 0.0
    largest_unit = 0.0
    for layer in arch.layers:
        per_layer = layer.saved_bytes(b, linear, norm, act_bytes)
        if rank > 0:  # lora_A's output (rank wide) is kept for lora_B's gradient, per adapted Linear
            per_layer += b * layer.tokens * layer.lora_targets * lora_per_token * act_bytes
        kept = layer.checkpoints * b * layer.tokens * layer.hidden * act_bytes  # each checkpointed unit's input
        # Backward rebuilds one unit at a time; its input is already kept, the rest comes on top.
        largest_unit = max(largest_unit, (per_layer - kept - layer.constant_bytes) / layer.checkpoints)
        if techniques.gradient_checkpointing:
            activations += layer.count * (kept + layer.constant_bytes)
        else:
            activations += layer.count * per_layer
    outside = b * (arch.outside_always + (arch.outside_trained if rank == 0 else 0.0))
    activations += (outside + (arch.constant if rank == 0 else 0.0)) * act_bytes
    return MemoryEstimate(
        weights=weights, gradients=gradients, optimizer_state=optimizer, activations=activations,
        recompute=largest_unit if techniques.gradient_checkpointing else 0.0, trainable_params=int(trainable),
    )

