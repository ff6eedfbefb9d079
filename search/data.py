"""Sentinel-1 + Sentinel-2 GeoTIFF chips → tiles split by chip → TerraTorch datamodule arguments.

Reading, checking and tiling happen once per run, in the driver, into `<run>/data/`. Training
then reads the tiles with TerraTorch's own `GenericMultiModalDataModule`, so the exported
`best.yaml` names a stock TerraTorch datamodule over files on disk. Splits are by chip: every
tile of a chip lands in the same split, so no chip is seen on both sides.

Layouts read:
- `terramesh`: one folder per modality (`S1RTC/`, `S2L2A/` or `S2L1C/`) and `LULC/` labels, the
  same file name in each (TerraMesh, as in TerraMind's examples).
- `sen1floods11`: `<id>_S1Hand.tif`, `<id>_S2Hand.tif`, `<id>_LabelHand.tif` anywhere under the
  root (label -1 = no data, ignored).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from em_backbones.bands import bands_of

SAMPLE_DATA = Path(__file__).parent / "sample_data" / "terramesh"
IGNORE_INDEX = -1
LABEL_FOLDER = "label"
SPLITS = ("train", "val", "test")

LAYOUTS: dict[str, dict] = {
    "terramesh": {"label": "LULC", "modalities": ("S1RTC", "S2L2A", "S2L1C")},
    "sen1floods11": {
        "suffixes": {"S1GRD": "_S1Hand.tif", "S2L1C": "_S2Hand.tif", "label": "_LabelHand.tif"},
        "modalities": ("S1GRD", "S2L1C"),
    },
}


class DataError(ValueError):
    """Bad or missing input data; the message names the file and what was expected."""


@dataclass
class Chip:
    chip_id: str
    images: dict[str, Path]
    label: Path


@dataclass
class PreparedData:
    """Tiles on disk, split files and normalisation statistics; everything a datamodule needs."""

    root: Path
    modalities: list[str]
    num_classes: int
    splits: dict[str, list[str]]  # split → chip ids
    tiles: dict[str, list[str]] = field(default_factory=dict)  # split → tile ids
    means: dict[str, list[float]] = field(default_factory=dict)
    stds: dict[str, list[float]] = field(default_factory=dict)

    def split_file(self, split: str) -> Path:
        return self.root / "splits" / f"{split}.txt"

    def modality_dir(self, modality: str) -> Path:
        return self.root / "tiles" / modality

    @property
    def label_dir(self) -> Path:
        return self.root / "tiles" / LABEL_FOLDER

    def save(self) -> None:
        (self.root / "prepared.json").write_text(json.dumps({
            "modalities": self.modalities, "num_classes": self.num_classes, "splits": self.splits,
            "tiles": self.tiles, "means": self.means, "stds": self.stds,
        }, indent=1))

    @classmethod
    def load(cls, root: Path) -> "PreparedData":
        meta = json.loads((root / "prepared.json").read_text())
        return cls(root=root, **meta)


def find_chips(root: Path, layout: str, modalities: list[str]) -> list[Chip]:
    """Chips present in every required modality and in the labels, sorted by id."""
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a directory")
    if layout == "terramesh":
        label_dir = root / LAYOUTS["terramesh"]["label"]
        for folder in [*(root / m for m in modalities), label_dir]:
            if not folder.is_dir():
                raise DataError(f"data.root: {root} lacks the folder {folder.name}/ the terramesh layout needs")
        ids = sorted(p.stem for p in label_dir.glob("*.tif"))
        chips = []
        for chip_id in ids:
            images = {m: root / m / f"{chip_id}.tif" for m in modalities}
            missing = [str(p) for p in images.values() if not p.exists()]
            if missing:
                raise DataError(f"{missing[0]}: missing; chip {chip_id} has a label but not this modality")
            chips.append(Chip(chip_id, images, label_dir / f"{chip_id}.tif"))
    elif layout == "sen1floods11":
        suffixes = LAYOUTS["sen1floods11"]["suffixes"]
        labels = sorted(root.rglob(f"*{suffixes['label']}"))
        chips = []
        for label in labels:
            chip_id = label.name[: -len(suffixes["label"])]
            images = {}
            for m in modalities:
                found = list(root.rglob(f"{chip_id}{suffixes[m]}"))
                if not found:
                    raise DataError(f"{root}: chip {chip_id} has a label but no {chip_id}{suffixes[m]}")
                images[m] = found[0]
            chips.append(Chip(chip_id, images, label))
    else:
        raise DataError(f"data.layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    if not chips:
        raise DataError(f"data.root: no labelled chips found under {root} for layout {layout!r}")
    return chips


def read_chip(chip: Chip) -> tuple[dict[str, np.ndarray], np.ndarray, rasterio.Affine, object]:
    """Read and check one chip: band counts, matching sizes, not all no-data."""
    images = {}
    for modality, path in chip.images.items():
        with rasterio.open(path) as src:
            data = src.read().astype(np.float32)
            transform, crs = src.transform, src.crs
            nodata = src.nodata
        expected = len(bands_of(modality))
        if data.shape[0] != expected:
            raise DataError(f"{path}: {modality} needs {expected} bands, found {data.shape[0]}")
        if nodata is not None:
            data[data == nodata] = np.nan
        if np.isnan(data).all():
            raise DataError(f"{path}: every pixel is NaN/no-data")
        images[modality] = data
    with rasterio.open(chip.label) as src:
        label = src.read(1).astype(np.int16)
    shapes = {m: a.shape[1:] for m, a in images.items()}
    for modality, shape in shapes.items():
        if shape != label.shape:
            raise DataError(f"{chip.label}: label is {label.shape[0]}x{label.shape[1]} but {modality} is "
                            f"{shape[0]}x{shape[1]}; expected the same size")
    return images, label, transform, crs


def split_chips(chip_ids: list[str], val: list[str], test: list[str], seed: int) -> dict[str, list[str]]:
    """Assign whole chips to splits: named chips where given, else one val and one test chip by seed."""
    unknown = [c for c in [*val, *test] if c not in chip_ids]
    if unknown:
        raise DataError(f"data.val_chips/test_chips: unknown chip ids {unknown}; known: {chip_ids}")
    rest = [c for c in chip_ids if c not in val and c not in test]
    rng = random.Random(seed)
    if not val:
        val = rng.sample(rest, 1) if len(rest) > 1 else []
        rest = [c for c in rest if c not in val]
    if not test:
        test = rng.sample(rest, 1) if len(rest) > 1 else []
        rest = [c for c in rest if c not in test]
    if not rest or not val:
        raise DataError(f"data: need at least one training and one validation chip, found {len(chip_ids)} chips")
    return {"train": sorted(rest), "val": sorted(val), "test": sorted(test)}


def tile_windows(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping tiles; a chip smaller than a tile is an error upstream."""
    return [(r, c) for r in range(0, height - tile + 1, tile) for c in range(0, width - tile + 1, tile)]


