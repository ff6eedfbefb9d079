"""Granite 4.0 Tiny (a text-only hybrid Mamba-2 / attention mixture-of-experts LLM) as a visual encoder.

Following "Frozen Transformers in Language Models Are Effective Visual Encoder Layers" (Pang et al.,
ICLR 2024): a small trainable stem turns S1+S2 patches into tokens, a linear layer lifts them to the
LLM's width, the LLM's blocks run over the patch tokens only (no text), and a linear layer per chosen
layer maps hidden states back out, reshaped to the patch grid.

Choices, and why:
- Stem: one 16 x 16 patch convolution over all S1+S2 bands plus a learned 2-D position embedding.
  Granite-H's attention layers use no position encoding (NoPE) and its Mamba layers only know order,
  so the patch grid's positions must come from the stem.
- Attention is bidirectional: the attention layers get an all-visible mask, because image patches
  have no causal order. The Mamba-2 layers remain a left-to-right scan over the row-major patch
  sequence; a scan has a direction by construction.
- The LLM is `transformers.GraniteMoeHybridModel` built from `GraniteMoeHybridConfig`, so a local
  Hugging Face directory of the real model loads with `from_pretrained`; its token embedding is never
  used and is not counted "as backbone".
- Memory techniques (#4) must know: the experts' weights are 3-D `nn.Parameter`s
  (`block_sparse_moe.experts.gate_up_proj` [64, 1024, 1536], `down_proj` [64, 1536, 512]), not
  `nn.Linear`, so bitsandbytes' Linear replacements and peft's Linear LoRA do not reach them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from torch import nn
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM, GraniteMoeHybridModel

from em_backbones.activations import Architecture, Layer
from em_backbones.args import BackboneArgs
from em_backbones.bands import stacked_band_names
from em_backbones.catalog import get_spec
from em_backbones.contract import ContractDefaults, count_parameters
from em_backbones.families.feature_maps import drop_token_embedding, evenly_spaced_layers
from em_backbones.registry import register_backbone
from em_backbones.techniques.loading import hf_config


def granite_config(scale: str) -> GraniteMoeHybridConfig:
    shape = {k: v for k, v in get_spec("granite_4_tiny").scales[scale].items() if k != "stem_width"}
    return GraniteMoeHybridConfig(**shape, position_embedding_type="nope", tie_word_embeddings=True)


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
              norm=h + moe_norm, constant_bytes=tokens * tokens, lora_targets=6,  # + the boolean mask
              upcast=3 * h + heads + 2),
        # Mamba-2 reference scan: in_proj out, conv in/out, dt, the gated norm and out_proj input per
        # token; d_inner-wide chunk tensors (4), B/C per head (5) and chunk x chunk decays (3) per padded token.
        Layer(mamba, tokens, h, always=2 * h + in_proj + (d_inner + 2 * groups * d_state) + 3 * d_inner
              + 4 * mamba_heads + moe_always, linear=h + d_inner + moe_linear, norm=h + moe_norm,
              padded_tokens=padded, padded=4 * d_inner + 5 * mamba_heads * d_state + 3 * mamba_heads * chunk,
              constant_bytes=2 * chunk * chunk, lora_targets=4,
              upcast=in_proj + (d_inner + 2 * groups * d_state) + 3 * d_inner + 4 * mamba_heads,
              padded_upcast=4 * d_inner + 5 * mamba_heads * d_state + 3 * mamba_heads * chunk),
    ]


class GraniteVisualEncoder(ContractDefaults, nn.Module):
    """TerraTorch backbone: S1+S2 patches → Granite-H blocks → per-layer maps on the patch grid."""

    def __init__(self, args: BackboneArgs) -> None:
        super().__init__()
        scale, self.modalities = args.scale, args.modalities
        self.patch_size = get_spec(args.name).patch_size
        if args.ckpt_path:  # filled shard by shard by em_backbones.techniques.loading
            with init_empty_weights():  # parameters on meta; buffers real: no checkpoint has them
                self.llm = GraniteMoeHybridModel(hf_config(args.ckpt_path))
        else:
            self.llm = GraniteMoeHybridModel(granite_config(scale))
        drop_token_embedding(self.llm)
        width = self.llm.config.hidden_size
        stem = get_spec(args.name).scales[scale]["stem_width"]
        grid = args.img_size // self.patch_size
        self.patch_embed = nn.Conv2d(len(stacked_band_names(self.modalities)), stem, self.patch_size, self.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, stem))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.lift = nn.Linear(stem, width)
        depth = self.llm.config.num_hidden_layers
        # hidden_states[0] is the lifted input; Granite layer k's output is hidden_states[k + 1].
        self.out_indices = args.out_indices or [k + 1 for k in evenly_spaced_layers(depth)]
        self.out_proj = nn.ModuleList(nn.Linear(width, stem) for _ in self.out_indices)
        self.out_channels = [stem] * len(self.out_indices)

    lora_target_names = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj", "input_linear",
                         "output_linear")
    hf_attribute = "llm"  # the Hugging Face model a local checkpoint fills (em_backbones/techniques/loading.py)

    def quantizable_blocks(self) -> list[nn.Module]:
        return [self.llm.layers]

    def checkpointed_modules(self) -> list[nn.Module]:
        return [self.llm]

    def expert_modules(self) -> list[tuple[nn.Module, str]]:
        """3-D expert weights: quantized per expert by QuantizedExperts, never LoRA'd (frozen under LoRA)."""
        return [(layer.block_sparse_moe, "experts") for layer in self.llm.layers if layer.block_sparse_moe is not None]

    def new_parameters(self) -> list[nn.Parameter]:
        """The stem, lift and output maps have no pretrained weights: they always train."""
        return [*self.patch_embed.parameters(), self.pos_embed, *self.lift.parameters(), *self.out_proj.parameters()]

    def memory_architecture(self, img_size: int, modalities: tuple[str, ...]) -> Architecture:
        config = self.llm.config
        tokens = (img_size // self.patch_size) ** 2
        # Stem convolution input (raw bands), lift input (stem width), final norm input and output.
        bands = len(stacked_band_names(list(modalities)))
        return Architecture(granite_layers(config, tokens), outside_always=bands * img_size * img_size
                            + tokens * self.patch_embed.out_channels + 2 * tokens * config.hidden_size)

    @classmethod
    def published_parameters(cls, name: str) -> int:
        """The released causal LM (token embedding tied to the LM head), counted on the meta device."""
        with torch.device("meta"):
            return count_parameters(GraniteMoeHybridForCausalLM(granite_config("full")))

    def _position_embedding(self, length: int) -> torch.Tensor:
        """The learned grid, resized bicubically when inputs are larger (TerraTorch pads to 2 patches)."""
        if length == self.pos_embed.shape[1]:
            return self.pos_embed
        built, side = math.isqrt(self.pos_embed.shape[1]), math.isqrt(length)
        grid = self.pos_embed.reshape(1, built, built, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, length, -1)

    def forward(self, x: dict[str, torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        pixels = x if isinstance(x, torch.Tensor) else torch.cat([x[m] for m in self.modalities], dim=1)
        patches = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [B, L, stem]
        tokens = self.lift(patches + self._position_embedding(patches.shape[1]))
        batch, length, _ = tokens.shape
        everyone_sees_everyone = torch.ones(batch, 1, length, length, dtype=torch.bool, device=tokens.device)
        hidden = self.llm(
            inputs_embeds=tokens,
            attention_mask={"full_attention": everyone_sees_everyone, "linear_attention": None},
            use_cache=False,
            output_hidden_states=True,
        ).hidden_states
        side = math.isqrt(length)
        return [proj(hidden[i]).transpose(1, 2).reshape(batch, -1, side, side)
                for proj, i in zip(self.out_proj, self.out_indices)]


granite_4_tiny = register_backbone("granite_4_tiny", GraniteVisualEncoder)
