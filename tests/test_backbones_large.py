"""Tier-1 and tier-3 backbones: published sizes on meta, tiny builds that train, local HF weights."""

from __future__ import annotations

import pytest
import torch
from terratorch.models import EncoderDecoderFactory
from terratorch.registry import BACKBONE_REGISTRY

import em_backbones.registered  # noqa: F401
from em_backbones.catalog import get_spec
from em_backbones.families.granite import granite_config
from em_backbones.families.internvl import internvl_config
from em_backbones.sizing.counting import backbone_params, published_params

LARGE = ["internvl2_4b", "internvl2_26b", "internvl2_40b", "earthmind_v1", "granite_4_tiny"]
# "as backbone" at full scale: no text embedding, no LM head (measured here, recorded for reviewers).
AS_BACKBONE = {"internvl2_4b": 3.0914e9, "internvl2_26b": 24.377e9, "internvl2_40b": 39.151e9,
               "earthmind_v1": 3.0956e9, "granite_4_tiny": 6.7937e9}


def s1s2_batch(size: int = 112) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"S1RTC": torch.randn(2, 2, size, size), "S2L2A": torch.randn(2, 12, size, size)}


@pytest.mark.parametrize("name", LARGE)
def test_full_scale_parameter_counts(name):
    as_published = published_params(name)
    assert as_published == pytest.approx(get_spec(name).published_params, rel=0.02)
    as_backbone = backbone_params(name)
    assert as_backbone == pytest.approx(AS_BACKBONE[name], rel=1e-3)
    assert as_backbone < as_published


@pytest.mark.parametrize("name", LARGE)
def test_tiny_forward_backward_gives_decoder_ready_maps(name):
    model = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112)
    features = model(s1s2_batch())
    grid = 112 // model.patch_size
    assert len(features) == len(model.out_channels) >= 2
    for fmap, width in zip(features, model.out_channels):
        assert fmap.shape == (2, width, grid, grid) and torch.isfinite(fmap).all()
    sum(f.square().mean() for f in features).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None for g in grads) > 0.9 * len(grads)


@pytest.mark.parametrize("name", ["internvl2_4b", "internvl2_26b", "earthmind_v1"])
def test_tiny_internvl_keeps_the_full_models_module_types(name):
    model = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112)
    full = internvl_config("internvl2_26b" if name == "internvl2_26b" else "internvl2_4b", "full")
    tiny = model.vlm.config
    assert (tiny.vision_config.norm_type, tiny.vision_config.use_qk_norm, tiny.vision_config.attention_bias) == (
        full.vision_config.norm_type, full.vision_config.use_qk_norm, full.vision_config.attention_bias)
    assert type(tiny.text_config) is type(full.text_config)


def test_tiny_granite_keeps_mamba_attention_and_3d_experts():
    model = BACKBONE_REGISTRY.build("granite_4_tiny", scale="tiny", img_size=112)
    assert set(model.llm.config.layers_block_type) == set(granite_config("full").layers_block_type)
    assert set(model.llm.config.layers_block_type) == {"full_attention", "linear_attention"}  # attention + Mamba-2
    experts = model.llm.layers[0].block_sparse_moe.experts
    assert experts.gate_up_proj.dim() == 3 and not isinstance(experts, torch.nn.Linear)


def test_granite_attention_is_bidirectional_over_patches():
    model = BACKBONE_REGISTRY.build("granite_4_tiny", scale="tiny", img_size=112, out_indices=[2]).eval()
    x = s1s2_batch()
    changed = {k: v.clone() for k, v in x.items()}
    changed["S2L2A"][:, :, -16:, -16:] += 5.0  # only the last patch
    with torch.no_grad():
        before, after = model(x)[0], model(changed)[0]
    # Layer 2 is attention: the first patch sees the last one, which a causal mask would hide.
    assert (before[:, :, 0, 0] - after[:, :, 0, 0]).abs().max() > 1e-6


def test_earthmind_keeps_two_streams_and_alignment_loss():
    model = BACKBONE_REGISTRY.build("earthmind_v1", scale="tiny", img_size=112)
    features = model(s1s2_batch())
    width = model.vlm.config.text_config.hidden_size
    assert features[0].shape[1] == 2 * width  # SAR half and optical half
    assert model.alignment_loss.item() > 0
    model.alignment_loss.backward()
    assert model.sar_adapter.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs one Sentinel-1 and one Sentinel-2"):
        BACKBONE_REGISTRY.build("earthmind_v1", scale="tiny", img_size=112, modalities=["S2L2A"])


def test_earthmind_sar_stream_reaches_the_output_at_initialisation():
    """The SAR adapter starts as the VV, VH, VV-VH composite, not zeros: SAR changes the output before training."""
    torch.manual_seed(0)
    model = BACKBONE_REGISTRY.build("earthmind_v1", scale="tiny", img_size=112).eval()
    weight = model.sar_adapter.proj.weight[:, :, 0, 0]
    assert weight.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]
    batch = s1s2_batch()
    quiet = {**batch, "S1RTC": torch.zeros_like(batch["S1RTC"])}
    with torch.no_grad():
        with_sar, without_sar = model(batch), model(quiet)
    sar_half = with_sar[-1].shape[1] // 2
    assert (with_sar[-1][:, :sar_half] - without_sar[-1][:, :sar_half]).abs().max() > 1e-3


