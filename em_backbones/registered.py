"""Importing this module names every catalogued backbone in TerraTorch's BACKBONE_REGISTRY.

TerraTorch's LightningCLI imports `custom_modules_path` (a folder) by its name before it builds a
model; an exported config names `em_backbones.PLUGIN_DIR`, a one-package folder whose `__init__`
imports this module, so nothing else lands on `sys.path`. Each name is registered with a builder
that imports its family only when TerraTorch first builds it (em_backbones/registry.py), so a
trial's process imports the families it trains and no others.
"""

from typing import Any, Callable

from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import nn

from em_backbones.catalog import CATALOG
from em_backbones.registry import build_backbone


def builder_of(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        return build_backbone(name, **kwargs)

    build.__name__ = name  # TerraTorch's registry keys a builder by its name
    return build


for _name in CATALOG:
    if _name not in TERRATORCH_BACKBONE_REGISTRY:
        TERRATORCH_BACKBONE_REGISTRY.register(builder_of(_name))
