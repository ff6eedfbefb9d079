"""Band names of the Sentinel-1 and Sentinel-2 modalities the project reads.

Modality names follow TerraMind's (`S1RTC`, `S1GRD`, `S2L2A`, `S2L1C`) so the same names work
for TerraMind's per-modality embeddings, for the datamodule's folders, and in YAML.
"""

from __future__ import annotations

S2L2A_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S2L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
S1_BANDS = ["VV", "VH"]

MODALITY_BANDS: dict[str, list[str]] = {
    "S1RTC": S1_BANDS,
    "S1GRD": S1_BANDS,
    "S2L2A": S2L2A_BANDS,
    "S2L1C": S2L1C_BANDS,
}

# Clay's wavelength table (terratorch.models.backbones.clay_v1.modules.WAVELENGTHS) names bands
# by role, not by Sentinel-2 band number; Clay embeds each band from its central wavelength.
CLAY_BAND_NAMES: dict[str, str] = {
    "B01": "COASTAL_AEROSOL",
    "B02": "BLUE",
    "B03": "GREEN",
    "B04": "RED",
    "B05": "RED_EDGE_1",
    "B06": "RED_EDGE_2",
    "B07": "RED_EDGE_3",
    "B08": "NIR_BROAD",
    "B8A": "NIR_NARROW",
    "B09": "WATER_VAPOR",
    "B10": "CIRRUS",
    "B11": "SWIR_1",
    "B12": "SWIR_2",
    "VV": "VV",
    "VH": "VH",
}


def bands_of(modality: str) -> list[str]:
    try:
        return MODALITY_BANDS[modality]
    except KeyError:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITY_BANDS)}") from None


def stacked_band_names(modalities: list[str]) -> list[str]:
    """Band names in the order the modalities are concatenated as channels."""
    return [band for modality in modalities for band in bands_of(modality)]
