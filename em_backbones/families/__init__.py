"""Every backbone family, one module each; a module registers its backbones when imported.

Nothing imports them all: em_backbones/registry.py imports a family's module when one of its
backbones is first built (the catalog names the module), as TerraTorch's registry builds by name
and transformers' `models/auto` imports a model's module on demand. The Hugging Face families
(InternVL, EarthMind, Granite) need only torch and transformers; the TerraTorch-native ones
(Prithvi, TerraMind, Clay) and the reference U-Net need TerraTorch.
"""
