"""Backbones for the search: catalog and settings (light), families and techniques (heavy).

Importing this package imports no torch, TerraTorch or transformers: the search's planning side
(space validation, reports) reads `em_backbones.catalog` and `em_backbones.techniques_config`
only. The training side registers every backbone in TerraTorch's BACKBONE_REGISTRY with
`import em_backbones.registered`; TerraTorch's `custom_modules_path` does the same through
`em_backbones/plugin/em_backbones_plugin` (see `em_backbones.registered.PLUGIN_DIR`).
"""

from pathlib import Path

# The folder an exported TerraTorch config names as `custom_modules_path` (its package registers everything).
PLUGIN_DIR = Path(__file__).parent / "plugin" / "em_backbones_plugin"