def test_earthmind_alignment_loss_enters_the_training_loss_with_its_weight():
    """The gradient a task loss produces through the backbone is that loss's plus weight x the alignment loss's."""
    def gradients(weight: float, loss_of=lambda model, maps: maps[-1].square().mean()) -> torch.Tensor:
        torch.manual_seed(0)
        model = BACKBONE_REGISTRY.build("earthmind_v1", scale="tiny", img_size=112, alignment_weight=weight).train()
        loss_of(model, model(s1s2_batch())).backward()
        return model.sar_adapter.proj.weight.grad.clone()

    task_only, once, twice = gradients(0.0), gradients(1.0), gradients(2.0)
    alignment_only = gradients(0.0, loss_of=lambda model, maps: model.alignment_loss)
    assert torch.allclose(once - task_only, alignment_only, rtol=1e-4, atol=1e-7)
    assert torch.allclose(twice - task_only, 2 * alignment_only, rtol=1e-4, atol=1e-7)
    assert alignment_only.abs().sum() > 0


def test_the_alignment_weight_is_a_backbone_argument_best_yaml_carries():
    from search.plan.space import parse_space
    from search.plan.terratorch_config import model_init_args
    from tests.conftest import small_space

    space = parse_space(small_space(None, tiers={1: ["earthmind_v1"]}))
    params = {"backbone": "earthmind_v1", "quantization_bits": 16, "lora_rank": 0, "gradient_checkpointing": False,
              "learning_rate": 1e-3}
    args = model_init_args(space, params, 10, ["S1RTC", "S2L2A"], 112)["model_args"]
    assert args["backbone_alignment_weight"] == get_spec("earthmind_v1").extra_args["alignment_weight"] == 1.0
    with pytest.raises(ValueError, match="unknown backbone argument 'backbone_alignment_weight'"):
        BACKBONE_REGISTRY.build("internvl2_4b", scale="tiny", img_size=112, alignment_weight=1.0)


@pytest.mark.parametrize("name, hf_attr", [("internvl2_4b", "vlm"), ("earthmind_v1", "vlm"), ("granite_4_tiny", "llm")])
def test_local_hugging_face_directory_loads_identical_weights(name, hf_attr, tmp_path):
    torch.manual_seed(0)
    source = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112).eval()
    getattr(source, hf_attr).save_pretrained(tmp_path / "hf")
    torch.manual_seed(1)
    loaded = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112, ckpt_path=str(tmp_path / "hf")).eval()
    # The HF model's weights come from the directory; the S1+S2 adapters are ours, copied across.
    own = {k: v for k, v in source.state_dict().items() if not k.startswith(f"{hf_attr}.")}
    loaded.load_state_dict(own, strict=False)
    with torch.no_grad():
        for a, b in zip(source(s1s2_batch()), loaded(s1s2_batch())):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["internvl2_40b", "earthmind_v1", "granite_4_tiny"])
def test_segmentation_model_from_terratorch_factory(name):
    model = EncoderDecoderFactory().build_model(
        task="segmentation", backbone=name, backbone_scale="tiny", backbone_img_size=112,
        decoder="UperNetDecoder", decoder_channels=32, num_classes=10,
    )
    assert model(s1s2_batch()).output.shape == (2, 10, 112, 112)


def test_tiny_shapes_keep_the_published_width_ratios_and_tell_26b_from_40b():
    """At tiny scale the estimator is validated where its terms can be told apart: FFN/hidden and KV/hidden as
    published (a term charged to the wrong one of them would show), and 26B / 40B differing as their full models."""
    def ratios(config: dict) -> tuple[float, float]:
        kv = config["num_key_value_heads"] * config["hidden_size"] / config["num_attention_heads"]
        return config["intermediate_size"] / config["hidden_size"], kv / config["hidden_size"]

    for name in ("internvl2_4b", "internvl2_26b", "internvl2_40b"):
        scales = get_spec(name).scales
        assert ratios(scales["tiny"]["text"]) == pytest.approx(ratios(scales["full"]["text"]), rel=0.01)
        vision = {scale: scales[scale]["vision"] for scale in scales}
        assert vision["tiny"]["intermediate_size"] / vision["tiny"]["hidden_size"] == 4.0
    text = {name: {s: get_spec(name).scales[s]["text"] for s in ("tiny", "full")}
            for name in ("internvl2_26b", "internvl2_40b")}
    for key in ("hidden_size", "num_hidden_layers"):
        full_ratio = text["internvl2_40b"]["full"][key] / text["internvl2_26b"]["full"][key]
        assert text["internvl2_40b"]["tiny"][key] / text["internvl2_26b"]["tiny"][key] == pytest.approx(full_ratio)
    from transformers import AutoModel

    def llm_params(name: str, scale: str) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModel.from_config(internvl_config(name, scale).text_config).layers
                       .parameters())

    # The language model: 40B's is 1.79 times 26B's, at both scales.
    ratio = {scale: llm_params("internvl2_40b", scale) / llm_params("internvl2_26b", scale) for scale in ("tiny", "full")}
    assert ratio["tiny"] == pytest.approx(ratio["full"], rel=0.01) and ratio["full"] > 1.7
    granite = {s: get_spec("granite_4_tiny").scales[s] for s in ("tiny", "full")}
    for key in ("intermediate_size", "shared_intermediate_size"):
        assert granite["tiny"][key] / granite["tiny"]["hidden_size"] == granite["full"][key] / granite["full"]["hidden_size"]
    for g in granite.values():
        assert g["num_key_value_heads"] / g["num_attention_heads"] == 1 / 3
        assert g["mamba_n_heads"] * g["mamba_d_head"] == 2 * g["hidden_size"]
