"""Finding a layout's chips on disk and reading one, checked: a bad chip raises `BadChip` naming its file and why.

Layouts read:
- `terramesh`: one folder per modality (`S1RTC/`, `S2L2A/` or `S2L1C/`) and `LULC/` labels, the
  same file name in each (TerraMesh, as in TerraMind's examples).
- `sen1floods11`: `<id>_S1Hand.tif`, `<id>_S2Hand.tif`, `<id>_LabelHand.tif` anywhere under the
  root (label -1 = no data, ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from em_backbones.bands import bands_of
from search.data.spec import LAYOUTS, DataError

IGNORE_INDEX = -1


class BadChip(DataError):
    """One chip that cannot be used; skipped (with a warning) unless `data.on_bad_chip: error`."""

    def __init__(self, chip_id: str, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.chip_id, self.path, self.reason = chip_id, str(path), reason


@dataclass
class Chip:
    chip_id: str
    images: dict[str, Path]
    label: Path
    missing: str | None = None  # a modality file this chip lacks


def find_chips(root: Path, layout: str, modalities: list[str]) -> list[Chip]:
    """Every labelled chip, sorted by id; one whose modality file is missing is marked, not dropped."""
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a directory")
    if layout == "terramesh":
        label_dir = root / LAYOUTS["terramesh"]["label"]
        for folder in [*(root / m for m in modalities), label_dir]:
            if not folder.is_dir():
                raise DataError(f"data.root: {root} lacks the folder {folder.name}/ the terramesh layout needs")
        chips = []
        for label in sorted(label_dir.glob("*.tif")):
            images = {m: root / m / label.name for m in modalities}
            missing = next((str(p) for p in images.values() if not p.exists()), None)
            chips.append(Chip(label.stem, images, label, missing))
    elif layout == "sen1floods11":
        suffixes = LAYOUTS["sen1floods11"]["suffixes"]
        files = {p.name: p for p in root.rglob("*.tif")}
        chips = []
        for name in sorted(n for n in files if n.endswith(suffixes["label"])):
            chip_id = name[: -len(suffixes["label"])]
            images = {m: files.get(f"{chip_id}{suffixes[m]}", root / f"{chip_id}{suffixes[m]}") for m in modalities}
            missing = next((str(p) for p in images.values() if not p.exists()), None)
            chips.append(Chip(chip_id, images, files[name], missing))
    else:
        raise DataError(f"data.layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    if not chips:
        raise DataError(f"data.root: no labelled chips found under {root} for layout {layout!r}")
    return chips


def read_chip(chip: Chip, num_classes: int, tile_size: int) -> tuple[dict[str, np.ndarray], np.ndarray, object, object]:
    """Read and check one chip; raise BadChip naming the file and the reason."""
    if chip.missing:
        raise BadChip(chip.chip_id, chip.missing, "missing; the chip has a label but not this modality")
    images = {}
    for modality, path in chip.images.items():
        with rasterio.open(path) as src:
            data = src.read().astype(np.float32)
            transform, crs, nodata = src.transform, src.crs, src.nodata
        expected = len(bands_of(modality))
        if data.shape[0] != expected:
            raise BadChip(chip.chip_id, path, f"{modality} needs {expected} bands, found {data.shape[0]}")
        if nodata is not None and not np.isnan(nodata):
            data[data == nodata] = np.nan
        if np.isnan(data).all():
            raise BadChip(chip.chip_id, path, "every pixel is NaN/no-data")
        images[modality] = data
    with rasterio.open(chip.label) as src:
        label = src.read(1).astype(np.int16)
    label[label < 0] = IGNORE_INDEX
    for modality, array in images.items():
        if array.shape[1:] != label.shape:
            raise BadChip(chip.chip_id, chip.label, f"label is {label.shape[0]}x{label.shape[1]} but {modality} is "
                          f"{array.shape[1]}x{array.shape[2]}; expected the same size")
    if label.max() >= num_classes:
        raise BadChip(chip.chip_id, chip.label, f"label value {int(label.max())} >= data.num_classes={num_classes}")
    if not (label != IGNORE_INDEX).any():
        raise BadChip(chip.chip_id, chip.label, "no labelled pixel (every label is -1/no data)")
    if min(label.shape) < tile_size:
        raise BadChip(chip.chip_id, chip.label, f"chip is {label.shape[0]}x{label.shape[1]}, smaller than "
                      f"data.tile_size={tile_size}")
    return images, label, transform, crs
