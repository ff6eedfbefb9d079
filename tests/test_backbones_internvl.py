"""InternVL backbones from transformers' classes: published sizes on meta, tiny training, local weights."""

from __future__ import annotations

import pytest
import torch
from terratorch.registry import BACKBONE_REGISTRY
from transformers import InternVLForConditionalGeneration

import em_backbones  # noqa: F401
from em_backbones.catalog import get_spec
from em_backbones.internvl import internvl_config

NAMES = ["internvl2_4b", "internvl2_26b", "internvl2_40b"]


def s1s2_batch(size: int = 112) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"S1RTC": torch.randn(2, 2, size, size), "S2L2A": torch.randn(2, 12, size, size)}


@pytest.mark.parametrize("name", NAMES)
def test_full_scale_matches_published_parameter_count(name):
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(internvl_config(name, "full"))
    as_published = sum(p.numel() for p in model.parameters())
    assert as_published == pytest.approx(get_spec(name).published_params, rel=0.02)
    dropped = model.lm_head.weight.numel() + model.model.language_model.embed_tokens.weight.numel()
    as_backbone = as_published - dropped  # the backbone never reads text: no token embedding, no LM head
    assert 0.8 * as_published < as_backbone < as_published  # 4B: 3.09 B of 3.71 B (151k-token vocabulary)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_keeps_module_types_and_trains(name):
    model = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112)
    full = internvl_config(name, "full").vision_config
    tiny = model.vlm.config.vision_config
    assert (tiny.norm_type, tiny.use_qk_norm, tiny.attention_bias) == (full.norm_type, full.use_qk_norm,
                                                                       full.attention_bias)
    features = model(s1s2_batch())
    assert [f.shape for f in features] == [(2, 64, 4, 4)] * len(model.out_channels)  # 112 px / 14 / 2
    sum(f.square().mean() for f in features).backward()
    assert model.adapter.proj.weight.grad.abs().sum() > 0


def test_local_hugging_face_directory_loads_identical_weights(tmp_path):
    torch.manual_seed(0)
    source = BACKBONE_REGISTRY.build("internvl2_4b", scale="tiny", img_size=112).eval()
    source.vlm.save_pretrained(tmp_path / "hf")
    loaded = BACKBONE_REGISTRY.build("internvl2_4b", ckpt_path=str(tmp_path / "hf"), img_size=112).eval()
    loaded.adapter.load_state_dict(source.adapter.state_dict())
    x = s1s2_batch()
    with torch.no_grad():
        for a, b in zip(source(x), loaded(x)):
            assert torch.equal(a, b)
