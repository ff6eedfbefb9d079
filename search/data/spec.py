"""What a space's `data:` section says, and the chip layouts the tiler reads: plain values, no I/O.

The tiler (search/data/tiles.py) takes a `DataSpec` whole; the schema (search/plan/schema.py)
nests it in a `Space`. Each layout is named once here, with what tells its files apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.errors import UserError

# Layout → where its files are: `terramesh` has one folder per modality plus the label folder, the
# same file name in each (TerraMesh, as in TerraMind's examples); `sen1floods11` has
# `<id><suffix>` files anywhere under the root (label -1 = no data).
LAYOUTS: dict[str, dict] = {
    "terramesh": {"label": "LULC", "modalities": ("S1RTC", "S2L2A", "S2L1C")},
    "sen1floods11": {
        "suffixes": {"S1GRD": "_S1Hand.tif", "S2L1C": "_S2Hand.tif", "label": "_LabelHand.tif"},
        "modalities": ("S1GRD", "S2L1C"),
    },
}
BAD_CHIP_POLICIES = ("skip", "error")


class DataError(UserError, ValueError):
    """Bad or missing input data; the message names the file and what was expected."""


@dataclass(frozen=True)
class DataSpec:
    root: str | None = None  # None: the packaged sample of the layout (search/sample_data/<layout>)
    layout: str = "terramesh"
    modalities: tuple[str, ...] = ("S1RTC", "S2L2A")
    num_classes: int = 10
    tile_size: int = 112
    # The search's validation chips; empty (the default and every packaged space): chosen by the stratified rule
    # of search/data/splits.py. `test_chips` (or a `test_fraction` of the chips, stratified): kept out of the
    # search altogether, neither trained nor validated on; the held-out folds test every usable chip either way.
    val_chips: tuple[str, ...] = ()
    test_chips: tuple[str, ...] = ()
    val_fraction: float = 0.2  # share of usable chips chosen for validation (at least 1) when none are named
    test_fraction: float = 0.0
    on_bad_chip: str = "skip"  # skip (one warning line each) or error

