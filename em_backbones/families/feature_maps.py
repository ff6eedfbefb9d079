"""From a backbone's layers to the feature maps TerraTorch's decoders take: which layers, and in what shape."""

from __future__ import annotations

import math

import torch


def evenly_spaced_layers(depth: int, count: int = 4) -> list[int]:
    """Indices of `count` layers spread over the depth, always ending at the last layer."""
    count = min(count, depth)
    return sorted({round((i + 1) * depth / count) - 1 for i in range(count)})


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """[B, L, D] patch tokens on a square grid → [B, D, sqrt(L), sqrt(L)]."""
    batch, length, dim = tokens.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"expected a square token grid, got {length} tokens")
    return tokens.transpose(1, 2).reshape(batch, dim, side, side)


def stack_modalities(x: dict[str, torch.Tensor] | torch.Tensor, modalities: list[str]) -> torch.Tensor:
    """The modality dict TerraTorch's datamodule yields, as one tensor of channels in `modalities` order."""
    if isinstance(x, torch.Tensor):
        return x
    missing = [m for m in modalities if m not in x]
    if missing:
        raise KeyError(f"input lacks modalities {missing}; got {sorted(x)}")
    return torch.cat([x[m] for m in modalities], dim=1)


def drop_token_embedding(language_model: torch.nn.Module) -> None:
    """Free an LLM's token-embedding table when its layers only ever receive `inputs_embeds`.

    The VLM and LLM backbones feed their decoder layers projected patch tokens, never token ids, so
    the table (0.31 B parameters in Qwen2.5-3B) is dead weight: dropping it is the "as backbone" model.
    """
    language_model.embed_tokens = None