def write_tile(path: Path, array: np.ndarray, transform, crs, window: Window, dtype: str) -> None:
    profile = {
        "driver": "GTiff", "height": window.height, "width": window.width, "count": array.shape[0],
        "dtype": dtype, "crs": crs, "transform": rasterio.windows.transform(window, transform),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype))


def prepare(root: Path, layout: str, modalities: list[str], num_classes: int, tile_size: int, out: Path,
            val_chips: list[str], test_chips: list[str], seed: int) -> PreparedData:
    """Check every chip, tile it into `out/tiles`, write split files, compute train statistics."""
    chips = find_chips(root, layout, modalities)
    splits = split_chips([c.chip_id for c in chips], val_chips, test_chips, seed)
    split_of = {chip_id: split for split, ids in splits.items() for chip_id in ids}
    prepared = PreparedData(root=out, modalities=list(modalities), num_classes=num_classes, splits=splits,
                            tiles={s: [] for s in SPLITS})
    for folder in [*(prepared.modality_dir(m) for m in modalities), prepared.label_dir, out / "splits"]:
        folder.mkdir(parents=True, exist_ok=True)
    sums = {m: np.zeros(len(bands_of(m))) for m in modalities}
    squares = {m: np.zeros(len(bands_of(m))) for m in modalities}
    counts = {m: np.zeros(len(bands_of(m))) for m in modalities}
    for chip in chips:
        images, label, transform, crs = read_chip(chip)
        if label.max() >= num_classes:
            raise DataError(f"{chip.label}: label value {int(label.max())} >= data.num_classes={num_classes}")
        height, width = label.shape
        if min(height, width) < tile_size:
            raise DataError(f"{chip.label}: chip is {height}x{width}, smaller than data.tile_size={tile_size}")
        split = split_of[chip.chip_id]
        for row, col in tile_windows(height, width, tile_size):
            window = Window(col, row, tile_size, tile_size)
            tile_id = f"{chip.chip_id}__r{row}_c{col}"
            for modality, array in images.items():
                piece = array[:, row:row + tile_size, col:col + tile_size]
                write_tile(prepared.modality_dir(modality) / f"{tile_id}.tif", piece, transform, crs, window, "float32")
                if split == "train":
                    valid = ~np.isnan(piece)
                    sums[modality] += np.where(valid, piece, 0).sum(axis=(1, 2))
                    squares[modality] += np.where(valid, piece.astype(np.float64) ** 2, 0).sum(axis=(1, 2))
                    counts[modality] += valid.sum(axis=(1, 2))
            write_tile(prepared.label_dir / f"{tile_id}.tif", label[None, row:row + tile_size, col:col + tile_size],
                       transform, crs, window, "int16")
            prepared.tiles[split].append(tile_id)
    for modality in modalities:
        mean = sums[modality] / np.maximum(counts[modality], 1)
        var = squares[modality] / np.maximum(counts[modality], 1) - mean**2
        prepared.means[modality] = [round(float(v), 4) for v in mean]
        prepared.stds[modality] = [round(float(v), 4) for v in np.sqrt(np.maximum(var, 1e-12))]
    for split in SPLITS:
        prepared.split_file(split).write_text("".join(f"{t}\n" for t in prepared.tiles[split]))
    prepared.save()
    return prepared


