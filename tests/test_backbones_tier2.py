"""Tier-2 backbones: registered in TerraTorch, S1+S2 in, feature maps out, full scale as published."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from terratorch.models import EncoderDecoderFactory
from terratorch.registry import BACKBONE_REGISTRY

import em_backbones.registered  # noqa: F401

TIER2 = ["em_prithvi", "em_terramind", "em_clay"]
# (published figure, source) — encoder parameters of the published architecture.
PUBLISHED = {
    "em_prithvi": 300e6,   # Prithvi-EO-2.0-300M
    "em_terramind": 86e6,  # TerraMind-1.0-base encoder (ViT-B)
    "em_clay": 86e6,       # Clay v1 base encoder (ViT-B)
}


def s1s2_batch(batch: int = 2, size: int = 112) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"S1RTC": torch.randn(batch, 2, size, size), "S2L2A": torch.randn(batch, 12, size, size)}


@pytest.mark.parametrize("name", TIER2)
def test_tiny_forward_backward_gives_decoder_ready_maps(name):
    model = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112)
    features = model(s1s2_batch())
    patch = 8 if name == "em_clay" else 16
    assert len(features) == len(model.out_channels) >= 2
    for fmap, width in zip(features, model.out_channels):
        assert fmap.shape == (2, width, 112 // patch, 112 // patch)
        assert torch.isfinite(fmap).all()
    sum(f.square().mean() for f in features).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)


@pytest.mark.parametrize("name", TIER2)
def test_full_scale_parameter_count_matches_published(name):
    with init_empty_weights():
        model = BACKBONE_REGISTRY.build(name, scale="full", img_size=224)
    count = sum(p.numel() for p in model.parameters())
    assert next(model.parameters()).device.type == "meta"
    # S1+S2 patch embeddings and Clay's wavelength generator add a few percent over the published encoders.
    assert count == pytest.approx(PUBLISHED[name], rel=0.08)


@pytest.mark.parametrize("name", TIER2)
def test_segmentation_model_from_terratorch_factory(name):
    model = EncoderDecoderFactory().build_model(
        task="segmentation", backbone=name, backbone_scale="tiny", backbone_img_size=112,
        decoder="UperNetDecoder", decoder_channels=32, num_classes=10,
    )
    out = model(s1s2_batch()).output
    assert out.shape == (2, 10, 112, 112)


@pytest.mark.parametrize("name, inner", [("em_prithvi", "vit"), ("em_terramind", "vit"), ("em_clay", "encoder")])
def test_local_checkpoint_loads_identical_weights(name, inner, tmp_path):
    torch.manual_seed(0)
    source = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(getattr(source, inner).state_dict(), path)
    torch.manual_seed(123)  # a different random init, which the checkpoint must overwrite
    loaded = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112, ckpt_path=str(path)).eval()
    x = s1s2_batch()
    with torch.no_grad():
        for a, b in zip(source(x), loaded(x)):
            assert torch.equal(a, b)


def test_unsupported_technique_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"quantization_bits: expected one of \[4, 8, 16\], got 3"):
        BACKBONE_REGISTRY.build("em_prithvi", scale="tiny", img_size=112, quantization_bits=3)
    with pytest.raises(ValueError, match=r"lora_rank: expected an integer >= 0 \(0 = off\), got -1"):
        BACKBONE_REGISTRY.build("em_prithvi", scale="tiny", img_size=112, lora_rank=-1)


def test_a_misspelt_backbone_argument_in_a_terratorch_config_is_an_error_naming_the_closest():
    """TerraTorch's factory refuses leftover arguments; ours must not silently train without LoRA either."""
    from terratorch.models import EncoderDecoderFactory

    with pytest.raises(ValueError, match=r"^em_clay: unknown backbone argument 'backbone_lora_rnak' "
                                         r"\(did you mean 'backbone_lora_rank'\?\)$"):
        EncoderDecoderFactory().build_model(task="segmentation", backbone="em_clay", backbone_lora_rnak=4,
                                            backbone_img_size=112, decoder="UperNetDecoder", num_classes=2)
    with pytest.raises(ValueError, match="unknown backbone argument 'backbone_frobnicate'$"):
        BACKBONE_REGISTRY.build("em_prithvi", scale="tiny", img_size=112, frobnicate=True)
