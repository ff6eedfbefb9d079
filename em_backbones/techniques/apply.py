"""Memory-saving techniques applied to a built backbone: quantization, LoRA, gradient checkpointing.

All three arrive as backbone arguments (`backbone_quantization_bits`, `backbone_lora_rank`,
`backbone_gradient_checkpointing`, ...), so a TerraTorch YAML that names them trains the same model.

What trains under each setting (TerraTorch's decoder and head always train):
- 16 bits, rank 0: the whole backbone (full fine-tuning).
- 4 or 8 bits, rank 0: quantized layers (weights and biases) are frozen; norms,
  embeddings, projector, adapters still train.
- rank > 0 (LoRA; QLoRA on a quantized backbone): the pretrained backbone is frozen, the LoRA
  matrices train, and so do modules the backbone adds that have no pretrained weights
  (`new_parameters()`: band adapters, stems).

A backbone class opts in by providing `quantizable_blocks()` (the transformer blocks whose Linear
layers are quantized and LoRA'd), `lora_target_names` (leaf names of those layers),
`new_parameters()`, `checkpointed_modules()` (Hugging Face models, which checkpoint themselves,
or lists of blocks), and optionally `expert_modules()` (parents of 3-D mixture-of-experts weights).
"""

from __future__ import annotations

import functools

from peft import LoraConfig, inject_adapter_in_model, prepare_model_for_kbit_training
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from em_backbones.techniques.config import Techniques
from em_backbones.techniques.quantization import QUANTIZED_LAYERS, QuantizedExperts, bnb_config, quantize_linear_layers


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in backward instead of storing them.

    Uses PyTorch's non-reentrant checkpoint, which works with inputs that do not require grad
    and with keyword arguments. Only active in training mode, so evaluation costs nothing extra.
    """
    for block in blocks:
        if getattr(block, "_em_checkpointed", False):
            continue
        original_forward = block.forward

        @functools.wraps(original_forward)
        def forward(*args, _original=original_forward, _block=block, **kwargs):
            if _block.training and _block.gradient_checkpointing:
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        block.forward = forward
        block._em_checkpointed = True
        block.gradient_checkpointing = True  # as on Hugging Face's layers: the memory probe turns it off to measure


def enable_checkpointing(backbone: nn.Module) -> None:
    """Transformers' own activation checkpointing for its models; `checkpoint_blocks` for the rest."""
    for module in backbone.checkpointed_modules():
        if isinstance(module, PreTrainedModel):
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            checkpoint_blocks(module)


def lora_target_modules(backbone: nn.Module) -> list[str]:
    """Full names of the Linear layers LoRA adapts: the named leaves inside the quantizable blocks."""
    block_ids = {id(b) for b in backbone.quantizable_blocks()}
    names = []
    for prefix, module in backbone.named_modules():
        if id(module) in block_ids:
            names += [f"{prefix}.{n}" for n, m in module.named_modules()
                      if n.rsplit(".", 1)[-1] in backbone.lora_target_names and hasattr(m, "weight")]
    return names


def apply_techniques(backbone: nn.Module, techniques: Techniques) -> nn.Module:
    """Quantize, then freeze and add LoRA, as peft's QLoRA recipe does, then checkpoint; in place."""
    config = bnb_config(techniques.quantization_bits, techniques.quant_type, techniques.double_quant)
    if config is not None:
        for blocks in backbone.quantizable_blocks():
            quantize_linear_layers(blocks, config)
        for parent, name in backbone.expert_modules():
            if not isinstance(getattr(parent, name), QuantizedExperts):  # not already quantized while loading
                setattr(parent, name, QuantizedExperts(getattr(parent, name), config))
        # What transformers sets after a quantized from_pretrained; peft reads it.
        backbone.is_loaded_in_4bit = config.load_in_4bit
        backbone.is_loaded_in_8bit = config.load_in_8bit
        # Freezes everything and upcasts 16-bit non-quantized weights to fp32 for stable training.
        prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
        if techniques.lora_rank == 0:  # everything but the quantized layers (weights and biases) trains
            quantized = {id(p) for m in backbone.modules() if isinstance(m, QUANTIZED_LAYERS) for p in m.parameters()}
            for param in backbone.parameters():
                param.requires_grad_(id(param) not in quantized)
    if techniques.lora_rank > 0:
        backbone.requires_grad_(False)
        inject_adapter_in_model(
            LoraConfig(r=techniques.lora_rank, lora_alpha=techniques.alpha, lora_dropout=techniques.lora_dropout,
                       target_modules=lora_target_modules(backbone)),
            backbone,
        )
        for param in backbone.new_parameters():
            param.requires_grad_(True)
    if techniques.gradient_checkpointing:
        enable_checkpointing(backbone)
    return backbone