def datamodule_init_args(prepared: PreparedData, batch_size: int) -> dict:
    """Arguments of TerraTorch's GenericMultiModalDataModule over the prepared tiles."""
    roots = {m: str(prepared.modality_dir(m)) for m in prepared.modalities}
    args = {
        "task": "segmentation",
        "batch_size": batch_size,
        "num_workers": 0,
        "modalities": prepared.modalities,
        "means": prepared.means,
        "stds": prepared.stds,
        "num_classes": prepared.num_classes,
        "image_grep": {m: ".tif" for m in prepared.modalities},
        "label_grep": ".tif",
        "allow_substring_file_names": False,
        "no_data_replace": 0.0,
        "no_label_replace": IGNORE_INDEX,
        "drop_last": True,
        "rgb_indices": {prepared.modalities[-1]: [3, 2, 1]},
    }
    for split in SPLITS:
        if prepared.tiles.get(split):
            args[f"{split}_data_root"] = roots
            args[f"{split}_label_data_root"] = str(prepared.label_dir)
            args[f"{split}_split"] = str(prepared.split_file(split))
    return args


def read_label_tiles(prepared: PreparedData, split: str) -> np.ndarray:
    labels = []
    for tile_id in prepared.tiles[split]:
        with rasterio.open(prepared.label_dir / f"{tile_id}.tif") as src:
            labels.append(src.read(1))
    return np.stack(labels)
