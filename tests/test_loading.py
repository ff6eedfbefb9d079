"""Local weights: a sharded Hugging Face checkpoint loads straight into 4-bit layers, as if loaded then quantized.

The reference is independent of the loader: transformers' own `from_pretrained` (full precision), then
the same quantization applied afterwards. Same outputs, bit for bit, and less memory on the way.
"""

from __future__ import annotations

import json

import pytest
import torch
from terratorch.registry import BACKBONE_REGISTRY
from transformers import GraniteMoeHybridModel, InternVLModel

import em_backbones.registered  # noqa: F401
from em_backbones.techniques.apply import apply_techniques
from em_backbones.techniques.config import Techniques
from em_backbones.techniques.loading import CheckpointError, ShardLoader, predicted_load_bytes
from em_backbones.techniques.quantization import QUANTIZED_LAYERS, QuantizedExperts

CASES = [("internvl2_4b", InternVLModel), ("earthmind_v1", InternVLModel), ("granite_4_tiny", GraniteMoeHybridModel)]


def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {"S1RTC": torch.randn(2, 2, 112, 112), "S2L2A": torch.randn(2, 12, 112, 112)}


@pytest.fixture(scope="module", params=CASES, ids=[name for name, _ in CASES])
def checkpoint(request, tmp_path_factory):
    """A tiny backbone with random weights, its Hugging Face part saved in several shards."""
    name, hf_class = request.param
    torch.manual_seed(0)
    source = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112)
    directory = tmp_path_factory.mktemp(name) / "hf"
    getattr(source, source.hf_attribute).save_pretrained(directory, max_shard_size="200KB")
    return name, hf_class, source, directory


@pytest.mark.parametrize("bits", [4, 8])
def test_sharded_checkpoint_loads_into_quantized_layers_like_load_then_quantize(checkpoint, bits):
    name, hf_class, source, directory = checkpoint
    assert len(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]) > 10
    techniques = Techniques(quantization_bits=bits)
    loaded = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112, ckpt_path=str(directory),
                                     quantization_bits=bits).eval()
    # Reference: the same backbone, its Hugging Face part loaded by transformers, quantized afterwards.
    reference = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112)
    setattr(reference, reference.hf_attribute, hf_class.from_pretrained(directory, local_files_only=True))
    own = {k: v for k, v in source.state_dict().items() if not k.startswith(source.hf_attribute + ".")}
    reference.load_state_dict(own, strict=False)  # the backbone's own layers (adapters, stems): the source's
    loaded.load_state_dict(own, strict=False)
    if name != "granite_4_tiny":
        reference.vlm.language_model.embed_tokens = None  # as every InternVL backbone drops it
    reference = apply_techniques(reference, techniques).eval()
    assert sum(isinstance(m, QUANTIZED_LAYERS) for m in loaded.modules()) == \
        sum(isinstance(m, QUANTIZED_LAYERS) for m in reference.modules()) > 10
    if name == "granite_4_tiny":
        assert sum(isinstance(m, QuantizedExperts) for m in loaded.modules()) == 4
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    with torch.no_grad():
        for a, b in zip(loaded(batch()), reference(batch())):
            assert torch.equal(a, b)


def test_loading_needs_what_is_predicted_and_refuses_what_the_node_cannot_hold(checkpoint, monkeypatch):
    name, _, _, directory = checkpoint
    build = BACKBONE_REGISTRY.build  # the builder refuses before building when memory is short
    import psutil

    class Tiny:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    with pytest.raises(CheckpointError, match=rf"backbone_ckpt_path {directory}: loading needs 0\.0 GB of host "
                                              r"memory, this node has 0\.0 GB available"):
        build(name, scale="tiny", img_size=112, ckpt_path=str(directory), quantization_bits=4)


def test_a_checkpoint_missing_weights_is_refused(checkpoint, tmp_path):
    name, _, _, directory = checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in directory.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    dropped = sorted(index["weight_map"].values())[-1]
    (broken / dropped).unlink()
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != dropped}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"backbone_ckpt_path {broken}: lacks"):
        BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112, ckpt_path=str(broken), quantization_bits=4)


