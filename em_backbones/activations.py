"""The activation vocabulary backbones describe themselves in, for the memory estimator.

A backbone's `memory_architecture(img_size, modalities)` (em_backbones/contract.py) returns an
`Architecture`: its layers as counts of identical `Layer`s, each a sum of per-token terms (elements
autograd keeps for backward, in the style of Korthikanti et al. 2022), plus the activations outside
them. The block kinds several families share live here; a family's own kinds live in its module.
Light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    # Elements per (padded) token autograd keeps in fp32 when training at 16 bits: RMSNorm computes in
    # fp32 and keeps its upcast input; Mamba-2's reference scan runs in fp32. Read off bf16 traces.
    upcast: float = 0.0
    padded_upcast: float = 0.0
    indices: float = 0.0  # int64 elements per token whatever the precision (max-pool indices)

    def elements(self, batch: int, linear: bool, norm: bool) -> float:
        per_token = self.always + (self.linear if linear else 0.0) + (self.norm if norm else 0.0)
        return batch * (self.tokens * per_token + self.padded_tokens * self.padded)

    def saved_bytes(self, batch: int, linear: bool, norm: bool, act_bytes: int) -> float:
        """One layer's saved tensors: its elements at the training precision, fp32 upcasts at 16 bits."""
        upcast = batch * (self.tokens * self.upcast + self.padded_tokens * self.padded_upcast) if act_bytes < 4 else 0.0
        return (self.elements(batch, linear, norm) * act_bytes + upcast * (4 - act_bytes) + self.constant_bytes
                + batch * self.tokens * self.indices * 8)


@dataclass
class Architecture:
    """What the estimator reads from a backbone: its layers and the activations outside them
    (elements per sample, except `constant`)."""

    layers: list[Layer]
    outside_always: float = 0.0  # kept whatever trains: adapter/stem inputs of new modules, norm inputs
    outside_trained: float = 0.0  # kept only while pretrained stems/projectors/norms train (not under LoRA)
    constant: float = 0.0  # independent of batch (Clay's wavelength weight generator)


def unet_stage(pixels: int, width: int, below: int, encoder: bool, decoder: bool, first_input: int = 0) -> Layer:
    """One resolution of TerraTorch's UNet (mmseg's: ConvModule = conv, BatchNorm, ReLU; max-pool down,
    transposed-conv up, skip concatenation), per pixel at this resolution, `width` channels here and
    `below` at the finer resolution above it (0 at the finest). Read off a `saved_tensors_hooks` trace:
    each ConvModule keeps its BatchNorm's input and its ReLU's output (2 x width; the conv's input is the
    previous ReLU's output, already kept); the encoder's max-pool output (below) and its int64 indices;
    the decoder's up-convolution (2 x width), the concatenated skip (2 x width) and two ConvModules."""
    always = first_input + (4 * width if encoder else 0) + (below if encoder else 0) + (8 * width if decoder else 0)
    return Layer(1, pixels, width, always=always, indices=below if encoder else 0)


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
        return Layer(count, tokens, h, always=8 * h + f + 4 + heads, linear=2 * h + f, norm=6 * h, lora_targets=6,
                     upcast=5 * h + heads + 4)
    return Layer(count, tokens, h, always=6 * h + f + 4 + heads, linear=2 * h + f, norm=2 * h, lora_targets=6)


def llama_layer(count: int, tokens: int, h: int, f: int, kv: int, heads: int) -> Layer:
    """Qwen2 / Llama decoder layer: RMSNorm, RoPE, grouped-query SDPA, SwiGLU MLP.
    always: x, rotated q, k and v (kv each), SDPA out (= o_proj input), x2, gate, up, SiLU out (3f).
    linear: both norm outputs, gate·up product (down input). norm: normalised inputs of 2 RMSNorms."""
    return Layer(count, tokens, h, always=4 * h + 2 * kv + 3 * f + 2 + heads,
                 linear=2 * h + f, norm=2 * h, lora_targets=7, upcast=3 * h + heads + 2)
