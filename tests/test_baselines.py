"""Baselines: each scored on hand-made tiles whose answer is known, with the metric TerraTorch reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torchmetrics.classification import MulticlassJaccardIndex

from search.data.tiles import IGNORE_INDEX, PreparedData
from search.outcome.baselines import (
    FIXED_VV_THRESHOLD_DB,
    PEEKING,
    BaselineScore,
    accuracy_floor,
    fold_baselines,
    search_baselines,
)
from search.outcome.metrics import confusion, mean_iou


def torchmetrics_miou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """What TerraTorch's SemanticSegmentationTask logs as val/mIoU."""
    metric = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=IGNORE_INDEX, average="macro")
    return float(metric(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target.astype(np.int64))))


@pytest.mark.parametrize("num_classes, seed", [(2, 0), (10, 1), (10, 2), (4, 3)])
def test_numpy_miou_equals_torchmetrics_including_absent_classes_and_ignored_pixels(num_classes, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(-1, num_classes, size=(3, 40, 40))
    target[target == num_classes - 1] = 0  # the last class never appears in the labels...
    pred = rng.integers(0, num_classes - 1, size=(3, 40, 40))  # ...nor in the predictions: it must not count
    ours = mean_iou(confusion(pred, target, num_classes))
    assert ours == pytest.approx(torchmetrics_miou(pred, target, num_classes), abs=1e-6)


def test_miou_by_hand():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, -1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 0]])
    # class 0: tp 3, fp 1 (the 1 predicted 0), fn 1 → 3/5; class 1: tp 2, fp 1, fn 1 → 2/4; the -1 pixel ignored
    assert mean_iou(confusion(pred, target, 2)) == pytest.approx((3 / 5 + 2 / 4) / 2)


def write_tiles(root: Path, tiles: dict[str, tuple[np.ndarray, np.ndarray]], split_of: dict[str, str]) -> PreparedData:
    """A prepared-data folder of S1GRD tiles (VV, VH in dB) with their labels."""
    prepared = PreparedData(root=root, modalities=["S1GRD"], num_classes=2, splits={}, tiles={"train": [], "val": [],
                            "test": []}, means={"S1GRD": [-12.0, -19.0]}, stds={"S1GRD": [4.0, 5.0]})
    prepared.modality_dir("S1GRD").mkdir(parents=True)
    prepared.label_dir.mkdir(parents=True)
    counts = {s: np.zeros(2, dtype=np.int64) for s in ("train", "val", "test")}
    for tile_id, (image, label) in tiles.items():
        for folder, array, dtype in ((prepared.modality_dir("S1GRD"), image, "float32"),
                                     (prepared.label_dir, label[None], "int16")):
            with rasterio.open(folder / f"{tile_id}.tif", "w", driver="GTiff", height=array.shape[1],
                               width=array.shape[2], count=array.shape[0], dtype=dtype,
                               transform=from_origin(0, 0, 10, 10)) as dst:  # a 10 m grid
                dst.write(array.astype(dtype))
        split = split_of[tile_id]
        prepared.tiles[split].append(tile_id)
        counts[split] += np.bincount(label[label >= 0], minlength=2)
    prepared.class_pixels = {s: [int(v) for v in c] for s, c in counts.items()}
    return prepared


