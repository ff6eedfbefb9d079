"""One way every backbone enters TerraTorch's registry, with one set of keyword arguments.

TerraTorch's factory passes `backbone_*` keys from a YAML file as keyword arguments; they land
here, are checked once, and become a `BackboneArgs` the backbone class is built from. A YAML
file can therefore name any backbone of the catalog with the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import nn

from em_backbones.catalog import SCALES, get_spec
from em_backbones.techniques import Techniques, apply_techniques

DEFAULT_MODALITIES = ("S1RTC", "S2L2A")


@dataclass(frozen=True)
class BackboneArgs:
    """Everything a backbone is built from; `full` and `tiny` differ only in `scale`."""

    name: str
    scale: str
    modalities: list[str]
    img_size: int
    pretrained: bool
    ckpt_path: str | None
    out_indices: list[int] | None


def register_backbone(name: str, cls: Callable[[BackboneArgs], nn.Module],
                      local_weights_only: bool = True) -> Callable[..., nn.Module]:
    """Register `cls` under `name`; `local_weights_only`: pretrained weights must come from ckpt_path."""

    def build(scale: str = "tiny", modalities=DEFAULT_MODALITIES, img_size: int | None = None,
              pretrained: bool = False, ckpt_path: str | None = None, out_indices: list[int] | None = None,
              quantization_bits: int = 16, quant_type: str = "nf4", double_quant: bool = True,
              lora_rank: int = 0, lora_alpha: float | None = None, lora_dropout: float = 0.0,
              gradient_checkpointing: bool = False, **_ignored) -> nn.Module:
        techniques = Techniques(quantization_bits, quant_type, double_quant, lora_rank, lora_alpha, lora_dropout,
                                gradient_checkpointing)
        if scale not in SCALES:
            raise ValueError(f"{name}: scale must be one of {SCALES}, got {scale!r}")
        if pretrained and not ckpt_path and local_weights_only:
            raise ValueError(f"{name}: pretrained=True needs ckpt_path to local weights (no downloads)")
        model = cls(BackboneArgs(name, scale, list(modalities), img_size or get_spec(name).native_img_size,
                                 pretrained, ckpt_path, out_indices))
        return apply_techniques(model, techniques)

    build.__name__ = name
    if name not in TERRATORCH_BACKBONE_REGISTRY:
        TERRATORCH_BACKBONE_REGISTRY.register(build)
    return build
