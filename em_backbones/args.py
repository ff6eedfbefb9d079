"""What every backbone is built from (`BackboneArgs`), parsed once from TerraTorch's `backbone_*` keywords.

TerraTorch's factory passes the `backbone_*` keys of a YAML file, prefix stripped, as keyword
arguments; they land here, are checked once, and become a `BackboneArgs` the backbone class is
built from plus the `Techniques` applied to it. A key that is neither is an error naming it and
the closest valid one, as TerraTorch's own factory refuses leftover arguments: a misspelt
`backbone_lora_rnak` must not train a model without LoRA. Light (no torch): like a transformers
configuration, it holds values only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from em_backbones.catalog import SCALES, did_you_mean, get_spec
from em_backbones.techniques.config import Techniques, technique_knobs

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
