"""bitsandbytes quantization of a built backbone's transformer blocks.

What is quantized: every `nn.Linear` inside the transformer blocks a backbone lists in
`quantizable_blocks()` (attention, MLP, Mamba in/out projections), and Granite's 3-D expert
weights. What stays at training precision, on purpose: norms, embeddings, patch embeddings,
position embeddings, the vision-language projector, routers, our band adapters and stems, and
TerraTorch's decoder and head. They are small, and quantizing them costs accuracy out of
proportion (the QLoRA recipe keeps them too).

The settings are a `transformers.BitsAndBytesConfig` (the same object `from_pretrained` takes),
and the layers are bitsandbytes' own `Linear4bit` / `Linear8bitLt`. Weights are quantized at
build time on whatever device they were built on (bitsandbytes quantizes when the parameter is
first moved to a real device).
"""

from __future__ import annotations

import logging
import math

import bitsandbytes as bnb
import torch
from torch import nn
from transformers import BitsAndBytesConfig

# bitsandbytes logs a warning on every int8 matmul whose input is not fp16 (every call in fp32 training).
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)

QUANTIZED_LAYERS = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
BLOCKSIZE_4BIT = 64  # bitsandbytes' default: one absmax per 64 weights
BLOCKSIZE_NESTED = 256  # double quantization: one fp32 absmax per 256 absmax values


def bnb_config(bits: int, quant_type: str = "nf4", double_quant: bool = True) -> BitsAndBytesConfig | None:
    """16 → None (no quantization); 8 → LLM.int8; 4 → NF4/FP4, optionally with double quantization.
    Arguments arrive validated by `em_backbones.techniques.config.Techniques`."""
    if bits == 16:
        return None
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant)


def quantized_linear(linear: nn.Linear, config: BitsAndBytesConfig) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weights, quantized, frozen; bias kept as is."""
    device = linear.weight.device
    if config.load_in_4bit:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=None,  # follow the activations: fp32 on CPU, bf16 under bf16 training
                                  compress_statistics=config.bnb_4bit_use_double_quant,
                                  quant_type=config.bnb_4bit_quant_type, device="meta")
        layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False,
                                         compress_statistics=config.bnb_4bit_use_double_quant,
                                         quant_type=config.bnb_4bit_quant_type, module=layer)
        # bitsandbytes repacks 4-bit weights for its AVX512-BF16 inference kernel on the first eval-mode
        # forward on CPU and never unpacks them for training, so training after a validation epoch
        # fails ("a view of a leaf Variable ... in-place"). Trials alternate the two: keep one format.
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    has_fp16_weights=False, threshold=config.llm_int8_threshold, device="meta")
        layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data, requires_grad=linear.bias.requires_grad)
    return layer.to(device)  # quantizes the weight


def quantized_weight_bytes(in_features: int, out_features: int, bits: int, double_quant: bool) -> float:
    """Bytes of one quantized weight matrix with its constants (NF4/FP4: 4.5 bits, 4.127 double-quantized)."""
    n = in_features * out_features
    if bits == 8:
        return n + 4 * out_features  # int8 weights + one fp32 scale per output row
    blocks = math.ceil(n / BLOCKSIZE_4BIT)
    if double_quant:  # 8-bit absmax + fp32 absmax per 256 of them + two 256/16-entry code books
        return n / 2 + blocks + 4 * math.ceil(blocks / BLOCKSIZE_NESTED) + 4 * (16 + 256 + 1)
    return n / 2 + 4 * blocks + 4 * 16


def quantizable_linears(blocks: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The layers quantization replaces: plain `nn.Linear`s under `blocks` (not subclasses such as
    MultiheadAttention's NonDynamicallyQuantizableLinear)."""
    return [(name, module) for name, module in blocks.named_modules() if type(module) is nn.Linear]


def quantize_linear_layers(blocks: nn.Module, config: BitsAndBytesConfig) -> None:
    """Replace every quantizable Linear under `blocks` in place."""
    for name, linear in quantizable_linears(blocks):
        blocks.set_submodule(name, quantized_linear(linear, config))


class QuantizedExperts(nn.Module):
    """Mixture-of-experts weights held as one bitsandbytes layer per expert and projection.

    Granite's experts are two 3-D parameters ([experts, 2*ffn, hidden] and [experts, hidden, ffn]),
    which bitsandbytes' layer replacement cannot reach. Each expert's slice becomes a
    `Linear4bit`/`Linear8bitLt`, so every expert weight is quantized and counted like any other
    quantized layer. The forward is transformers' reference expert loop: only experts that
    received tokens run.
    """

    def __init__(self, experts: nn.Module, config: BitsAndBytesConfig) -> None:
        super().__init__()
        self.num_experts = experts.num_experts
        self.act_fn = experts.act_fn

        def layers(weights: torch.Tensor) -> nn.ModuleList:
            out = []
            for w in weights.data:
                linear = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
                linear.weight = nn.Parameter(w, requires_grad=False)
                out.append(quantized_linear(linear, config))
            return nn.ModuleList(out)

        self.gate_up = layers(experts.gate_up_proj)
        self.down = layers(experts.down_proj)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
            hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        for expert in hit:
            top_k_pos, token_idx = torch.where(expert_mask[expert])
            gate, up = self.gate_up[expert](hidden_states[token_idx]).chunk(2, dim=-1)
            out = self.down[expert](self.act_fn(gate) * up) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final


def quantization_state_bytes(model: nn.Module) -> int:
    """Bytes of quantization constants that live beside the packed weights, not as parameters:
    4-bit absmax per block (itself 8-bit plus a second-level absmax under double quantization)
    and the code book; 8-bit per-row scales."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if isinstance(module, bnb.nn.Linear4bit) and state is not None:
            tensors = [state.absmax, state.code]
            if state.nested:
                tensors += [state.state2.absmax, state.state2.code, state.offset]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        elif isinstance(module, bnb.nn.Linear8bitLt) and getattr(weight, "SCB", None) is not None:
            total += weight.SCB.numel() * weight.SCB.element_size()
    return total
