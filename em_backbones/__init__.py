"""Backbones for the search, registered in TerraTorch's BACKBONE_REGISTRY on import.

`import em_backbones` (or TerraTorch's `custom_modules_path: <repo>/em_backbones`) is all a
TerraTorch config needs to name any backbone of em_backbones.catalog.CATALOG.
"""

from em_backbones import earthmind, granite, internvl, terratorch_native  # noqa: F401  (register the backbones)
from em_backbones.catalog import CATALOG, backbones_in_tier, get_spec

__all__ = ["CATALOG", "backbones_in_tier", "get_spec"]
