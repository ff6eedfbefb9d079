"""InternVL backbones (InternVL2.5-4B, InternVL2-26B, InternVL2-40B) from transformers' own classes.

Built as `InternVLModel(InternVLConfig(vision_config=InternVLVisionConfig, text_config=Qwen2/Llama))`
so a local Hugging Face directory of the real model loads with `from_pretrained`.

Spatial features from a VLM: the vision tower's patch tokens go through InternVL's pixel shuffle and
MLP projector into the LLM's width, then through the LLM's decoder layers with *only* those visual
tokens (no text). The hidden states of chosen layers are reshaped back to the token grid. Why: the
LLM layers were trained to read exactly these projected tokens, and frozen LLM blocks are known to
improve visual features (Pang et al., ICLR 2024); decoder heads need maps, so the grid is restored.

Sentinel-1 + Sentinel-2 reach the RGB-pretrained tower through a learned 1x1 band adapter
(all S1+S2 bands → 3 channels), initialised to pass S2 red/green/blue through, so pretrained weights
start from the input they know and the adapter learns how SAR and the other bands add to it.
"""

from __future__ import annotations

import math

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLModel,
    InternVLVisionConfig,
    LlamaConfig,
    Qwen2Config,
)

from em_backbones.activations import Architecture, internvit_layer, llama_layer
from em_backbones.args import BackboneArgs
from em_backbones.bands import stacked_band_names
from em_backbones.catalog import get_spec
from em_backbones.contract import ContractDefaults, count_parameters
from em_backbones.families.feature_maps import drop_token_embedding, evenly_spaced_layers
from em_backbones.registry import register_backbone
from em_backbones.techniques.loading import hf_config

TEXT_CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig}  # the catalog names the LLM's configuration class
PATCH_SIZE = 14
SHUFFLE = 2  # pixel shuffle 0.5 merges 2x2 patches into one token


def internvl_config(name: str, scale: str, img_size: int = 448) -> InternVLConfig:
    """The published (full) or reduced (tiny) configuration; the LM head stays untied, as published."""
    shape = get_spec(name).scales[scale]
    return InternVLConfig(
        vision_config=InternVLVisionConfig(**shape["vision"], patch_size=PATCH_SIZE, image_size=img_size),
        text_config=TEXT_CONFIGS[shape["text_model"]](**shape["text"], tie_word_embeddings=False),
        downsample_ratio=1 / SHUFFLE,
        tie_word_embeddings=False,
    )


def load_or_build_vlm(args: BackboneArgs, architecture: str) -> InternVLModel:
    """Random weights from the catalog's configuration; or, given a local Hugging Face directory, its own
    configuration built on the meta device, for em_backbones.techniques.loading to fill shard by shard."""
    if args.ckpt_path:
        with init_empty_weights():  # parameters on meta; buffers (rotary frequencies) real: no checkpoint has them
            return InternVLModel(hf_config(args.ckpt_path))
    return InternVLModel(internvl_config(architecture, args.scale, args.img_size))


# InternViT attention/MLP and Qwen2/Llama attention/MLP projections.
INTERNVL_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2",
                         "o_proj", "gate_proj", "up_proj", "down_proj")


def vlm_blocks(vlm: InternVLModel) -> list[nn.Module]:
    """The vision tower's and the LLM's transformer layers; projector and embeddings stay outside."""
    return [vlm.vision_tower.encoder.layer, vlm.language_model.layers]


