"""One way every backbone enters TerraTorch's registry, with one set of keyword arguments.

TerraTorch's factory passes the `backbone_*` keys of a YAML file, prefix stripped, as keyword
arguments; they land here, are checked once, and become a `BackboneArgs` the backbone class is
built from plus the `Techniques` applied to it. A key that is neither is an error naming it and
the closest valid one, as TerraTorch's own factory refuses leftover arguments: a misspelt
`backbone_lora_rnak` must not train a model without LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import nn

from em_backbones.catalog import SCALES, did_you_mean, get_spec
from em_backbones.contract import missing_from_contract
from em_backbones.loading import ShardLoader, check_host_memory
from em_backbones.techniques import apply_techniques
from em_backbones.techniques_config import Techniques, technique_knobs

DEFAULT_MODALITIES = ("S1RTC", "S2L2A")
FACTORY_KEYS = ("padding", "patch_size")  # read by TerraTorch's factory itself from the backbone_* keys


@dataclass(frozen=True)
class BackboneArgs:
    """Everything a backbone is built from; `full` and `tiny` differ only in `scale`."""

    name: str
    scale: str = "tiny"
    modalities: list[str] | tuple[str, ...] = DEFAULT_MODALITIES
    img_size: int | None = None  # None: the backbone's published input size
    pretrained: bool = False
    ckpt_path: str | None = None
    out_indices: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the family's own arguments (catalog: extra_args)


BUILD_KEYS = tuple(f.name for f in fields(BackboneArgs) if f.name not in ("name", "extra"))


class UnknownBackboneArgument(ValueError):
    """A `backbone_*` key no backbone reads."""


def split_arguments(name: str, kwargs: dict[str, Any]) -> tuple[BackboneArgs, Techniques]:
    """Backbone arguments and techniques out of the factory's keywords; unknown keys are refused."""
    extra_args = get_spec(name).extra_args
    valid = [*BUILD_KEYS, *technique_knobs(), *extra_args, *FACTORY_KEYS]
    for key in kwargs:
        if key not in valid:
            raise UnknownBackboneArgument(f"{name}: unknown backbone argument 'backbone_{key}'"
                                          f"{did_you_mean(key, valid, 'backbone_')}")
    build = {k: v for k, v in kwargs.items() if k in BUILD_KEYS}
    build["modalities"] = list(build.get("modalities") or DEFAULT_MODALITIES)
    args = BackboneArgs(name, **build, extra={k: kwargs.get(k, default) for k, default in extra_args.items()})
    if args.scale not in SCALES:
        raise ValueError(f"{name}: scale must be one of {SCALES}, got {args.scale!r}")
    if args.img_size is None:
        args = BackboneArgs(**{**args.__dict__, "img_size": get_spec(name).native_img_size})
    techniques = Techniques(**{k: v for k, v in kwargs.items() if k in technique_knobs()})
    return args, techniques


def load_checkpoint(model: nn.Module, techniques: Techniques, ckpt_path: str) -> None:
    """Fill the meta-built Hugging Face part from a local directory, quantized while loading; refuse first
    when the node cannot hold what loading needs."""
    loader = ShardLoader(model, techniques)
    check_host_memory(loader.predicted_bytes(ckpt_path), ckpt_path)
    loader.load(ckpt_path)


BACKBONE_CLASSES: dict[str, type] = {}  # name → the class it is built from (em_backbones/contract.py's contract)


def backbone_class(name: str) -> type:
    try:
        return BACKBONE_CLASSES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONE_CLASSES))}") from None


def register_backbone(name: str, cls: Callable[[BackboneArgs], nn.Module],
                      local_weights_only: bool = True) -> Callable[..., nn.Module]:
    """Register `cls` under `name`; `local_weights_only`: pretrained weights must come from ckpt_path."""
    missing = missing_from_contract(cls)
    if missing:
        raise TypeError(f"{cls.__name__} does not meet the backbone contract: lacks {', '.join(missing)}")
    BACKBONE_CLASSES[name] = cls

    def build(**kwargs: Any) -> nn.Module:
        args, techniques = split_arguments(name, kwargs)
        if args.pretrained and not args.ckpt_path and local_weights_only:
            raise ValueError(f"{name}: pretrained=True needs ckpt_path to local weights (no downloads)")
        model = cls(args)
        if args.ckpt_path and getattr(model, "hf_attribute", None):
            load_checkpoint(model, techniques, args.ckpt_path)
        return apply_techniques(model, techniques)

    build.__name__ = name
    if name not in TERRATORCH_BACKBONE_REGISTRY:
        TERRATORCH_BACKBONE_REGISTRY.register(build)
    return build
