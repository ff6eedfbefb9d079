"""Sentinel-1 + Sentinel-2 GeoTIFF chips → tiles split by chip → TerraTorch datamodule arguments.

Reading, checking and tiling happen once per run, in the driver, into `<run>/data/`. Training
then reads the tiles with TerraTorch's own `GenericMultiModalDataModule`, so the exported
`best.yaml` names a stock TerraTorch datamodule over files on disk. Splits are by chip: every
tile of a chip lands in the same split, so no chip is seen on both sides.

Bad chips (wrong band count, sizes that disagree, a modality that is all no-data, label values
out of range, no labelled pixel, smaller than a tile, a modality file missing) are skipped with
one warning line each and listed in the prepared data, or are fatal with `data.on_bad_chip:
error`. The run stops only when a split ends up empty. Tiles without a labelled pixel are
dropped: they add nothing to the loss or the metric.

Validation and test chips, when not named, are chosen by the stratified rule of
search/data/splits.py.

Chips are found and read by search/data/chips.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from rasterio.windows import Window

from search.data.chips import IGNORE_INDEX, BadChip, Chip, find_chips, read_chip
from search.data.spec import DataError, DataSpec
from search.data.splits import make_folds, split_chips

SAMPLE_ROOT = Path(__file__).parents[1] / "sample_data"  # one packaged sample of real chips per layout
SAMPLE_DATA = SAMPLE_ROOT / "terramesh"
LABEL_FOLDER = "label"
SPLITS = ("train", "val", "test")


def chip_of_tile(tile_id: str) -> str:
    """The chip a tile was cut from: tiles are `<chip>__r<row>_c<col>`; a base config's copied samples are their
    own "chips"."""
    return tile_id.split("__")[0]


def fold_split(fold: int, part: str) -> str:
    """The split file name of one fold's `train` or `test` chips."""
    return f"fold{fold}_{part}"


def sample_root(layout: str) -> Path:
    """The packaged real chips of a layout (`data.root: null`): TerraMesh land cover or Sen1Floods11 water."""
    return SAMPLE_ROOT / layout


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
    bad_chips: list[dict[str, str]] = field(default_factory=list)  # chip, file, reason
    class_pixels: dict[str, list[int]] = field(default_factory=dict)  # split → labelled pixels per class
    unlabelled_tiles: int = 0  # dropped: no labelled pixel
    tile_size: int | None = None  # set when the tiles come from a base config's datamodule
    base: dict | None = None  # the user's TerraTorch config the trials start from (search/data/base_config.py)
    base_dir: str | None = None  # the directory its relative data paths are relative to (where the run started)
    folds: list[dict[str, list[str]]] = field(default_factory=list)  # held-out stage: train / test chips per fold
    chip_tiles: dict[str, list[str]] = field(default_factory=dict)  # chip → its tile ids
    chip_class_pixels: dict[str, list[int]] = field(default_factory=dict)  # chip → labelled pixels per class
    chip_band_sums: dict[str, dict] = field(default_factory=dict)  # chip → modality → [sum, sum², count] per band

    def split_file(self, split: str) -> Path:
        return self.root / "splits" / f"{split}.txt"

    def statistics_of(self, chip_ids: list[str]) -> tuple[dict, dict]:
        """Normalisation means and stds over these chips' valid pixels (a split's or a fold's training chips)."""
        return band_statistics([self.chip_band_sums[c] for c in chip_ids], self.modalities)

    def modality_dir(self, modality: str) -> Path:
        return self.root / "tiles" / modality

    @property
    def label_dir(self) -> Path:
        return self.root / "tiles" / LABEL_FOLDER

    def save(self) -> None:
        (self.root / "prepared.json").write_text(json.dumps({
            "modalities": self.modalities, "num_classes": self.num_classes, "splits": self.splits,
            "tiles": self.tiles, "means": self.means, "stds": self.stds, "bad_chips": self.bad_chips,
            "class_pixels": self.class_pixels, "unlabelled_tiles": self.unlabelled_tiles,
            "tile_size": self.tile_size, "base": self.base, "base_dir": self.base_dir, "folds": self.folds,
            "chip_tiles": self.chip_tiles, "chip_class_pixels": self.chip_class_pixels,
            "chip_band_sums": self.chip_band_sums,
        }, indent=1))

    @classmethod
    def load(cls, root: Path) -> "PreparedData":
        meta = json.loads((root / "prepared.json").read_text())
        return cls(root=root, **meta)


