"""Name → tier, family, and the hyperparameters of each scale: every backbone's shapes live here.

One entry per backbone the search can pick (and the tier-0 reference CNN). `full` is the
published architecture; `tiny` keeps the same module types with few layers and a small width so a
trial trains on a laptop CPU in seconds. The builders in the family modules read their shapes
from this table only, so a new scale is a new entry here, never a new code path. Plain values
only (no torch, no transformers): the planning side reads it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

SCALES = ("tiny", "full")
SEARCHED_TIERS = (0, 1, 2, 3)  # tier 0: the reference CNN, searched on equal footing where a space names it


@dataclass(frozen=True)
class BackboneSpec:
    """What the search needs to know about a backbone before building it."""

    name: str
    tier: int
    family: str  # the module that builds it: em_backbones/families/<family>.py (imported when first built)
    description: str
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    published_params: float | None = None  # as published, whole model, for tests and reports
    patch_size: int = 16  # token stride in pixels: inputs must be a multiple of it
    native_img_size: int = 224  # the published input size, the default when none is given
    required_sensors: tuple[str, ...] = ()  # modality prefixes the backbone cannot work without ("S1", "S2")
    decoder: str | None = None  # a decoder the backbone needs whatever the space names (the U-Net has its own)
    extra_args: dict[str, Any] = field(default_factory=dict)  # family-specific backbone_* arguments and defaults


def did_you_mean(word: str, options, prefix: str = "") -> str:
    """` (did you mean 'x'?)` for the closest option, or nothing: the tail of every unknown-name error."""
    close = difflib.get_close_matches(str(word), sorted(options), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def terratorch_vit(name: str, description: str, tiny: str, full: str, published: float) -> BackboneSpec:
    """A ViT of TerraTorch's own registry at both scales, by its registry names."""
    return BackboneSpec(name=name, tier=2, family="terratorch_native", description=description,
                        published_params=published,
                        scales={"tiny": {"terratorch_name": tiny}, "full": {"terratorch_name": full}})


# InternViT towers, as transformers' InternVLVisionConfig arguments.
INTERNVIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      attention_bias=True, use_qk_norm=False, norm_type="layer_norm")
INTERNVIT_6B = dict(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
                    attention_bias=False, use_qk_norm=True, norm_type="rms_norm")
TINY_HEAD = 16  # tiny scales keep the published ratios with 16-wide heads: FFN/hidden, KV/hidden, depth ratios


def tiny_of(full: dict, layers: int, vocab: int | None = None) -> dict:
    """A reduced copy of a full config: 16-wide heads, the same head count ratio to KV heads, the same FFN/hidden
    ratio, `layers` layers; everything else (norms, bias, QK-norm) as published."""
    heads = full["num_attention_heads"]
    width = full["hidden_size"] // heads  # the published head width
    scale = TINY_HEAD / width
    tiny = dict(full, hidden_size=heads * TINY_HEAD, num_hidden_layers=layers,
                intermediate_size=round(full["intermediate_size"] * scale))
    if "num_key_value_heads" in full:  # grouped-query attention: one KV head for heads / (heads / kv)
        tiny.update(num_attention_heads=heads // full["num_key_value_heads"], num_key_value_heads=1,
                    hidden_size=heads // full["num_key_value_heads"] * TINY_HEAD,
                    intermediate_size=round(full["intermediate_size"] * heads // full["num_key_value_heads"]
                                            * TINY_HEAD / full["hidden_size"]))
    if vocab is not None:
        tiny["vocab_size"] = vocab
    return tiny


def internvl(name: str, tier: int, text_model: str, full_text: dict, description: str, published: float,
             tiny_layers: tuple[int, int], vision: dict = INTERNVIT_300M, family: str = "internvl",
             **extra) -> BackboneSpec:
    """An InternVL backbone: `vision` tower arguments, the LLM as `text_model` ("qwen2" or "llama") arguments.
    Tiny keeps the full model's norm, QK-norm, bias and text-model class, and its width ratios
    (`tiny_of`); `tiny_layers`: (vision, LLM) depths, in the ratio of the published ones where it matters."""
    scales = {"full": {"vision": vision, "text_model": text_model, "text": full_text},
              "tiny": {"vision": tiny_of(vision, tiny_layers[0]), "text_model": text_model,
                       "text": tiny_of(full_text, tiny_layers[1], vocab=256)}}
    return BackboneSpec(name=name, tier=tier, family=family, description=description, scales=scales,
                        published_params=published, patch_size=28, native_img_size=448, **extra)


def granite_layer_types(depth: int, attention_layers: set[int]) -> list[str]:
    return ["attention" if i in attention_layers else "mamba" for i in range(depth)]


