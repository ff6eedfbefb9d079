"""Reference scores a winner must beat, on the same validation and test tiles, with the same metric.

- `majority (train)`: the training split's most common class everywhere (a fair constant), and
  `best constant (val)`: the validation split's own most common class (the best any constant can do
  there; it peeks at validation labels, so it is a ceiling for constants, not a method).
- `VV threshold -13.45 dB` and `VV threshold (Otsu)`: for two-class tasks with Sentinel-1 (water
  mapping), pixels darker than the threshold on VV backscatter get the class that is darker in
  the training tiles. -13.45 dB is the classical fixed value (water IoU 0.375 on Sen1Floods11's
  test split); Otsu's threshold is fitted on the training tiles' VV histogram.
- `pixel classifier`: scikit-learn's histogram gradient boosting on each pixel's band values
  (no spatial context), fitted on a sample of training pixels — the classical per-pixel land-cover
  baseline, and for SAR water a learned multi-band threshold.
The small CNN (the tier-0 reference) trains like a trial, in the held-out stage (search/execution/held_out.py).

The metric is TerraTorch's validation mIoU: torchmetrics' `MulticlassJaccardIndex(average="macro",
ignore_index=-1)` over the whole split, i.e. the mean IoU of the classes that appear in the labels
or the predictions. It is computed here from a confusion matrix with NumPy, so the driver imports
no torch; tests/test_baselines.py checks it against torchmetrics itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import rasterio

from search.data.tiles import IGNORE_INDEX, PreparedData

FIXED_VV_THRESHOLD_DB = -13.45
FIT_TILES = 256  # training tiles read to fit the thresholds and the pixel classifier (a seeded sample)
FIT_PIXELS = 50_000  # training pixels the pixel classifier is fitted on (more: slower, no better here)
Predictor = Callable[[dict[str, np.ndarray]], np.ndarray]  # one tile {modality: [bands, H, W]} → [H, W] classes


@dataclass(frozen=True)
class BaselineScore:
    name: str
    kind: str  # constant | threshold | pixel_classifier | cnn
    val_miou: float | None
    test_miou: float | None
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class; pixels labelled IGNORE_INDEX are left out."""
    valid = target != IGNORE_INDEX
    index = target[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(matrix: np.ndarray) -> float:
    """Macro IoU over the classes present in the labels or the predictions (torchmetrics' rule)."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    present = (matrix.sum(0) + matrix.sum(1)) > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.where(union > 0, tp / np.maximum(union, 1), 0.0)[present]))


def read_tile(prepared: PreparedData, tile_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    images = {}
    for modality in prepared.modalities:
        with rasterio.open(prepared.modality_dir(modality) / f"{tile_id}.tif") as src:
            images[modality] = src.read()
    with rasterio.open(prepared.label_dir / f"{tile_id}.tif") as src:
        return images, src.read(1)


def score(prepared: PreparedData, split: str, predict: Predictor) -> float | None:
    """mIoU of a per-tile predictor over every tile of a split (None when the split is empty)."""
    tiles = prepared.tiles.get(split) or []
    if not tiles:
        return None
    total = np.zeros((prepared.num_classes, prepared.num_classes), dtype=np.int64)
    for tile_id in tiles:
        images, label = read_tile(prepared, tile_id)
        total += confusion(predict(images), label, prepared.num_classes)
    return mean_iou(total)


def fit_sample(prepared: PreparedData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled training pixels of a seeded sample of tiles: features [N, bands] (raw values) and labels [N]."""
    tiles = list(prepared.tiles["train"])
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


def constants(prepared: PreparedData) -> list[BaselineScore]:
    train_class = int(np.argmax(prepared.class_pixels["train"]))
    val_class = int(np.argmax(prepared.class_pixels["val"]))
    return [
        BaselineScore("majority (train)", "constant", score(prepared, "val", constant(train_class)),
                      score(prepared, "test", constant(train_class)), f"class {train_class} everywhere"),
        BaselineScore("best constant (val)", "constant", score(prepared, "val", constant(val_class)),
                      score(prepared, "test", constant(val_class)),
                      f"class {val_class} everywhere (chosen on validation labels: a ceiling for constants)"),
    ]


def s1_modality(prepared: PreparedData) -> str | None:
    return next((m for m in prepared.modalities if m.startswith("S1")), None)


def vv_thresholds(prepared: PreparedData, features: np.ndarray, labels: np.ndarray) -> list[BaselineScore]:
    """Two classes and Sentinel-1: the darker class below a VV threshold (fixed, and Otsu's)."""
    from skimage.filters import threshold_otsu

    sar = s1_modality(prepared)
    if sar is None or prepared.num_classes != 2:
        return []
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
    fitted = [BaselineScore("VV threshold (Otsu)", "threshold", score(prepared, "val", below(otsu)),
                            score(prepared, "test", below(otsu)), f"class {dark} below {otsu:.2f} (fitted on train)")]
    if prepared.base is not None:  # a base config's datamodule yields normalised values: no dB scale to threshold
        return fitted
    return [BaselineScore(f"VV threshold {FIXED_VV_THRESHOLD_DB} dB", "threshold",
                          score(prepared, "val", below(FIXED_VV_THRESHOLD_DB)),
                          score(prepared, "test", below(FIXED_VV_THRESHOLD_DB)), f"class {dark} below"), *fitted]


def pixel_classifier(prepared: PreparedData, features: np.ndarray, labels: np.ndarray, seed: int) -> BaselineScore:
    """Gradient-boosted trees on each pixel's band values (NaN allowed: the trees route missing values)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    if len(labels) > FIT_PIXELS:
        keep = rng.choice(len(labels), FIT_PIXELS, replace=False)
        features, labels = features[keep], labels[keep]
    model = HistGradientBoostingClassifier(max_iter=50, random_state=seed).fit(features, labels)

    def predict(images: dict[str, np.ndarray]) -> np.ndarray:
        stacked = np.concatenate([images[m] for m in prepared.modalities]).astype(np.float32)
        return model.predict(stacked.reshape(stacked.shape[0], -1).T).reshape(stacked.shape[1:])

    return BaselineScore("pixel classifier", "pixel_classifier", score(prepared, "val", predict),
                         score(prepared, "test", predict),
                         f"gradient-boosted trees on {features.shape[1]} band values, {len(labels):,} training pixels")


def compute_baselines(prepared: PreparedData, seed: int) -> list[BaselineScore]:
    """Every non-deep reference on the run's validation and test tiles; one that cannot be fitted is left out
    with its reason in `detail` (the search's results never depend on a baseline)."""
    scores = constants(prepared)
    features, labels = fit_sample(prepared, seed)
    for name, fit in (("VV threshold", lambda: vv_thresholds(prepared, features, labels)),
                      ("pixel classifier", lambda: [pixel_classifier(prepared, features, labels, seed)])):
        try:
            scores += fit()
        except (ValueError, MemoryError) as err:  # e.g. a single class in the training pixels
            scores.append(BaselineScore(name, "failed", None, None, f"could not be fitted: {err}"[:200]))
    return scores