def test_predicted_load_memory_is_the_final_model_plus_the_largest_shard(checkpoint):
    name, _, _, directory = checkpoint
    shards = sorted(directory.glob("*.safetensors"))
    model = BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112)  # weights, for the final size: 4-bit
    loader = ShardLoader(model, Techniques(quantization_bits=4))
    predicted = predicted_load_bytes(loader.final_bytes(), directory)
    assert predicted == loader.final_bytes() + max(p.stat().st_size for p in shards)
    full_precision = sum(p.numel() * 4 for p in model.parameters())
    assert loader.final_bytes() < full_precision


def test_a_space_naming_weights_exports_a_best_yaml_that_loads_them_under_terratorch_fit(real_chips, tmp_path):
    import yaml

    from search.data.spec import DataSpec
    from search.data.tiles import prepare
    from search.outcome.export import write_trial_config
    from search.plan.space import SpaceError, parse_space
    from tests.conftest import TEST_CHIP, VAL_CHIP, small_space, terratorch_fit_fast_dev_run

    torch.manual_seed(0)
    source = BACKBONE_REGISTRY.build("internvl2_4b", scale="tiny", img_size=112)
    source.vlm.save_pretrained(tmp_path / "hf", max_shard_size="300KB")
    raw = small_space(real_chips, tiers={1: ["internvl2_4b"]}, **{"techniques.quantization_bits": [4],
                                                                  "techniques.lora_rank": [8]})
    with pytest.raises(SpaceError, match=r"field 'weights.internvl2_4b': expected an existing local path"):
        parse_space({**raw, "weights": {"internvl2_4b": str(tmp_path / "nowhere")}})
    with pytest.raises(SpaceError, match=r"field 'weights.em_clay': expected a backbone the space searches"):
        parse_space({**raw, "weights": {"em_clay": str(tmp_path / "hf")}})
    space = parse_space({**raw, "weights": {"internvl2_4b": str(tmp_path / "hf")}})
    prepared = prepare(DataSpec(str(real_chips), "terramesh", ("S1RTC", "S2L2A"), 10, 112, (VAL_CHIP,), (TEST_CHIP,)),
                       tmp_path / "data", 0, warn=lambda line: None)
    row = {"backbone": "internvl2_4b", "tier": 1, "quantization_bits": 4, "lora_rank": 8,
           "gradient_checkpointing": False, "learning_rate": 1e-3, "batch_size": 4, "val_miou": 0.1, "peak_gb": 0.01,
           "memory_method": "cpu", "objective": 10.0, "epochs_run": 2}
    write_trial_config(space, row, prepared, tmp_path / "best.yaml", "Best trial")
    header, config = (tmp_path / "best.yaml").read_text(), yaml.safe_load((tmp_path / "best.yaml").read_text())
    args = config["model"]["init_args"]["model_args"]
    assert args["backbone_pretrained"] is True and args["backbone_ckpt_path"] == str((tmp_path / "hf").resolve())
    assert f"Weights: {(tmp_path / 'hf').resolve()}." in header
    terratorch_fit_fast_dev_run(tmp_path / "best.yaml", tmp_path)


def test_experts_at_checkpoint_precision_are_let_go_layer_by_layer(checkpoint, monkeypatch):
    """Loading holds one layer's experts at checkpoint precision at a time (the prediction's allowance):
    once a layer is quantized, nothing the loader keeps may still reference its full-precision weights."""
    name, _, _, directory = checkpoint
    if name != "granite_4_tiny":
        pytest.skip("only Granite has 3-D expert weights")
    import em_backbones.registry as registration

    loaders = []

    class Recorded(ShardLoader):
        def load(self, ckpt_path):
            loaders.append(self)
            super().load(ckpt_path)

    monkeypatch.setattr(registration, "ShardLoader", Recorded)
    BACKBONE_REGISTRY.build(name, scale="tiny", img_size=112, ckpt_path=str(directory), quantization_bits=4)
    assert loaders and len(loaders[0].experts) == 4
    assert all(not list(template.parameters()) for template in loaders[0].experts.values())