def water_tile(water_db: float, land_db: float, rows_of_water: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top rows water (label 1) around `water_db` VV, the rest land (label 0) around `land_db` (seeded ±1 dB
    speckle, far from the other class); VH 7 dB lower."""
    label = np.zeros((size, size), dtype=np.int16)
    label[:rows_of_water] = 1
    speckle = np.clip(np.random.default_rng(int(-water_db * 10)).normal(0, 1, (size, size)), -2, 2)
    vv = (np.where(label == 1, water_db, land_db) + speckle).astype(np.float32)
    return np.stack([vv, vv - 7.0]), label


def test_each_baseline_scores_what_the_hand_made_tiles_say(tmp_path):
    # Training: water at -20/-21 dB, land at -8/-9 dB (water is the minority class, 4 of 16 rows).
    # Validation: the same physics, clearer (-23 / -6 dB) → every threshold and the per-pixel classifier is perfect.
    # Test: water at -11 dB (at most -13), brighter than -13.45 dB, so the fixed threshold misses it all.
    tiles = {"t0": water_tile(-20, -8, 4), "t1": water_tile(-21, -9, 4),
             "v0": water_tile(-23, -6, 8), "s0": water_tile(-11, -3, 8)}
    prepared = write_tiles(tmp_path / "data", tiles, {"t0": "train", "t1": "train", "v0": "val", "s0": "test"})
    scores = {b.name: b for b in search_baselines(prepared, seed=0)}

    # Majority of train is land (class 0): on val half the pixels are land → IoU_land 0.5, water absent from
    # the predictions but present in the labels → IoU 0; mIoU 0.25 on val and test alike.
    assert scores["majority (train)"].val_miou == pytest.approx(0.25)
    assert scores["majority (train)"].test_miou == pytest.approx(0.25)
    # Validation's own majority: 8 water rows vs 8 land rows tie → class 0 (argmax takes the first).
    assert scores["best constant (val)"].val_miou == pytest.approx(0.25)
    fixed = scores[f"VV threshold {FIXED_VV_THRESHOLD_DB} dB"]
    assert fixed.val_miou == pytest.approx(1.0) and fixed.detail == "class 1 below"
    # Test water at -11 dB is above -13.45: everything is predicted land → land IoU 0.5, water IoU 0.
    assert fixed.test_miou == pytest.approx(0.25)
    otsu = scores["VV threshold (Otsu)"]
    assert otsu.val_miou == pytest.approx(1.0)  # Otsu: between the training clusters (-20/-21 and -8/-9 dB)
    assert -20 < float(otsu.detail.split("below ")[1].split(" ")[0]) < -9
    assert scores["pixel classifier"].val_miou == pytest.approx(1.0)


def test_threshold_baselines_only_for_two_class_sar(tmp_path):
    prepared = write_tiles(tmp_path / "data", {"t0": water_tile(-20, -8, 4), "v0": water_tile(-19, -7, 8)},
                           {"t0": "train", "v0": "val"})
    prepared.num_classes = 3
    prepared.class_pixels = {s: v + [0] for s, v in prepared.class_pixels.items()}
    names = [b.name for b in search_baselines(prepared, seed=0)]
    assert names == ["majority (train)", PEEKING, "pixel classifier"]


def test_the_floor_is_the_best_fair_baseline_never_the_one_that_peeked_at_validation():
    scores = [BaselineScore("majority (train)", "constant", 0.30, None), BaselineScore(PEEKING, "constant", 0.95, None),
              BaselineScore("pixel classifier", "pixel_classifier", 0.71, None),
              BaselineScore("VV threshold (Otsu)", "failed", None, None)]
    assert accuracy_floor(scores) == (0.71, "pixel classifier")
    assert accuracy_floor([BaselineScore(PEEKING, "constant", 0.9, None)]) is None


def test_fold_baselines_are_fitted_on_each_folds_training_chips_and_scored_per_test_chip(tmp_path):
    # Two folds over four chips (tile ids `<chip>__...`): fold 0 tests chips a and b, fold 1 tests c and d.
    # Chips a..d hold 4, 6, 8, 10 water rows of 16, water dark (-20 dB and below): the fixed threshold is perfect
    # on every chip. Fold 0 trains on c and d, mostly water, so its majority constant is water, fitted on that
    # fold's chips only (on a and b together land is the majority).
    tiles = {f"{chip}__r0_c0": water_tile(-20 - i, -8, 4 + 2 * i) for i, chip in enumerate("abcd")}
    prepared = write_tiles(tmp_path / "data", tiles, {tile: "train" for tile in tiles})
    prepared.folds = [{"train": ["c", "d"], "test": ["a", "b"]}, {"train": ["a", "b"], "test": ["c", "d"]}]
    (prepared.root / "splits").mkdir()
    for k, fold in enumerate(prepared.folds):
        for part in ("train", "test"):
            prepared.split_file(f"fold{k}_{part}").write_text("".join(f"{c}__r0_c0\n" for c in fold[part]))
    scores = fold_baselines(prepared, seed=0)
    fixed = scores[f"VV threshold {FIXED_VV_THRESHOLD_DB} dB"]["folds"]
    assert [sorted(fold[0]) for fold in fixed] == [["a", "b"], ["c", "d"]]  # one "seed", test chips only
    for fold in fixed:
        for chip, matrix in fold[0].items():
            assert mean_iou(matrix) == pytest.approx(1.0) and matrix.sum() == 16 * 16
    majority = scores["majority (train)"]["folds"]
    assert matrix_is(majority[0][0]["a"], [[0, 12 * 16], [0, 4 * 16]])  # all water on a: 12 land rows missed
    assert matrix_is(majority[1][0]["c"], [[8 * 16, 0], [8 * 16, 0]])  # fold 1 (trained on a, b): all land
    assert PEEKING not in scores


def matrix_is(matrix: np.ndarray, expected: list[list[int]]) -> bool:
    return np.array_equal(np.asarray(matrix), np.asarray(expected))
