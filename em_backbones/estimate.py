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
rebuilds one layer at a time in backward: `recompute` is that one layer, part of the true peak.

What the CPU accounting of `em_backbones.memory` measures is `accounted` (end of forward); the
peak a GPU sees adds `recompute` and `overhead` (allocator fragmentation and workspaces, stated
as 10% of the accounted bytes; the CUDA context itself is outside `max_memory_allocated`).
The Mamba-2 terms model transformers' PyTorch reference scan (what runs without `mamba_ssm`);
its chunked scan keeps chunk x chunk decay matrices per head, padded to `mamba_chunk_size`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from accelerate import init_empty_weights
from torch import nn
from terratorch.registry import BACKBONE_REGISTRY

import em_backbones.registered  # noqa: F401  (the profile builds registered backbones)

from em_backbones.bands import stacked_band_names
from em_backbones.catalog import get_spec
from em_backbones.quantization import quantizable_linears
from em_backbones.techniques import lora_target_modules
from em_backbones.techniques_config import PRECISION_BYTES, Techniques

OVERHEAD_FRACTION = 0.10
BLOCKSIZE_4BIT = 64  # bitsandbytes' default: one absmax per 64 weights
BLOCKSIZE_NESTED = 256  # double quantization: one fp32 absmax per 256 absmax values


@dataclass
class Layer:
    """`count` identical layers over `tokens` tokens per sample; terms in elements per token."""

    count: int
    tokens: int
    hidden: int
    always: float
    linear: float = 0.0
    norm: float = 0.0
    padded_tokens: int = 0  # Mamba: chunk-padded length the `padded` terms scale with
    padded: float = 0.0
    constant_bytes: float = 0.0  # per layer, independent of batch (masks)
    lora_targets: int = 0  # Linear layers LoRA adapts in one such layer
    checkpoints: int = 1  # checkpointed units per layer, each keeping its input (Clay: attention, feed-forward)

    def elements(self, batch: int, linear: bool, norm: bool) -> float:
        per_token = self.always + (self.linear if linear else 0.0) + (self.norm if norm else 0.0)
        return batch * (self.tokens * per_token + self.padded_tokens * self.padded)


@dataclass
class Architecture:
    """What the estimator reads from a backbone: its layers and the activations outside them
    (elements per sample, except `constant`)."""

    layers: list[Layer]
    outside_always: float = 0.0  # kept whatever trains: adapter/stem inputs of new modules, norm inputs
    outside_trained: float = 0.0  # kept only while pretrained stems/projectors/norms train (not under LoRA)
    constant: float = 0.0  # independent of batch (Clay's wavelength weight generator)


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
class MemoryEstimate:
    """Predicted bytes of one training step; `accounted` is what the CPU accounting measures."""

    weights: float
    gradients: float
    optimizer_state: float
    activations: float
    recompute: float
    trainable_params: int

    @property
    def accounted(self) -> float:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    @property
    def overhead(self) -> float:
        return OVERHEAD_FRACTION * self.accounted

    @property
    def peak(self) -> float:
        return self.accounted + self.recompute + self.overhead


def quantized_weight_bytes(in_features: int, out_features: int, bits: int, double_quant: bool) -> float:
    """Bytes of one quantized weight matrix with its constants (NF4/FP4: 4.5 bits, 4.127 double-quantized)."""
    n = in_features * out_features
    if bits == 8:
        return n + 4 * out_features  # int8 weights + one fp32 scale per output row
    blocks = math.ceil(n / BLOCKSIZE_4BIT)
    if double_quant:  # 8-bit absmax + fp32 absmax per 256 of them + two 256/16-entry code books
        return n / 2 + blocks + 4 * math.ceil(blocks / BLOCKSIZE_NESTED) + 4 * (16 + 256 + 1)
    return n / 2 + 4 * blocks + 4 * 16


@functools.lru_cache(maxsize=64)
def backbone_profile(name: str, scale: str, img_size: int,
                     modalities: tuple[str, ...]) -> tuple[ParameterGroups, Architecture]:
    """Parameter groups and layer shapes of the unquantized backbone, built with empty weights
    (free at any scale); computed once per backbone, scale, size and modalities."""
    with init_empty_weights():  # buffers stay real: some builders compute with them (TerraMind)
        model = BACKBONE_REGISTRY.build(name, scale=scale, img_size=img_size, modalities=list(modalities))
    return parameter_groups(model), architecture(name, model, img_size, modalities)


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


# --- activations per block kind (elements per token; h width, f MLP width) -------------------------

