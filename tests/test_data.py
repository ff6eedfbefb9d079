"""Real chips → tiles split by chip; malformed chips are refused with the file named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio

from search.data import DataError, PreparedData, datamodule_init_args, prepare
from tests.conftest import TEST_CHIP, VAL_CHIP


def _prepare(root, out, **kw):
    args = dict(layout="terramesh", modalities=["S1RTC", "S2L2A"], num_classes=10, tile_size=112,
                val_chips=[VAL_CHIP], test_chips=[TEST_CHIP], seed=0)
    args.update(kw)
    return prepare(root, out=out, **args)


def test_tiles_are_split_by_chip(real_chips, tmp_path):
    prepared = _prepare(real_chips, tmp_path / "data")
    assert prepared.splits["val"] == [VAL_CHIP] and prepared.splits["test"] == [TEST_CHIP]
    assert len(prepared.splits["train"]) == 3
    chip_of = {split: {t.split("__")[0] for t in tiles} for split, tiles in prepared.tiles.items()}
    assert chip_of["train"].isdisjoint(chip_of["val"]) and chip_of["val"].isdisjoint(chip_of["test"])
    assert chip_of["train"].isdisjoint(chip_of["test"])
    # 224 px chips → four 112 px tiles each, every tile of a chip in the chip's split
    assert {split: len(t) for split, t in prepared.tiles.items()} == {"train": 12, "val": 4, "test": 4}
    with rasterio.open(prepared.modality_dir("S2L2A") / f"{prepared.tiles['val'][0]}.tif") as src:
        assert (src.count, src.height, src.width) == (12, 112, 112)
    split_file = prepared.split_file("val").read_text().split()
    assert split_file == prepared.tiles["val"]


def test_statistics_come_from_training_chips_only(real_chips, tmp_path):
    prepared = _prepare(real_chips, tmp_path / "data")
    train_vv = []
    for chip in prepared.splits["train"]:
        with rasterio.open(real_chips / "S1RTC" / f"{chip}.tif") as src:
            train_vv.append(src.read(1))
    assert prepared.means["S1RTC"][0] == pytest.approx(float(np.mean(train_vv)), abs=1e-3)
    assert PreparedData.load(prepared.root).means == prepared.means


def test_datamodule_reads_tiles_with_terratorch(real_chips, tmp_path):
    from terratorch.datamodules import GenericMultiModalDataModule

    prepared = _prepare(real_chips, tmp_path / "data")
    dm = GenericMultiModalDataModule(**datamodule_init_args(prepared, batch_size=4))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"]["S1RTC"].shape == (4, 2, 112, 112)
    assert batch["image"]["S2L2A"].shape == (4, 12, 112, 112)
    assert batch["mask"].shape == (4, 112, 112) and int(batch["mask"].max()) < 10


def test_split_by_seed_when_chips_are_not_named(real_chips, tmp_path):
    a = _prepare(real_chips, tmp_path / "a", val_chips=[], test_chips=[], seed=3)
    b = _prepare(real_chips, tmp_path / "b", val_chips=[], test_chips=[], seed=3)
    assert a.splits == b.splits and len(a.splits["val"]) == 1 and len(a.splits["test"]) == 1


def _copy_chips(real_chips, dst):
    for folder in ("S1RTC", "S2L2A", "LULC"):
        shutil.copytree(real_chips / folder, dst / folder, copy_function=shutil.copyfile)
    return dst


def _rewrite(path, array, dtype="float32"):
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(count=array.shape[0], height=array.shape[1], width=array.shape[2], dtype=dtype)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype))


def test_wrong_band_count_names_the_file(real_chips, tmp_path):
    root = _copy_chips(real_chips, tmp_path / "chips")
    bad = root / "S1RTC" / f"{VAL_CHIP}.tif"
    _rewrite(bad, np.zeros((3, 224, 224)))
    with pytest.raises(DataError, match=rf"{bad}: S1RTC needs 2 bands, found 3"):
        _prepare(root, tmp_path / "data")


def test_label_size_mismatch_names_the_file(real_chips, tmp_path):
    root = _copy_chips(real_chips, tmp_path / "chips")
    bad = root / "LULC" / f"{VAL_CHIP}.tif"
    _rewrite(bad, np.zeros((1, 200, 224)), dtype="uint8")
    with pytest.raises(DataError, match=r"label is 200x224 but S1RTC is 224x224"):
        _prepare(root, tmp_path / "data")


def test_all_nan_chip_is_refused(real_chips, tmp_path):
    root = _copy_chips(real_chips, tmp_path / "chips")
    bad = root / "S1RTC" / f"{TEST_CHIP}.tif"
    _rewrite(bad, np.full((2, 224, 224), np.nan))
    with pytest.raises(DataError, match="every pixel is NaN"):
        _prepare(root, tmp_path / "data")


def test_missing_modality_folder_and_missing_root(real_chips, tmp_path):
    root = _copy_chips(real_chips, tmp_path / "chips")
    with pytest.raises(DataError, match="lacks the folder S2L1C/"):
        _prepare(root, tmp_path / "data", modalities=["S1RTC", "S2L1C"])
    with pytest.raises(DataError, match="is not a directory"):
        _prepare(tmp_path / "absent", tmp_path / "data2")


def test_sen1floods11_layout(real_chips, tmp_path):
    """The real chips renamed the Sen1Floods11 way (S1 VV/VH, 13-band L1C, -1 = no label)."""
    root = tmp_path / "s1f11"
    for sub in ("S1Hand", "S2Hand", "LabelHand"):
        (root / sub).mkdir(parents=True)
    chips = sorted(p.stem for p in (real_chips / "LULC").glob("*.tif"))
    for chip in chips:
        shutil.copyfile(real_chips / "S1RTC" / f"{chip}.tif", root / "S1Hand" / f"{chip}_S1Hand.tif")
        shutil.copyfile(real_chips / "S2L1C" / f"{chip}.tif", root / "S2Hand" / f"{chip}_S2Hand.tif")
        with rasterio.open(real_chips / "LULC" / f"{chip}.tif") as src:
            water = (src.read().astype(np.int16) == 2).astype(np.int16)  # a 2-class label
        water[:, :10, :] = -1
        label = root / "LabelHand" / f"{chip}_LabelHand.tif"
        shutil.copyfile(real_chips / "LULC" / f"{chip}.tif", label)
        _rewrite(label, water, dtype="int16")
    prepared = prepare(root, "sen1floods11", ["S1GRD", "S2L1C"], 2, 112, tmp_path / "data", [VAL_CHIP], [], 0)
    assert prepared.modalities == ["S1GRD", "S2L1C"]
    assert sum(len(t) for t in prepared.tiles.values()) == 20
    with rasterio.open(prepared.label_dir / f"{prepared.tiles['val'][0]}.tif") as src:
        assert src.read().min() == -1
