"""Importing this module registers every backbone family in TerraTorch's BACKBONE_REGISTRY.

TerraTorch's LightningCLI imports `custom_modules_path` (a folder) by its name before it builds a
model; an exported config names `em_backbones.PLUGIN_DIR`, a one-package folder whose `__init__`
imports this module, so nothing else lands on `sys.path`.
"""

from em_backbones import cnn, earthmind, granite, internvl, terratorch_native  # noqa: F401  (they register)
