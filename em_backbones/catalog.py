"""Name → tier, family, and the hyperparameters of each scale.

One entry per backbone the search can pick. `full` is the published architecture; `tiny`
keeps the same module types with few layers and a small width so a trial trains on a laptop
CPU in seconds. The builders in the family modules read only this table, so a new scale is a
new entry here, never a new code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCALES = ("tiny", "full")
SEARCHED_TIERS = (1, 2, 3)  # tier 0 is the reference CNN, trained beside the search, never searched


@dataclass(frozen=True)
class BackboneSpec:
    """What the search needs to know about a backbone before building it."""

    name: str
    tier: int
    family: str
    description: str
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    published_params: float | None = None  # as published, whole model, for tests and reports
    patch_size: int = 16  # token stride in pixels: inputs must be a multiple of it
    native_img_size: int = 224  # the published input size, the default when none is given
    required_sensors: tuple[str, ...] = ()  # modality prefixes the backbone cannot work without ("S1", "S2")
    decoder: str | None = None  # a decoder the backbone needs whatever the space names (the U-Net has its own)
    estimated: bool = True  # em_backbones/estimate.py models its memory


CATALOG: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="em_prithvi",
            tier=2,
            family="terratorch_native",
            description="Prithvi-EO-2.0 ViT over Sentinel-1 + Sentinel-2 bands stacked as channels",
            scales={
                "tiny": {"terratorch_name": "prithvi_eo_tiny"},
                "full": {"terratorch_name": "prithvi_eo_v2_300"},
            },
            published_params=300e6,
        ),
        BackboneSpec(
            name="em_terramind",
            tier=2,
            family="terratorch_native",
            description="TerraMind-1.0 ViT with one token stream per modality (S1 and S2), mean-merged",
            scales={
                "tiny": {"terratorch_name": "terramind_v1_tiny"},
                "full": {"terratorch_name": "terramind_v1_base"},
            },
            published_params=86e6,
        ),
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
        # Tier 0: not searched; the small CNN every searched backbone must beat (em_backbones/cnn.py).
        BackboneSpec(
            name="em_cnn",
            tier=0,
            family="cnn",
            description="U-Net (TerraTorch's UNet backbone) trained from scratch on the stacked S1/S2 bands",
            scales={"tiny": {"width": 8, "stages": 4}, "full": {"width": 64, "stages": 4}},
            patch_size=8,
            decoder="IdentityDecoder",
            estimated=False,
        ),
        # InternVL: scales live in em_backbones/internvl.py as transformers configurations.
        BackboneSpec(name="internvl2_4b", tier=1, family="internvl", published_params=3.71e9, patch_size=28, native_img_size=448,
                     description="InternVL2.5-4B: InternViT-300M + pixel shuffle + MLP projector + Qwen2.5-3B"),
        BackboneSpec(name="internvl2_26b", tier=3, family="internvl", published_params=25.5e9, patch_size=28, native_img_size=448,
                     description="InternVL2-26B: InternViT-6B + projector + InternLM2-20B (Llama-shaped)"),
        BackboneSpec(name="internvl2_40b", tier=3, family="internvl", published_params=40.1e9, patch_size=28, native_img_size=448,
                     description="InternVL2-40B: InternViT-6B + projector + Nous-Hermes-2-Yi-34B (Llama)"),
        BackboneSpec(name="earthmind_v1", tier=1, required_sensors=("S1", "S2"), family="internvl", published_params=3.71e9, patch_size=28, native_img_size=448,
                     description="EarthMind-v1 (InternVL2.5-4B based): SAR and optical through one shared "
                                 "InternViT, token reweighting, concatenation before the LLM; SAM2 left out"),
        # Granite: scales in em_backbones/granite.py as a GraniteMoeHybridConfig.
        BackboneSpec(name="granite_4_tiny", tier=1, family="granite", published_params=6.9e9, patch_size=16,
                     description="Granite 4.0 Tiny (hybrid Mamba-2/attention MoE LLM) as visual encoder layers"),
    )
}


def backbones_in_tier(tier: int) -> list[str]:
    return [name for name, spec in CATALOG.items() if spec.tier == tier]


def get_spec(name: str) -> BackboneSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(CATALOG))}") from None
