"""Per-chip confusion matrices of a trial's test pass: what lets every method be compared chip by chip.

TerraTorch's test step pools its mIoU over the whole split. The held-out stage also needs each
test chip's own confusion matrix (search/outcome/comparison.py pairs methods on the same chips),
so this callback predicts each test batch again, as TerraTorch's own test step does
(`to_segmentation_prediction` of the task's output, after the datamodule's normalisation), and
adds each sample's confusion to its chip: the chip is the tile's file name up to `__` (the
project's tiles are `<chip>__r<row>_c<col>`), or the whole file name for a user's own datamodule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from terratorch.tasks.segmentation_tasks import to_segmentation_prediction

from search.data.tiles import IGNORE_INDEX, chip_of_tile


def chip_of(filename: Any) -> str:
    """The chip a sample's file belongs to."""
    return chip_of_tile(Path(str(filename)).name.split(".")[0])


def sample_files(batch: dict[str, Any], size: int) -> list[str]:
    """One file name per sample: TerraTorch's `filename` is a list, or per modality a list (the mask's first)."""
    names = batch.get("filename")
    if isinstance(names, dict):
        names = names.get("mask") or next(iter(names.values()))
    return [str(n) for n in names] if names is not None else [f"sample{i}" for i in range(size)]


class ChipConfusion(pl.Callback):
    """Sums each test chip's confusion matrix (rows true class, columns predicted) over the test pass."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrices: dict[str, torch.Tensor] = {}

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        rest = {k: v for k, v in batch.items() if k not in ("image", "mask", "filename")}
        with torch.no_grad():
            predicted = to_segmentation_prediction(pl_module(batch["image"], **rest)).cpu()
        target = pl_module.squeeze_ground_truth(batch["mask"]).cpu()
        for name, pred, true in zip(sample_files(batch, len(target)), predicted, target):
            valid = true != IGNORE_INDEX
            index = true[valid].long() * self.num_classes + pred[valid].long()
            counts = torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)
            chip = chip_of(name)
            self.matrices[chip] = self.matrices.get(chip, torch.zeros_like(counts)) + counts

    def as_lists(self) -> dict[str, list[list[int]]]:
        return {chip: matrix.tolist() for chip, matrix in sorted(self.matrices.items())}