class InternVLFamily(ContractDefaults):
    """The contract (em_backbones/contract.py) for any backbone built around `self.vlm`, an InternVLModel.

    `images`: how many images go through the shared vision tower per sample (EarthMind: SAR and
    optical); `fusion_terms`: activations per LLM token of layers between projector and LLM.
    """

    lora_target_names = INTERNVL_LORA_TARGETS
    hf_attribute = "vlm"  # the Hugging Face model a local checkpoint fills (em_backbones/techniques/loading.py)
    images = 1
    fusion_terms = 0.0

    def quantizable_blocks(self) -> list[nn.Module]:
        return vlm_blocks(self.vlm)

    def checkpointed_modules(self) -> list[nn.Module]:
        return [self.vlm]

    def memory_architecture(self, img_size: int, modalities: tuple[str, ...]) -> Architecture:
        """InternViT layers over every image's patches, then the LLM over the pixel-shuffled tokens."""
        vision, text = self.vlm.config.vision_config, self.vlm.config.text_config
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        patches = self.images * (img_size // patch) ** 2
        llm_tokens = patches // (SHUFFLE * SHUFFLE)
        hv, ht = vision.hidden_size, text.hidden_size
        kv = text.num_key_value_heads * ht // text.num_attention_heads
        vit = internvit_layer(vision.num_hidden_layers, patches + self.images, hv, vision.intermediate_size,
                              vision.num_attention_heads, vision.norm_type == "rms_norm")
        llm = llama_layer(text.num_hidden_layers, llm_tokens, ht, text.intermediate_size, kv, text.num_attention_heads)
        bands, pixels = len(stacked_band_names(list(modalities))), img_size * img_size
        # Band adapters' raw-band inputs and 3-channel outputs (the patch convolution keeps its input even
        # when frozen); projector LayerNorm input and Linear-1 output (GELU input); the LLM's final norm input.
        always = bands * pixels + self.images * 3 * pixels + patches * hv + 2 * llm_tokens * ht
        always += self.fusion_terms * llm_tokens * ht
        trained = patches * hv + 2 * llm_tokens * ht  # projector Linear inputs, final norm's normalised input
        return Architecture([vit, llm], outside_always=always, outside_trained=trained)

    @classmethod
    def published_parameters(cls, name: str) -> int:
        """The released causal VLM (with its token embedding and LM head), counted on the meta device."""
        with torch.device("meta"):
            return count_parameters(InternVLForConditionalGeneration(internvl_config(name, "full")))


# What each of the tower's three input channels starts as: Sentinel-2's red, green, blue where there are optical
# bands; else the dual-polarisation SAR composite (VV, VH, VV/VH — a difference of normalised dB values).
RGB_START = {"B04": ((0, 1.0),), "B03": ((1, 1.0),), "B02": ((2, 1.0),)}
SAR_START = {"VV": ((0, 1.0), (2, 1.0)), "VH": ((1, 1.0), (2, -1.0))}


class BandAdapter(nn.Module):
    """Learned 1x1 convolution from all S1+S2 bands to the three channels the tower was trained on.

    It starts as a pass-through of the bands that are closest to what the tower knows (optical red,
    green, blue; or the usual SAR false-colour composite when there are no optical bands), so at
    initialisation every input stream reaches the tower, and the adapter learns how the rest adds to it.
    """

    def __init__(self, band_names: list[str]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(len(band_names), 3, kernel_size=1)
        start = RGB_START if any(band in band_names for band in RGB_START) else SAR_START
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.zero_()
            for band, targets in start.items():
                for out_channel, weight in targets if band in band_names else ():
                    self.proj.weight[out_channel, band_names.index(band)] = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class InternVLBackbone(InternVLFamily, nn.Module):
    """TerraTorch backbone: S1+S2 dict in, LLM hidden states over the visual tokens as maps out."""

    def __init__(self, args: BackboneArgs) -> None:
        super().__init__()
        self.modalities = args.modalities
        self.vlm = load_or_build_vlm(args, args.name)
        drop_token_embedding(self.vlm.language_model)
        depth = self.vlm.config.text_config.num_hidden_layers
        # hidden_states[0] is the projector output; LLM layer k's output is hidden_states[k + 1].
        self.out_indices = args.out_indices or [k + 1 for k in evenly_spaced_layers(depth)]
        width = self.vlm.config.text_config.hidden_size
        self.out_channels = [width] * len(self.out_indices)
        self.patch_size = get_spec(args.name).patch_size  # 14 px patches, 2x2 merged by the shuffle: 28 px per token
        self.adapter = BandAdapter(stacked_band_names(self.modalities))

    def new_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    def forward(self, x: dict[str, torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        pixels = x if isinstance(x, torch.Tensor) else torch.cat([x[m] for m in self.modalities], dim=1)
        tokens = self.vlm.get_image_features(
            pixel_values=self.adapter(pixels), vision_feature_layer=-1, vision_feature_select_strategy="default",
        ).pooler_output
        hidden = self.vlm.language_model(inputs_embeds=tokens, output_hidden_states=True).hidden_states
        side = math.isqrt(tokens.shape[1])
        return [hidden[i].transpose(1, 2).reshape(tokens.shape[0], -1, side, side) for i in self.out_indices]


internvl2_4b = register_backbone("internvl2_4b", InternVLBackbone)
internvl2_26b = register_backbone("internvl2_26b", InternVLBackbone)
internvl2_40b = register_backbone("internvl2_40b", InternVLBackbone)