def vit_layer(count: int, tokens: int, h: int, f: int, heads: int, checkpoints: int = 1) -> Layer:
    """timm / Clay pre-norm ViT block, LayerNorm + GELU, fused qkv, SDPA.
    always: x, qkv (3h), SDPA out (= proj input), x2, fc1 out (f), LN stats, logsumexp per head.
    linear: LN1 out, LN2 out (qkv/fc1 inputs), GELU out (fc2 input)."""
    return Layer(count, tokens, h, always=6 * h + f + 4 + heads, linear=2 * h + f, lora_targets=4,
                 checkpoints=checkpoints)


def internvit_layer(count: int, tokens: int, h: int, f: int, heads: int, rms_qk_norm: bool) -> Layer:
    """InternViT block: like ViT with separate q/k/v and layer scale (λ·x keeps x for λ's gradient).
    The 6B variant (RMSNorm + QK-norm) also keeps q and k before their norms and, for each RMSNorm's
    weight, the normalised input (4 norms)."""
    if rms_qk_norm:
        return Layer(count, tokens, h, always=8 * h + f + 4 + heads, linear=2 * h + f, norm=6 * h, lora_targets=6)
    return Layer(count, tokens, h, always=6 * h + f + 4 + heads, linear=2 * h + f, norm=2 * h, lora_targets=6)


def llama_layer(count: int, tokens: int, h: int, f: int, kv: int, heads: int) -> Layer:
    """Qwen2 / Llama decoder layer: RMSNorm, RoPE, grouped-query SDPA, SwiGLU MLP.
    always: x, rotated q, k and v (kv each), SDPA out (= o_proj input), x2, gate, up, SiLU out (3f).
    linear: both norm outputs, gate·up product (down input). norm: normalised inputs of 2 RMSNorms."""
    return Layer(count, tokens, h, always=4 * h + 2 * kv + 3 * f + 2 + heads,
                 linear=2 * h + f, norm=2 * h, lora_targets=7)


def granite_moe_terms(h: int, f: int, shared: int, top_k: int) -> tuple[float, float, float]:
    """Granite's MoE half-layer: RMSNorm, top-k router, experts (gate_up, SiLU, down), shared SwiGLU MLP."""
    always = h + top_k * (3 * f + h + 1) + 3 * shared + 10
    linear = h + top_k * (h + f) + shared
    return always, linear, h


def granite_layers(config, tokens: int) -> list[Layer]:
    """Attention layers (bidirectional mask, k/v repeated to all heads) and Mamba-2 layers, each + MoE."""
    h, heads = config.hidden_size, config.num_attention_heads
    moe_always, moe_linear, moe_norm = granite_moe_terms(h, config.intermediate_size,
                                                         config.shared_intermediate_size, config.num_experts_per_tok)
    attention = sum(kind in ("attention", "full_attention") for kind in config.layer_types)
    mamba = len(config.layer_types) - attention
    d_inner = config.mamba_expand * h
    mamba_heads, d_state, groups = config.mamba_n_heads, config.mamba_d_state, config.mamba_n_groups
    in_proj = 2 * d_inner + 2 * groups * d_state + mamba_heads
    chunk = config.mamba_chunk_size
    padded = math.ceil(tokens / chunk) * chunk
    return [
        Layer(attention, tokens, h, always=5 * h + heads + 2 + moe_always, linear=h + moe_linear,
              norm=h + moe_norm, constant_bytes=tokens * tokens, lora_targets=6),  # + the boolean mask
        # Mamba-2 reference scan: in_proj out, conv in/out, dt, the gated norm and out_proj input per
        # token; d_inner-wide chunk tensors (4), B/C per head (5) and chunk x chunk decays (3) per padded token.
        Layer(mamba, tokens, h, always=2 * h + in_proj + (d_inner + 2 * groups * d_state) + 3 * d_inner
              + 4 * mamba_heads + moe_always, linear=h + d_inner + moe_linear, norm=h + moe_norm,
              padded_tokens=padded, padded=4 * d_inner + 5 * mamba_heads * d_state + 3 * mamba_heads * chunk,
              constant_bytes=2 * chunk * chunk, lora_targets=4),
    ]


