"""Reference scores a winner must beat, fitted on the same training chips and scored on the same chips.

- `majority (train)`: the training chips' most common class everywhere (a fair constant), and, on
  the search's validation split only, `best constant (val)`: the validation split's own most common
  class (it peeks at validation labels: a ceiling for constants, not a method, so it sets no floor
  and is not cross-validated).
- `VV threshold -13.45 dB` and `VV threshold (Otsu)`: for two-class tasks with Sentinel-1 (water
  mapping), pixels darker than the threshold on VV backscatter (raw dB, as the tiles and a base
  config's copied batches hold it) get the class that is darker in the training tiles. -13.45 dB
  is the classical fixed value (water IoU 0.375 on Sen1Floods11's test split); Otsu's threshold is
  fitted on the training tiles' VV histogram.
- `pixel classifier`: scikit-learn's histogram gradient boosting on each pixel's band values
  (no spatial context), fitted on a sample of training pixels — the classical per-pixel land-cover
  baseline, and for SAR water a learned multi-band threshold.
The small CNN (the tier-0 reference) trains like a trial (search/execution/held_out.py).

Two uses: `search_baselines` fits on the search's training chips and scores its validation split
(before the first trial: the best of them is the accuracy floor a trial must clear to win);
`fold_baselines` fits on each held-out fold's training chips and keeps each test chip's confusion
matrix, so baselines are compared with the winner chip by chip (search/outcome/comparison.py).
The metric is TerraTorch's mIoU (search/outcome/metrics.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import rasterio

from search.data.tiles import IGNORE_INDEX, PreparedData, chip_of_tile, fold_split
from search.imports import import_heavy
from search.outcome.metrics import confusion, mean_iou

FIXED_VV_THRESHOLD_DB = -13.45
FIT_TILES = 256  # training tiles read to fit the thresholds and the pixel classifier (a seeded sample)
FIT_PIXELS = 50_000  # training pixels the pixel classifier is fitted on (more: slower, no better here)
PEEKING = "best constant (val)"  # chosen on validation labels: reported, never a floor or a fold reference
Predictor = Callable[[dict[str, np.ndarray]], np.ndarray]  # one tile {modality: [bands, H, W]} → [H, W] classes


@dataclass(frozen=True)
class BaselineScore:
    name: str
    kind: str  # constant | threshold | pixel_classifier | failed
    val_miou: float | None
    test_miou: float | None
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Fitted:
    """A baseline fitted on some training chips: its predictor, or None with the reason it could not be fitted."""

    name: str
    kind: str
    predict: Predictor | None
    detail: str


def read_tile(prepared: PreparedData, tile_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    images = {}
    for modality in prepared.modalities:
        with rasterio.open(prepared.modality_dir(modality) / f"{tile_id}.tif") as src:
            images[modality] = src.read()
    with rasterio.open(prepared.label_dir / f"{tile_id}.tif") as src:
        return images, src.read(1)


def chip_confusions(prepared: PreparedData, tiles: list[str], predict: Predictor) -> dict[str, np.ndarray]:
    """Each chip's confusion matrix of a per-tile predictor over the given tiles."""
    chips: dict[str, np.ndarray] = {}
    for tile_id in tiles:
        images, label = read_tile(prepared, tile_id)
        chip = chip_of_tile(tile_id)
        chips[chip] = chips.get(chip, 0) + confusion(predict(images), label, prepared.num_classes)
    return chips


def score(prepared: PreparedData, tiles: list[str], predict: Predictor) -> float | None:
    """mIoU of a per-tile predictor over tiles (None when there are none)."""
    chips = chip_confusions(prepared, tiles, predict)
    return mean_iou(sum(chips.values())) if chips else None


