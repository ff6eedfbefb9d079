"""Prepared tiles → the arguments of TerraTorch's own `GenericMultiModalDataModule` (what best.yaml names).

Training reads the tiles with TerraTorch's stock datamodule, so the exported `best.yaml` trains
under `terratorch fit` with nothing of this project but its backbones.
"""

from __future__ import annotations

from search.data.tiles import IGNORE_INDEX, SPLITS, PreparedData, fold_split


def datamodule_init_args(prepared: PreparedData, batch_size: int, fold: int | None = None) -> dict:
    """Arguments of TerraTorch's GenericMultiModalDataModule over the prepared tiles: the search's train and val
    splits, or one held-out fold (train on its training chips, normalised by their statistics, test on its
    test chips; its val split names the test chips only because the datamodule wants one: a fold's trainer never
    validates, search/plan/terratorch_config.py)."""
    roots = {m: str(prepared.modality_dir(m)) for m in prepared.modalities}
    if fold is None:
        splits = {split: prepared.split_file(split) for split in SPLITS if prepared.tiles.get(split)}
        means, stds = prepared.means, prepared.stds
    else:
        test = prepared.split_file(fold_split(fold, "test"))
        splits = {"train": prepared.split_file(fold_split(fold, "train")), "val": test, "test": test}
        means, stds = prepared.statistics_of(prepared.folds[fold]["train"])
    args = {
        "task": "segmentation",
        "batch_size": batch_size,
        "num_workers": 0,
        "modalities": prepared.modalities,
        "means": means,
        "stds": stds,
        "num_classes": prepared.num_classes,
        "image_grep": {m: ".tif" for m in prepared.modalities},
        "label_grep": "*.tif",  # TerraTorch wants the wildcard; with exact names it strips it
        "allow_substring_file_names": False,
        "no_data_replace": 0.0,
        "no_label_replace": IGNORE_INDEX,
        "drop_last": True,
        # Every tile has the same size by construction; TerraTorch's check re-reads samples per loader.
        "check_stackability": False,
    }
    if any(m.startswith("S2") for m in prepared.modalities):
        args["rgb_indices"] = {next(m for m in prepared.modalities if m.startswith("S2")): [3, 2, 1]}
    for split, path in splits.items():
        args[f"{split}_data_root"] = roots
        args[f"{split}_label_data_root"] = str(prepared.label_dir)
        args[f"{split}_split"] = str(path)
    return args