def class_histogram(label: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]


def tile_windows(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping tiles; a chip smaller than a tile is a bad chip."""
    return [(r, c) for r in range(0, height - tile + 1, tile) for c in range(0, width - tile + 1, tile)]


def write_tile(path: Path, array: np.ndarray, transform, crs, window: Window, dtype: str) -> None:
    profile = {
        "driver": "GTiff", "height": window.height, "width": window.width, "count": array.shape[0],
        "dtype": dtype, "crs": crs, "transform": rasterio.windows.transform(window, transform),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype))


@dataclass
class TiledChip:
    """What tiling one chip left on disk: its tile ids, labelled pixels per class, per-band sums."""

    chip_id: str
    tiles: list[str]
    class_pixels: np.ndarray
    band_sums: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # modality → (sum, sum of squares, count)
    unlabelled_tiles: int


def tile_chip(chip: Chip, num_classes: int, tile_size: int, tiles_root: Path) -> TiledChip:
    """Check one chip, write its labelled tiles (every modality and the label), and summarise them."""
    images, label, transform, crs = read_chip(chip, num_classes, tile_size)
    done = TiledChip(chip.chip_id, [], np.zeros(num_classes, dtype=np.int64),
                     {m: (np.zeros(a.shape[0]), np.zeros(a.shape[0]), np.zeros(a.shape[0])) for m, a in images.items()},
                     0)
    for row, col in tile_windows(*label.shape, tile_size):
        tile_label = label[None, row:row + tile_size, col:col + tile_size]
        if not (tile_label != IGNORE_INDEX).any():
            done.unlabelled_tiles += 1
            continue
        window = Window(col, row, tile_size, tile_size)
        tile_id = f"{chip.chip_id}__r{row}_c{col}"
        for modality, array in images.items():
            piece = array[:, row:row + tile_size, col:col + tile_size]
            write_tile(tiles_root / modality / f"{tile_id}.tif", piece, transform, crs, window, "float32")
            valid = ~np.isnan(piece)
            values = np.where(valid, piece, 0).astype(np.float64)
            for total, part in zip(done.band_sums[modality], (values.sum(axis=(1, 2)), (values**2).sum(axis=(1, 2)),
                                                               valid.sum(axis=(1, 2)))):
                total += part
        write_tile(tiles_root / LABEL_FOLDER / f"{tile_id}.tif", tile_label, transform, crs, window, "int16")
        done.tiles.append(tile_id)
        done.class_pixels += class_histogram(tile_label, num_classes)
    return done


def tile_usable_chips(chips: list[Chip], num_classes: int, tile_size: int, tiles_root: Path, on_bad_chip: str,
                      warn: Callable[[str], None]) -> tuple[dict[str, TiledChip], list[dict[str, str]]]:
    """Tile every chip that passes its checks; the bad ones are listed (or the first raised)."""
    tiled, bad = {}, []
    for chip in chips:
        try:
            done = tile_chip(chip, num_classes, tile_size, tiles_root)
        except BadChip as err:
            if on_bad_chip == "error":
                raise
            bad.append({"chip": err.chip_id, "file": err.path, "reason": err.reason})
            warn(f"warning: skipping chip {err.chip_id}: {err.path}: {err.reason}")
            continue
        tiled[chip.chip_id] = done
    return tiled, bad


def band_statistics(chips: list[dict[str, list[list[float]]]], modalities: list[str]) -> tuple[dict, dict]:
    """Per-band mean and standard deviation over the valid pixels of the given chips (a split's training chips)."""
    means, stds = {}, {}
    for modality in modalities:
        total, squares, count = (sum(np.asarray(chip[modality][i]) for chip in chips) for i in range(3))
        mean = total / np.maximum(count, 1)
        var = squares / np.maximum(count, 1) - mean**2
        means[modality] = [round(float(v), 4) for v in mean]
        stds[modality] = [round(float(v), 4) for v in np.sqrt(np.maximum(var, 1e-12))]
    return means, stds


def write_split(prepared: PreparedData, name: str, chip_ids: list[str]) -> list[str]:
    tiles = [tile for c in chip_ids for tile in prepared.chip_tiles[c]]
    prepared.split_file(name).write_text("".join(f"{t}\n" for t in tiles))
    return tiles


def prepare(spec: DataSpec, out: Path, seed: int, folds: int = 0, warn: Callable[[str], None] = print) -> PreparedData:
    """Check and tile every chip once (skipping bad ones), split by chip (the search's train/val, and `folds`
    test folds over every usable chip), compute training statistics. `spec.root` None: the layout's sample."""
    root = Path(spec.root).expanduser() if spec.root else sample_root(spec.layout)
    modalities, num_classes, tile_size = list(spec.modalities), spec.num_classes, spec.tile_size
    chips = find_chips(root, spec.layout, modalities)
    prepared = PreparedData(root=out, modalities=list(modalities), num_classes=num_classes, splits={})
    for folder in [*(prepared.modality_dir(m) for m in modalities), prepared.label_dir, out / "splits"]:
        folder.mkdir(parents=True, exist_ok=True)
    tiled, prepared.bad_chips = tile_usable_chips(chips, num_classes, tile_size, out / "tiles", spec.on_bad_chip,
                                                  warn)
    skipped = {b["chip"]: b["reason"] for b in prepared.bad_chips}
    for chip_id in [*spec.val_chips, *spec.test_chips]:
        if chip_id in skipped:
            raise DataError(f"data.val_chips/test_chips: chip {chip_id!r} is unusable ({skipped[chip_id]})")
    if not tiled:
        raise DataError(f"data.root: none of the {len(chips)} chips under {root} is usable (all skipped as bad)")
    histograms = {c: t.class_pixels for c, t in tiled.items()}
    prepared.chip_tiles = {c: t.tiles for c, t in tiled.items()}
    prepared.chip_class_pixels = {c: [int(v) for v in t.class_pixels] for c, t in tiled.items()}
    prepared.chip_band_sums = {c: {m: [s.tolist() for s in sums] for m, sums in t.band_sums.items()}
                               for c, t in tiled.items()}
    prepared.splits = split_chips(histograms, list(spec.val_chips), list(spec.test_chips), seed, spec.val_fraction,
                                  spec.test_fraction)
    for split, chip_ids in prepared.splits.items():
        prepared.tiles[split] = write_split(prepared, split, chip_ids)
        prepared.class_pixels[split] = [int(v) for v in sum((tiled[c].class_pixels for c in chip_ids),
                                                            np.zeros(num_classes, dtype=np.int64))]
    if folds:
        prepared.folds = make_folds(histograms, folds, seed)
        for k, fold in enumerate(prepared.folds):
            for part in ("train", "test"):
                write_split(prepared, fold_split(k, part), fold[part])
    prepared.unlabelled_tiles = sum(t.unlabelled_tiles for t in tiled.values())
    prepared.means, prepared.stds = prepared.statistics_of(prepared.splits["train"])
    prepared.save()
    return prepared


def check_batches(prepared: PreparedData, batch_sizes: tuple[int, ...], workers: int) -> None:
    """Every batch size must fill at least one training batch per worker (the loader drops the last, partial one)."""
    per_worker = math.ceil(len(prepared.tiles["train"]) / workers)
    too_big = [b for b in batch_sizes if b > per_worker]
    if too_big:
        raise DataError(f"training.batch_size: {too_big[0]} is more than the {per_worker} training tiles each of "
                        f"{workers} worker(s) gets; use smaller batches, a smaller data.tile_size or more chips")