def architecture(name: str, model: nn.Module, img_size: int, modalities: tuple[str, ...]) -> Architecture:
    """Layers and stem terms of a meta-built backbone."""
    family = get_spec(name).family
    bands = len(stacked_band_names(list(modalities)))
    pixels = img_size * img_size
    if family == "internvl":
        vision, text = model.vlm.config.vision_config, model.vlm.config.text_config
        images = 2 if name == "earthmind_v1" else 1  # EarthMind: SAR and optical through one tower
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        patches = images * (img_size // patch) ** 2
        llm_tokens = patches // 4  # pixel shuffle merges 2 x 2 patches
        hv, ht = vision.hidden_size, text.hidden_size
        kv = text.num_key_value_heads * ht // text.num_attention_heads
        vit = internvit_layer(vision.num_hidden_layers, patches + images, hv, vision.intermediate_size,
                              vision.num_attention_heads, vision.norm_type == "rms_norm")
        llm = llama_layer(text.num_hidden_layers, llm_tokens, ht, text.intermediate_size, kv,
                          text.num_attention_heads)
        # Band adapters' raw-band inputs and 3-channel outputs (the patch convolution keeps its input even
        # when frozen); projector LayerNorm input and Linear-1 output (GELU input); the LLM's final norm
        # input; EarthMind's token reweighting (bilinear in/out) and alignment difference.
        always = bands * pixels + images * 3 * pixels + patches * hv + 2 * llm_tokens * ht
        if name == "earthmind_v1":
            always += 2.5 * llm_tokens * ht
        # Projector Linear inputs, final norm's normalised input.
        trained = patches * hv + 2 * llm_tokens * ht
        return Architecture([vit, llm], outside_always=always, outside_trained=trained)
    if family == "granite":
        config = model.llm.config
        tokens = (img_size // model.patch_size) ** 2
        # Stem convolution input (raw bands), lift input (stem width), final norm input and output.
        return Architecture(granite_layers(config, tokens), outside_always=bands * pixels
                            + tokens * model.patch_embed.out_channels + 2 * tokens * config.hidden_size)
    # TerraTorch-native ViTs
    block = model.quantizable_blocks()[0][0]
    linears = [m for m in block.modules() if type(m) is nn.Linear]
    h = linears[0].in_features
    f = max(m.out_features for m in linears if m.in_features == h and m.out_features != 3 * h)
    depth = len(model.quantizable_blocks()[0])
    grid = (img_size // model.patch_size) ** 2
    if name == "em_prithvi":  # patch embedding rebuilt for S1+S2: always trains
        return Architecture([vit_layer(depth, grid + 1, h, f, model.vit.blocks[0].attn.num_heads)],
                            outside_always=bands * pixels + (grid + 1) * h)
    if name == "em_terramind":  # one token stream per modality; per-modality patch projections
        tokens = len(modalities) * grid
        return Architecture([vit_layer(depth, tokens, h, f, model.vit.encoder[0].attn.num_heads)],
                            outside_always=tokens * h, outside_trained=bands * pixels)
    # Clay: the wavelength-conditioned patch embedding generates its weights once per batch.
    embedding = model.encoder.patch_embedding
    generator = embedding.weight_generator
    generator_ff = generator.encoder.layers[0].linear1.out_features
    constant = 2 * (generator.num_latent_tokens + bands + 1) * generator_ff + embedding.output_dim * bands
    return Architecture([vit_layer(depth, grid + 1, h, f, model.encoder.transformer.layers[0][0].heads, checkpoints=2)],
                        outside_always=(grid + 1) * h, outside_trained=bands * pixels, constant=constant)


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
    optimizer = 2 * p_bytes * trainable + 4 * groups.tensors  # AdamW: two moments + a step counter per tensor

    linear = rank > 0 or bits != 4  # only frozen 4-bit layers keep no input (see the module docstring)
    norm = rank == 0
    b = batch_size
    lora_per_token = rank + (techniques.lora_dropout > 0) * 1.25 * sum(i for i, _ in groups.lora_targets) / max(
        1, len(groups.lora_targets))
    activations = 0.0
    largest_layer = 0.0
    for layer in arch.layers:
        per_layer = layer.elements(b, linear, norm) * act_bytes + layer.constant_bytes
        if rank > 0:  # lora_A's output (rank wide) is kept for lora_B's gradient, per adapted Linear
            per_layer += b * layer.tokens * layer.lora_targets * lora_per_token * act_bytes
        largest_layer = max(largest_layer, per_layer)
        if techniques.gradient_checkpointing:
            kept = layer.checkpoints * b * layer.tokens * layer.hidden * act_bytes
            activations += layer.count * (kept + layer.constant_bytes)
        else:
            activations += layer.count * per_layer
    outside = b * (arch.outside_always + (arch.outside_trained if rank == 0 else 0.0))
    activations += (outside + (arch.constant if rank == 0 else 0.0)) * act_bytes
    return MemoryEstimate(
        weights=weights, gradients=gradients, optimizer_state=optimizer, activations=activations,
        recompute=largest_layer if techniques.gradient_checkpointing else 0.0, trainable_params=int(trainable),
    )

