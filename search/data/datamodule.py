"""Prepared tiles → the arguments of TerraTorch's own `GenericMultiModalDataModule` (what best.yaml names).

Training reads the tiles with TerraTorch's stock datamodule, so the exported `best.yaml` trains
under `terratorch fit` with nothing of this project but its backbones.
"""

from __future__ import annotations

from search.data.tiles import IGNORE_INDEX, SPLITS, PreparedData


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
        # Every tile has the same size by construction; TerraTorch's check re-reads samples per loader.
        "check_stackability": False,
    }
    if any(m.startswith("S2") for m in prepared.modalities):
        args["rgb_indices"] = {next(m for m in prepared.modalities if m.startswith("S2")): [3, 2, 1]}
    for split in SPLITS:
        if prepared.tiles.get(split):
            args[f"{split}_data_root"] = roots
            args[f"{split}_label_data_root"] = str(prepared.label_dir)
            args[f"{split}_split"] = str(prepared.split_file(split))
    return args
