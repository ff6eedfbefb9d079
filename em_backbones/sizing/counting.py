"""Parameter counts at full scale without allocating a byte, "as published" and "as backbone".

"As published" is the released model: for the VLMs and Granite, the whole causal LM including its
token embedding and LM head. "As backbone" is what the search trains: the registered backbone,
which drops the text embedding and LM head it never uses and adds its S1+S2 adapters.
Both are counted on the `meta` device (accelerate's `init_empty_weights` where a constructor calls
`.item()`, as TerraMind's does).
"""

from __future__ import annotations

from accelerate import init_empty_weights

from em_backbones.contract import count_parameters
from em_backbones.registry import backbone_class, build_backbone


def backbone_params(name: str, scale: str = "full") -> int:
    """The registered backbone at its published input size."""
    with init_empty_weights():
        return count_parameters(build_backbone(name, scale=scale))


def published_params(name: str) -> int:
    """The released architecture's full parameter count: each family answers for itself (em_backbones/contract.py)."""
    return backbone_class(name).published_parameters(name)
