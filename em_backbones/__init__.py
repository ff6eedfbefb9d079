"""Backbones for the search: catalog and settings (light), families, techniques and sizing (heavy).

Importing this package imports no torch, TerraTorch or transformers: the search's planning side
(space validation, reports) reads `em_backbones.catalog` and `em_backbones.techniques.config`
only. em_backbones/registry.py builds a backbone by name, importing its family on demand;
`import em_backbones.registered` names every backbone in TerraTorch's BACKBONE_REGISTRY, which
TerraTorch's `custom_modules_path` does through `em_backbones/plugin/em_backbones_plugin`
(`PLUGIN_DIR` below).
"""

from pathlib import Path

# The folder an exported TerraTorch config names as `custom_modules_path` (its package registers everything).
PLUGIN_DIR = Path(__file__).parent / "plugin" / "em_backbones_plugin"
