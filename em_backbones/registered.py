"""Importing this module puts every backbone of em_backbones/registry.py into TerraTorch's BACKBONE_REGISTRY.

TerraTorch's LightningCLI imports `custom_modules_path` (a folder) by its name before it builds a
model; an exported config names `em_backbones.PLUGIN_DIR`, a one-package folder whose `__init__`
imports this module, so nothing else lands on `sys.path`.
"""

from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY

import em_backbones.families  # noqa: F401  (the families register in em_backbones.registry)
from em_backbones.registry import BUILDERS

for _name, _build in BUILDERS.items():
    if _name not in TERRATORCH_BACKBONE_REGISTRY:
        TERRATORCH_BACKBONE_REGISTRY.register(_build)