def fit_sample(prepared: PreparedData, tiles: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels of a seeded sample of training tiles: features [N, bands] (raw values) and labels [N]."""
    rng = np.random.default_rng(seed)
    if len(tiles) > FIT_TILES:
        tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), FIT_TILES, replace=False))]
    features, labels = [], []
    for tile_id in tiles:
        images, label = read_tile(prepared, tile_id)
        stacked = np.concatenate([images[m] for m in prepared.modalities]).reshape(-1, label.size).T
        keep = label.ravel() != IGNORE_INDEX
        features.append(stacked[keep])
        labels.append(label.ravel()[keep])
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)


def constant(value: int) -> Predictor:
    return lambda images: np.full(next(iter(images.values())).shape[1:], value, dtype=np.int64)


def vv_thresholds(prepared: PreparedData, features: np.ndarray, labels: np.ndarray) -> list[Fitted]:
    """Two classes and Sentinel-1: the darker class below a VV threshold (fixed, and Otsu's)."""
    sar = next((m for m in prepared.modalities if m.startswith("S1")), None)
    if sar is None or prepared.num_classes != 2:
        return []
    threshold_otsu = import_heavy("skimage.filters").threshold_otsu  # 1 s of imports: only where it is used
    band = sum(len(prepared.means[m]) for m in prepared.modalities[:prepared.modalities.index(sar)])  # its VV
    vv = features[:, band]
    finite = np.isfinite(vv)
    means = [vv[finite & (labels == c)].mean() if (finite & (labels == c)).any() else np.inf for c in (0, 1)]
    dark = int(np.argmin(means))

    def below(threshold: float) -> Predictor:
        def predict(images: dict[str, np.ndarray]) -> np.ndarray:
            stacked = np.concatenate([images[m] for m in prepared.modalities])
            return np.where(stacked[band] < threshold, dark, 1 - dark)
        return predict

    otsu = float(threshold_otsu(vv[finite]))
    return [Fitted(f"VV threshold {FIXED_VV_THRESHOLD_DB} dB", "threshold", below(FIXED_VV_THRESHOLD_DB),
                   f"class {dark} below"),
            Fitted("VV threshold (Otsu)", "threshold", below(otsu), f"class {dark} below {otsu:.2f} (fitted on train)")]


def pixel_classifier(prepared: PreparedData, features: np.ndarray, labels: np.ndarray, seed: int) -> Fitted:
    """Gradient-boosted trees on each pixel's band values (NaN allowed: the trees route missing values)."""
    boosted_trees = import_heavy("sklearn.ensemble").HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    if len(labels) > FIT_PIXELS:
        keep = rng.choice(len(labels), FIT_PIXELS, replace=False)
        features, labels = features[keep], labels[keep]
    model = boosted_trees(max_iter=50, random_state=seed).fit(features, labels)

    def predict(images: dict[str, np.ndarray]) -> np.ndarray:
        stacked = np.concatenate([images[m] for m in prepared.modalities]).astype(np.float32)
        return model.predict(stacked.reshape(stacked.shape[0], -1).T).reshape(stacked.shape[1:])

    return Fitted("pixel classifier", "pixel_classifier", predict,
                  f"gradient-boosted trees on {features.shape[1]} band values, {len(labels):,} training pixels")


def fit_baselines(prepared: PreparedData, train_tiles: list[str], seed: int) -> list[Fitted]:
    """Every non-deep baseline fitted on these training tiles; one that cannot be fitted keeps its reason."""
    features, labels = fit_sample(prepared, train_tiles, seed)
    majority = int(np.argmax(np.bincount(labels, minlength=prepared.num_classes)))
    fitted = [Fitted("majority (train)", "constant", constant(majority), f"class {majority} everywhere")]
    for name, fit in (("VV threshold", lambda: vv_thresholds(prepared, features, labels)),
                      ("pixel classifier", lambda: [pixel_classifier(prepared, features, labels, seed)])):
        try:
            fitted += fit()
        except (ValueError, MemoryError) as err:  # e.g. a single class in the training pixels
            fitted.append(Fitted(name, "failed", None, f"could not be fitted: {err}"[:200]))
    return fitted


def search_baselines(prepared: PreparedData, seed: int) -> list[BaselineScore]:
    """The baselines fitted on the search's training chips, scored on its validation split (and a base config's
    own test split, where it has one)."""
    val, test = prepared.tiles.get("val") or [], prepared.tiles.get("test") or []
    scores = [BaselineScore(f.name, f.kind, score(prepared, val, f.predict) if f.predict else None,
                            score(prepared, test, f.predict) if f.predict else None, f.detail)
              for f in fit_baselines(prepared, list(prepared.tiles["train"]), seed)]
    val_class = int(np.argmax(prepared.class_pixels["val"]))
    scores.insert(1, BaselineScore(PEEKING, "constant", score(prepared, val, constant(val_class)),
                                   score(prepared, test, constant(val_class)),
                                   f"class {val_class} everywhere (chosen on validation labels: a ceiling for "
                                   "constants, never a floor)"))
    return scores


def accuracy_floor(baselines: list[BaselineScore]) -> tuple[float, str] | None:
    """The best validation mIoU of a non-deep method (the peeking constant excluded), and whose it is."""
    fair = [(b.val_miou, b.name) for b in baselines if b.val_miou is not None and b.name != PEEKING]
    return max(fair) if fair else None


def fold_tiles(prepared: PreparedData) -> list[tuple[list[str], list[str]]]:
    """(training tiles, test tiles) of each held-out fold; a base config's own split is its one fold."""
    if not prepared.folds:
        return [(list(prepared.tiles["train"]), list(prepared.tiles.get("test") or []))]
    return [(prepared.split_file(fold_split(k, "train")).read_text().split(),
             prepared.split_file(fold_split(k, "test")).read_text().split()) for k in range(len(prepared.folds))]


def fold_baselines(prepared: PreparedData, seed: int) -> dict[str, dict]:
    """name → {kind, detail, folds: [[{chip: confusion}]]}: each baseline fitted on every fold's training chips
    and scored on its test chips (one "seed": they are deterministic given the fold)."""
    out: dict[str, dict] = {}
    for train, test in fold_tiles(prepared):
        for fitted in fit_baselines(prepared, train, seed):
            entry = out.setdefault(fitted.name, {"kind": fitted.kind, "detail": fitted.detail, "folds": []})
            entry["folds"].append([chip_confusions(prepared, test, fitted.predict)] if fitted.predict else None)
    return {name: entry for name, entry in out.items() if all(fold is not None for fold in entry["folds"])}
