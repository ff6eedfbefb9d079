"""The data side of a base config (search/data/base_config.py): shapes, splits and baseline tiles from the
user's own datamodule.

The datamodule is built exactly as the config says and asked for its batches: the first training
batch gives the modalities, band counts and input size the estimator and the backbones need (not
asked for again); the validation and test loaders, as the datamodule defines them, are copied once
into the run's tile folder, so the baselines score the very batches the trials are validated and
tested on (train: a bounded sample, to fit the pixel classifier). The images are what the
datamodule yields, normalised; a fixed-dB threshold therefore does not apply (Otsu's still does).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rasterio
from rasterio.windows import Window

from em_backbones.bands import MODALITY_BANDS
from search.data.base_config import BaseConfigError, instantiate
from search.data.tiles import IGNORE_INDEX, SPLITS, PreparedData, class_histogram, write_tile

TRAIN_SAMPLE_BATCHES = 16  # training batches copied for the baselines' fit


def split_loaders(datamodule) -> dict[str, Any]:
    datamodule.setup("fit")
    loaders = {"train": datamodule.train_dataloader(), "val": datamodule.val_dataloader()}
    try:
        datamodule.setup("test")
        loaders["test"] = datamodule.test_dataloader()
    except Exception:  # noqa: BLE001 - a datamodule without a test split: the held-out stage is skipped
        pass
    return loaders


def check_modalities(source: str, image: Any) -> dict[str, int]:
    """{modality: bands} of a batch; a tensor or an unknown modality is refused in one line."""
    if not isinstance(image, dict):
        raise BaseConfigError(f"base {source}: data: the datamodule yields one image tensor; the backbones need a "
                              "mapping of modalities (e.g. terratorch.datamodules.GenericMultiModalDataModule)")
    bands = {}
    for modality, tensor in image.items():
        if modality not in MODALITY_BANDS:
            raise BaseConfigError(f"base {source}: data.init_args.modalities: {modality!r} is not a modality the "
                                  f"backbones take ({', '.join(sorted(MODALITY_BANDS))})")
        if tensor.shape[1] != len(MODALITY_BANDS[modality]):
            raise BaseConfigError(f"base {source}: data: {modality} batches have {tensor.shape[1]} bands, the "
                                  f"backbones expect {len(MODALITY_BANDS[modality])} ({', '.join(MODALITY_BANDS[modality])})")
        bands[modality] = int(tensor.shape[1])
    return bands


def prepare_from_base(base: dict[str, Any], source: str, root: Path, warn: Callable[[str], None]) -> PreparedData:
    """Shapes from one training batch; val/test (and a train sample) copied as tiles for the baselines."""
    model_args = base["model"]["init_args"]["model_args"]
    num_classes = int(model_args["num_classes"])
    ignore = base["model"]["init_args"].get("ignore_index")
    loaders = split_loaders(instantiate(base["data"]))
    first = next(iter(loaders["train"]))
    modalities = list(check_modalities(source, first["image"]))
    prepared = PreparedData(root=root, modalities=modalities, num_classes=num_classes,
                            splits={s: [] for s in SPLITS}, tiles={s: [] for s in SPLITS},
                            tile_size=int(next(iter(first["image"].values())).shape[-1]), base=base,
                            base_dir=str(Path.cwd()))
    sums = {m: np.zeros((3, len(MODALITY_BANDS[m]))) for m in modalities}
    for folder in [prepared.modality_dir(m) for m in modalities] + [prepared.label_dir]:
        folder.mkdir(parents=True, exist_ok=True)
    for split, loader in loaders.items():
        prepared.class_pixels[split] = [0] * num_classes
        for number, batch in enumerate(loader):
            if split == "train" and number >= TRAIN_SAMPLE_BATCHES:
                break
            copy_batch(prepared, split, batch, ignore, sums)
        prepared.splits[split] = list(prepared.tiles[split])
    for m, (total, squares, count) in sums.items():
        mean = total / np.maximum(count, 1)
        prepared.means[m] = mean.tolist()
        prepared.stds[m] = np.sqrt(np.maximum(squares / np.maximum(count, 1) - mean**2, 0)).tolist()
    if not prepared.tiles["val"]:
        raise BaseConfigError(f"base {source}: data: the datamodule's validation loader yields no batch")
    warn(f"base {source}: {', '.join(f'{m} ({len(MODALITY_BANDS[m])} bands)' for m in modalities)}, "
         f"{prepared.tile_size} px; tiles " + ", ".join(f"{s} {len(prepared.tiles[s])}" for s in SPLITS))
    prepared.save()
    return prepared


def copy_batch(prepared: PreparedData, split: str, batch: dict[str, Any], ignore: int | None,
               sums: dict[str, np.ndarray]) -> None:
    """Each sample of a batch as tiles (every modality and the label, ignored pixels as IGNORE_INDEX)."""
    masks = batch["mask"].numpy().astype(np.int64)
    if ignore is not None:
        masks = np.where(masks == ignore, IGNORE_INDEX, masks)
    masks = np.where((masks < 0) | (masks >= prepared.num_classes), IGNORE_INDEX, masks)
    size = masks.shape[-1]
    window = Window(0, 0, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        for i, mask in enumerate(masks):
            tile_id = f"{split}-{len(prepared.tiles[split]):06d}"
            for modality in prepared.modalities:
                array = batch["image"][modality][i].float().numpy()
                write_tile(prepared.modality_dir(modality) / f"{tile_id}.tif", array, rasterio.Affine.identity(),
                           None, window, "float32")
                flat = array.reshape(array.shape[0], -1)
                sums[modality] += np.stack([flat.sum(1), (flat**2).sum(1), np.full(flat.shape[0], flat.shape[1])])
            write_tile(prepared.label_dir / f"{tile_id}.tif", mask[None], rasterio.Affine.identity(), None, window,
                       "int16")
            prepared.tiles[split].append(tile_id)
            counts = class_histogram(mask[None], prepared.num_classes)
            prepared.class_pixels[split] = [a + int(b) for a, b in zip(prepared.class_pixels[split], counts)]
