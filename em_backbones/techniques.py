"""Memory-saving techniques applied to a built backbone.

Gradient checkpointing is here; bitsandbytes quantization and peft LoRA arrive with the
memory-technique work and are refused clearly until then, so no trial silently records a
technique it did not apply.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

SUPPORTED_BITS = (4, 8, 16)


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
            if _block.training:
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        block.forward = forward
        block._em_checkpointed = True


def drop_token_embedding(language_model: nn.Module) -> None:
    """Free an LLM's token-embedding table when it only ever receives `inputs_embeds`.

    Vision backbones feed the LLM projected patch tokens, never token ids, so the table (0.31 B
    parameters in Qwen2.5-3B) is dead weight: dropping it is the "as backbone" model.
    """
    language_model.embed_tokens = None


def check_techniques(quantization_bits: int, lora_rank: int) -> None:
    """Refuse technique settings this build cannot yet apply, naming the argument."""
    if quantization_bits not in SUPPORTED_BITS:
        raise ValueError(f"quantization_bits must be one of {SUPPORTED_BITS}, got {quantization_bits}")
    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0 = off), got {lora_rank}")
    if quantization_bits != 16:
        raise NotImplementedError(f"quantization_bits={quantization_bits}: bitsandbytes quantization is not wired yet")
    if lora_rank > 0:
        raise NotImplementedError(f"lora_rank={lora_rank}: peft LoRA is not wired yet")
