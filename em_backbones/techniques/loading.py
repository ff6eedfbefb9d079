"""Local pretrained weights, loaded shard by shard straight into the backbone's final form.

The Hugging Face part of a backbone (InternVL's `vlm`, Granite's `llm`) is built on the `meta` device
from the checkpoint's own `config.json`, so the full-precision model never exists. Each safetensors
shard is then read tensor by tensor, key names converted with transformers' own checkpoint mapping
(`get_model_conversion_mapping`, what `from_pretrained` applies); a Linear layer the backbone
quantizes becomes its bitsandbytes layer as soon as its weight (and bias) arrive, a mixture-of-experts
weight pair becomes `QuantizedExperts` as soon as both halves of a layer arrive, and every other
tensor lands at the training dtype. Peak host memory is the quantized model plus one shard (plus a
layer's experts at checkpoint precision), which `predicted_load_bytes` states before anything is built.

A layer is quantized from the checkpoint's own precision (as `from_pretrained` does); freed shard memory
goes back to the OS after each shard. transformers' `from_pretrained(..., quantization_config=...)`
does the same for `nn.Linear` layers;
it is not used because it cannot reach Granite's 3-D expert weights (it would load them at full
precision: 12 GB for Granite 4.0 Tiny). Tests check this loader against `from_pretrained` followed by
quantization: same outputs.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import psutil
import torch
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from em_backbones.techniques.config import Techniques
from em_backbones.techniques.quantization import (
    QuantizedExperts,
    bnb_config,
    quantizable_linears,
    quantized_linear,
    quantized_weight_bytes,
)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def release_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise: 2.65 GB after loading InternVL2.5-4B)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
PROMPT_RETURN_BYTES = 128 * 1024


def return_freed_pages_promptly() -> None:
    """Make this process give freed tensors' pages back to the OS at once, as the loader needs.

    glibc serves a large allocation with its own mapping only below a threshold it raises after the
    first large free (up to 32 MiB): from then on shard-sized tensors come from the heap, and their
    freed pages stay resident, so a default process's resident peak while loading read 28% above
    the prediction (InternVL2.5-4B). Fixing the thresholds, as the MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ variables would, keeps every large tensor a mapping of its own, unmapped
    when freed; the loader sets them itself, so an ordinary process behaves as predicted.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, PROMPT_RETURN_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, PROMPT_RETURN_BYTES)
    except (OSError, AttributeError):  # not glibc
        pass


class CheckpointError(ValueError):
    """A local checkpoint that does not fit the backbone, or does not fit in the node's memory."""


def hf_config(ckpt_path: str):
    """The architecture a Hugging Face directory declares (its config.json), the one to build on meta."""
    return AutoConfig.from_pretrained(ckpt_path, local_files_only=True)


def shard_files(ckpt_path: str | Path) -> list[Path]:
    root = Path(ckpt_path)
    if (root / INDEX).is_file():
        names = sorted(set(json.loads((root / INDEX).read_text())["weight_map"].values()))
        return [root / name for name in names]
    if (root / SINGLE).is_file():
        return [root / SINGLE]
    raise CheckpointError(f"backbone_ckpt_path {root}: no {INDEX} or {SINGLE} (a save_pretrained directory)")


def predicted_load_bytes(quantized_model_bytes: float, ckpt_path: str | Path, expert_layer_bytes: float = 0.0) -> float:
    """Host memory loading needs: the model in its final form, the largest shard, one layer's experts."""
    largest = max(path.stat().st_size for path in shard_files(ckpt_path))
    return quantized_model_bytes + largest + expert_layer_bytes


def check_host_memory(needed: float, ckpt_path: str) -> None:
    available = psutil.virtual_memory().available
    if needed > available:
        raise CheckpointError(f"backbone_ckpt_path {ckpt_path}: loading needs {needed / 1e9:.1f} GB of host memory, "
                              f"this node has {available / 1e9:.1f} GB available")


def checkpoint_renamer(hf_model: nn.Module):
    """Checkpoint key → module path, through the renamings transformers registers for this model."""
    transforms = get_model_conversion_mapping(hf_model)
    if any(not isinstance(t, WeightRenaming) for t in transforms):
        raise CheckpointError(f"{type(hf_model).__name__}: its checkpoints need tensor conversions, not renamings")

    def rename(key: str) -> str:
        for transform in transforms:
            key, _ = transform.rename_source_key(key)
        return key

    return rename