QWEN25_3B = dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                 intermediate_size=11008, vocab_size=151674)

CATALOG: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        terratorch_vit("em_prithvi", "Prithvi-EO-2.0 ViT over Sentinel-1 + Sentinel-2 bands stacked as channels",
                       "prithvi_eo_tiny", "prithvi_eo_v2_300", 300e6),
        terratorch_vit("em_terramind", "TerraMind-1.0 ViT with one token stream per modality (S1 and S2), "
                       "mean-merged", "terramind_v1_tiny", "terramind_v1_base", 86e6),
        BackboneSpec(
            name="em_clay",
            tier=2,
            family="terratorch_native",
            description="Clay v1 encoder; wavelength-conditioned patch embedding takes S1 and S2 bands",
            scales={
                "tiny": {"dim": 64, "depth": 2, "heads": 2, "dim_head": 32, "mlp_ratio": 2.0},
                "full": {"dim": 768, "depth": 12, "heads": 12, "dim_head": 64, "mlp_ratio": 4.0},
            },
            published_params=86e6,
            patch_size=8,
        ),
        # Tier 0: not searched; the small CNN every searched backbone must beat (em_backbones/families/cnn.py).
        BackboneSpec(
            name="em_cnn",
            tier=0,
            family="cnn",
            description="U-Net (TerraTorch's UNet backbone) trained from scratch on the stacked S1/S2 bands",
            scales={"tiny": {"width": 8, "stages": 4}, "full": {"width": 64, "stages": 4}},
            patch_size=8,
            decoder="IdentityDecoder",
        ),
        internvl("internvl2_4b", 1, "qwen2", QWEN25_3B, published=3.71e9, tiny_layers=(2, 2),
                 description="InternVL2.5-4B: InternViT-300M + pixel shuffle + MLP projector + Qwen2.5-3B"),
        internvl("internvl2_26b", 3, "llama", dict(hidden_size=6144, num_hidden_layers=48, num_attention_heads=48,
                                                   num_key_value_heads=8, intermediate_size=16384, vocab_size=92553),
                 vision=INTERNVIT_6B, published=25.5e9, tiny_layers=(3, 4),  # LLM depth 48 : 60 = 4 : 5
                 description="InternVL2-26B: InternViT-6B + projector + InternLM2-20B (Llama-shaped)"),
        internvl("internvl2_40b", 3, "llama", dict(hidden_size=7168, num_hidden_layers=60, num_attention_heads=56,
                                                   num_key_value_heads=8, intermediate_size=20480, vocab_size=64000),
                 vision=INTERNVIT_6B, published=40.1e9, tiny_layers=(3, 5),
                 description="InternVL2-40B: InternViT-6B + projector + Nous-Hermes-2-Yi-34B (Llama)"),
        internvl("earthmind_v1", 1, "qwen2", QWEN25_3B, published=3.71e9, tiny_layers=(2, 2), family="earthmind",
                 required_sensors=("S1", "S2"),
                 extra_args={"alignment_weight": 1.0},
                 description="EarthMind-v1 (InternVL2.5-4B based): SAR and optical through one shared InternViT, "
                             "token reweighting, concatenation before the LLM; SAM2 left out"),
        # ibm-granite/granite-4.0-h-tiny: 40 layers, 4 of them attention; 64 experts, top-6; NoPE.
        BackboneSpec(
            name="granite_4_tiny", tier=1, family="granite", published_params=6.9e9, patch_size=16,
            description="Granite 4.0 Tiny (hybrid Mamba-2/attention MoE LLM) as visual encoder layers",
            scales={
                "full": dict(vocab_size=100352, hidden_size=1536, intermediate_size=512, shared_intermediate_size=1024,
                             num_hidden_layers=40, num_attention_heads=12, num_key_value_heads=4, num_local_experts=64,
                             num_experts_per_tok=6, mamba_n_heads=48, mamba_d_head=64, mamba_d_state=128,
                             mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2, stem_width=768,
                             layer_types=granite_layer_types(40, {5, 15, 25, 35})),
                # Published ratios with 16-wide heads: KV/hidden 1/3, expert FFN 1/3, shared FFN 2/3, Mamba 2x.
                "tiny": dict(vocab_size=256, hidden_size=96, intermediate_size=32, shared_intermediate_size=64,
                             num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2, num_local_experts=8,
                             num_experts_per_tok=2, mamba_n_heads=6, mamba_d_head=32, mamba_d_state=16,
                             mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2, stem_width=48,
                             layer_types=granite_layer_types(4, {1})),
            },
        ),
    )
}


def backbones_in_tier(tier: int) -> list[str]:
    return [name for name, spec in CATALOG.items() if spec.tier == tier]


def get_spec(name: str) -> BackboneSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(CATALOG))}") from None
