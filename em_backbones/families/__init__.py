"""Every backbone family; importing this package registers them all (em_backbones/registry.py).

As TerraTorch's `models/backbones/__init__.py` imports its families, this one imports ours. The
Hugging Face families (InternVL, EarthMind, Granite) need only torch and transformers; the
TerraTorch-native ones (Prithvi, TerraMind, Clay) and the reference U-Net are built from
TerraTorch's own modules, so they register only where TerraTorch is installed: `search calibrate`
runs in a bare PyTorch container without it.
"""

from importlib.util import find_spec

from em_backbones.families import earthmind, granite, internvl  # noqa: F401  (they register)

TERRATORCH_FAMILIES = find_spec("terratorch") is not None
if TERRATORCH_FAMILIES:
    from em_backbones.families import cnn, terratorch_native  # noqa: F401  (they register)
