"""mIoU as TerraTorch computes it, from confusion matrices with NumPy (the driver imports no torch).

TerraTorch's mIoU is torchmetrics' `MulticlassJaccardIndex(average="macro", ignore_index=-1)`
over a whole split: the mean IoU of the classes that appear in the labels or the predictions;
tests/test_baselines.py checks this against torchmetrics itself.
"""

from __future__ import annotations

import numpy as np

from search.data.tiles import IGNORE_INDEX


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class; pixels labelled IGNORE_INDEX are left out."""
    valid = target != IGNORE_INDEX
    index = target[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(matrix: np.ndarray) -> float:
    """Macro IoU over the classes present in the labels or the predictions (torchmetrics' rule)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    present = (matrix.sum(0) + matrix.sum(1)) > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.where(union > 0, tp / np.maximum(union, 1e-12), 0.0)[present]))