class ShardLoader:
    """Fills the meta-built Hugging Face part of `backbone` from a checkpoint, quantizing as tensors arrive."""

    def __init__(self, backbone: nn.Module, techniques: Techniques, dtype: torch.dtype = torch.float32) -> None:
        self.backbone, self.dtype = backbone, dtype
        self.prefix = backbone.hf_attribute
        self.hf = getattr(backbone, self.prefix)
        self.config = bnb_config(techniques.quantization_bits, techniques.quant_type, techniques.double_quant)
        names = {id(m): n for n, m in backbone.named_modules()}
        self.linears = {f"{names[id(blocks)]}.{n}": linear for blocks in backbone.quantizable_blocks()
                        for n, linear in quantizable_linears(blocks)} if self.config else {}
        self.experts = {f"{names[id(parent)]}.{attr}": getattr(parent, attr)
                        for parent, attr in backbone.expert_modules()} if self.config else {}
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.unused: list[str] = []

    def final_bytes(self) -> float:
        """The backbone's weights once loaded: quantized layers at their packed size, the rest at `dtype`."""
        quantized = {id(p) for m in [*self.linears.values(), *self.experts.values()] for p in m.parameters()}
        element = torch.finfo(self.dtype).bits // 8
        rest = sum(p.numel() for p in self.backbone.parameters() if id(p) not in quantized) * element
        bits, double = self.config_bits()
        packed = sum(quantized_weight_bytes(m.in_features, m.out_features, bits, double) + element * (
            m.bias.numel() if m.bias is not None else 0) for m in self.linears.values())
        for experts in self.experts.values():
            for weights in (experts.gate_up_proj, experts.down_proj):
                packed += weights.shape[0] * quantized_weight_bytes(weights.shape[2], weights.shape[1], bits, double)
        return rest + packed

    def predicted_bytes(self, ckpt_path: str | Path) -> float:
        """What loading this checkpoint will need of host memory (see `predicted_load_bytes`)."""
        return predicted_load_bytes(self.final_bytes(), ckpt_path, self.largest_expert_bytes())

    def largest_expert_bytes(self) -> float:
        """One layer's expert weights at `dtype`, held until both halves are there to quantize."""
        element = torch.finfo(self.dtype).bits // 8
        return max((sum(p.numel() for p in e.parameters()) * element for e in self.experts.values()), default=0)

    def config_bits(self) -> tuple[int, bool]:
        if self.config is None:
            return 16, False
        return (4 if self.config.load_in_4bit else 8), bool(self.config.bnb_4bit_use_double_quant)

    def load(self, ckpt_path: str) -> None:
        return_freed_pages_promptly()
        rename = checkpoint_renamer(self.hf)
        for shard in shard_files(ckpt_path):
            with safe_open(str(shard), framework="pt") as tensors:
                for key in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                    self.place(f"{self.prefix}.{rename(key)}", tensors.get_tensor(key))
            release_heap()  # the shard's tensors are freed: give their pages back before the next shard
        missing = [n for n, p in self.backbone.named_parameters() if p.device.type == "meta"]
        if missing or self.pending:
            raise CheckpointError(f"backbone_ckpt_path {ckpt_path}: lacks {(missing or sorted(self.pending))[:3]}")

    def place(self, name: str, tensor: torch.Tensor) -> None:
        module_name, _, leaf = name.rpartition(".")
        if module_name in self.linears:
            self.collect(module_name, leaf, tensor, needed=2 if self.linears[module_name].bias is not None else 1)
        elif module_name in self.experts:
            self.collect(module_name, leaf, tensor, needed=2)
        else:
            try:
                value = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
                set_module_tensor_to_device(self.backbone, name, "cpu", value=value)
            except (AttributeError, ValueError):  # a module the backbone dropped (token embedding, LM head)
                self.unused.append(name)

    def collect(self, module_name: str, leaf: str, tensor: torch.Tensor, needed: int) -> None:
        """Hold a quantized layer's tensors, at the checkpoint's precision, until the layer is complete."""
        parts = self.pending.setdefault(module_name, {})
        parts[leaf] = tensor
        if len(parts) < needed:
            return
        del self.pending[module_name]
        if module_name in self.linears:
            self.backbone.set_submodule(module_name, self.quantized(self.linears[module_name], parts))
        else:
            experts = self.experts[module_name]
            experts.gate_up_proj = nn.Parameter(parts["gate_up_proj"], requires_grad=False)
            experts.down_proj = nn.Parameter(parts["down_proj"], requires_grad=False)
            self.backbone.set_submodule(module_name, QuantizedExperts(experts, self.config))
            # The template stays in self.experts: it must not keep this layer's checkpoint-precision weights alive.
            del experts.gate_up_proj, experts.down_proj

    def quantized(self, template: nn.Linear, parts: dict[str, torch.Tensor]) -> nn.Module:
        linear = nn.Linear(template.in_features, template.out_features, bias=template.bias is not None, device="meta")
        linear.weight = nn.Parameter(parts["weight"], requires_grad=False)
        if template.bias is not None:
            linear.bias = nn.Parameter(parts["bias"].to(self.dtype))
        return quantized_linear(linear, self.config)
