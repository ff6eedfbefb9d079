"""The one typed contract every registered backbone class meets: what techniques, estimator and counter ask.

Like TerraTorch's registry contract and transformers' per-model configuration, each family answers
for itself in its own module; generic code (em_backbones/techniques/apply.py, estimate.py, counting.py)
never switches on a backbone's name or family.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from accelerate import init_empty_weights
from torch import nn

from em_backbones.activations import Architecture
from em_backbones.args import BackboneArgs
from em_backbones.catalog import get_spec


@runtime_checkable
class BackboneFamily(Protocol):
    """A backbone module built from `BackboneArgs` (em_backbones/registry.py)."""

    lora_target_names: tuple[str, ...]  # leaf names of the Linear layers LoRA adapts inside quantizable blocks
    out_channels: list[int]  # TerraTorch's backbone contract: widths of the returned feature maps

    def quantizable_blocks(self) -> list[nn.Module]:
        """Transformer blocks whose Linear layers bitsandbytes quantizes (and LoRA adapts)."""

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters with no pretrained counterpart (adapters, stems): they train even under LoRA."""

    def checkpointed_modules(self) -> list[nn.Module]:
        """Hugging Face models (which checkpoint themselves) or lists of blocks to wrap."""

    def expert_modules(self) -> list[tuple[nn.Module, str]]:
        """(parent, attribute) of 3-D mixture-of-experts weights, quantized per expert; usually none."""

    def memory_architecture(self, img_size: int, modalities: tuple[str, ...]) -> Architecture:
        """The shape facts the estimator needs, at this input size and these modalities."""

    @classmethod
    def published_parameters(cls, name: str) -> int:
        """The released model's whole parameter count (counted on the meta device)."""


CONTRACT = ("lora_target_names", "quantizable_blocks", "new_parameters", "checkpointed_modules", "expert_modules",
            "memory_architecture", "published_parameters")


def missing_from_contract(cls: type) -> list[str]:
    return [name for name in CONTRACT if not hasattr(cls, name)]


class ContractDefaults:
    """What most families answer alike: no experts, nothing new, published = the backbone as built."""

    def expert_modules(self) -> list[tuple[nn.Module, str]]:
        return []

    def new_parameters(self) -> list[nn.Parameter]:
        return []

    @classmethod
    def published_parameters(cls, name: str) -> int:
        return parameters_on_meta(cls, name)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameters_on_meta(cls: type, name: str, scale: str = "full") -> int:
    """Parameters of `cls` built at `scale` and its published input size, without allocating a byte
    (accelerate's `init_empty_weights`, since some constructors call `.item()`, as TerraMind's does)."""
    with init_empty_weights():
        return count_parameters(cls(BackboneArgs(name, scale=scale, img_size=get_spec(name).native_img_size)))
