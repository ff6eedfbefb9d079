"""The project's own backbone registry: name → family class and builder. It never imports what it registers.

Like TerraTorch's `registry/` (whose `BACKBONE_REGISTRY` this project joins in
em_backbones/registered.py), it maps names to constructors and holds nothing else; a family
registers itself when its module is imported, and, as transformers' `models/auto` maps names to
modules as strings, a name is built by importing its family's module on demand (the catalog's
`family`): a process that trains TerraMind never imports InternVL, Granite, peft or bitsandbytes'
model code. No TerraTorch import here, so the Hugging Face families build in a bare PyTorch
container (`search calibrate`).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from em_backbones.args import BackboneArgs, split_arguments
from em_backbones.catalog import get_spec
from em_backbones.contract import missing_from_contract
from em_backbones.techniques.apply import apply_techniques
from em_backbones.techniques.config import Techniques
from em_backbones.techniques.loading import ShardLoader, check_host_memory

FAMILIES_PACKAGE = "em_backbones.families"
BACKBONE_CLASSES: dict[str, type] = {}  # name → the class it is built from (em_backbones/contract.py's contract)
BUILDERS: dict[str, Callable[..., nn.Module]] = {}  # name → build(**backbone_kwargs), what TerraTorch's factory calls


def load_checkpoint(model: nn.Module, techniques: Techniques, ckpt_path: str) -> None:
    """Fill the meta-built Hugging Face part from a local directory, quantized while loading; refuse first
    when the node cannot hold what loading needs."""
    loader = ShardLoader(model, techniques)
    check_host_memory(loader.predicted_bytes(ckpt_path), ckpt_path)
    loader.load(ckpt_path)


def ensure_registered(name: str) -> None:
    """Import the module of `name`'s family (em_backbones/families/<family>.py), which registers it."""
    if name not in BUILDERS:
        importlib.import_module(f"{FAMILIES_PACKAGE}.{get_spec(name).family}")


def backbone_class(name: str) -> type:
    ensure_registered(name)
    return BACKBONE_CLASSES[name]


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A backbone from `backbone_*` keywords (prefix stripped), techniques applied; its family imported on demand."""
    ensure_registered(name)
    return BUILDERS[name](**kwargs)


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
    BUILDERS[name] = build
    return build
