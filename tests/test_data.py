"""Real chips → tiles split by chip; malformed chips are refused with the file named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from search.data.chips import BadChip
from search.data.datamodule import datamodule_init_args
from search.data.spec import DataSpec
from search.data.splits import make_folds, split_chips
from search.data.tiles import DataError, PreparedData, prepare
from tests.conftest import TEST_CHIP, VAL_CHIP


def _prepare(root, out, seed=0, warn=lambda line: None, **kw):
    args = dict(root=str(root), layout="terramesh", modalities=("S1RTC", "S2L2A"), num_classes=10, tile_size=112,
                val_chips=(VAL_CHIP,), test_chips=(TEST_CHIP,))
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})
    return prepare(DataSpec(**args), out, seed, warn=warn)


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
    assert a.splits == b.splits and len(a.splits["val"]) == 1 and "test" not in a.splits  # nothing kept out


def hist(*shares: float, pixels: int = 1000) -> np.ndarray:
    return np.array([round(s * pixels) for s in shares], dtype=np.int64)


TEN_SHARES = [0.0, 0.0, 0.0, 0.02, 0.05, 0.3, 0.45, 0.5, 0.67, 0.9]


def test_unnamed_validation_holds_several_chips_with_every_class_in_the_datas_proportions():
    """Ten chips of a two-class task, water share 0..0.9: validation (and, when asked, chips kept out) get two chips
    each, both classes, water shares near the whole data's (0.29); a water-free validation would rank nothing."""
    histograms = {f"chip{i}": hist(1 - w, w) for i, w in enumerate(TEN_SHARES)}
    overall = sum(histograms.values())
    assert [len(v) for v in split_chips(histograms, [], [], 0).values()] == [8, 2]  # train, val: nothing kept out
    for seed in range(5):
        splits = split_chips(histograms, [], [], seed, test_fraction=0.2)
        assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
        for split, chips in splits.items():
            total = sum(histograms[c] for c in chips)
            assert (total > 0).all(), (seed, split, chips)  # both classes in every split
            if split != "train":
                assert abs(total[1] / total.sum() - overall[1] / overall.sum()) < 0.06, (seed, split, chips)


def test_named_chips_stay_where_they_are_named_and_the_rest_is_chosen():
    histograms = {f"chip{i}": hist(0.5, 0.5) for i in range(6)}
    splits = split_chips(histograms, ["chip3"], [], seed=0, test_fraction=0.2)
    assert splits["val"] == ["chip3"] and len(splits["test"]) == 1 and "chip3" not in splits["train"]


@pytest.mark.parametrize("folds", [2, 3, 5, 10, 20])
def test_every_usable_chip_is_in_exactly_one_test_fold_and_every_fold_trains_on_every_class(folds):
    histograms = {f"chip{i}": hist(1 - w, w) for i, w in enumerate(TEN_SHARES)}
    made = make_folds(histograms, folds, seed=0)
    k = min(folds, 10)
    assert len(made) == k
    tested = [chip for fold in made for chip in fold["test"]]
    assert sorted(tested) == sorted(histograms) and len(tested) == len(set(tested))  # each chip once
    assert {len(fold["test"]) for fold in made} <= {10 // k, -(-10 // k)}  # sizes differ by at most one
    for fold in made:
        assert set(fold["train"]) == set(histograms) - set(fold["test"])
        assert (sum(histograms[c] for c in fold["train"]) > 0).all()  # water and land to learn from
    assert make_folds(histograms, folds, seed=0) == made  # the seed decides, nothing else


def test_folds_are_stratified_by_class_share_not_dealt_at_random():
    """Of the seeded orders the rule scores, it keeps the one whose test folds' water shares are closest to the
    whole data's: closer than a plain deal of the same chips in id order."""
    histograms = {f"chip{i}": hist(1 - w, w) for i, w in enumerate(TEN_SHARES)}
    overall = sum(histograms.values())

    def distance(tests):
        return sum(abs(sum(histograms[c] for c in test)[1] / sum(histograms[c] for c in test).sum()
                       - overall[1] / overall.sum()) for test in tests)

    chosen = [fold["test"] for fold in make_folds(histograms, 5, seed=0)]
    in_id_order = [[f"chip{i}", f"chip{i + 1}"] for i in range(0, 10, 2)]
    assert distance(chosen) < 0.5 * distance(in_id_order)


def test_too_few_chips_for_folds_is_one_line():
    with pytest.raises(DataError, match=r"^evaluation.folds: 1 usable chip\(s\) cannot be split into test folds"):
        make_folds({"a": hist(0.5, 0.5)}, 5, seed=0)


def test_a_split_that_ends_up_empty_is_one_line(real_chips, tmp_path):
    with pytest.raises(DataError, match=r"^data: need at least one training and one validation chip; 2 usable "
                                        r"chip\(s\) give train 0, val 1, test 1$"):
        split_chips({"a": hist(1, 0), "b": hist(0, 1)}, ["a"], ["b"], seed=0)


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


BAD_CHIPS = [  # (folder, how to break the chip, the reason a warning line gives)
    ("S1RTC", lambda p: _rewrite(p, np.zeros((3, 224, 224))), "S1RTC needs 2 bands, found 3"),
    ("LULC", lambda p: _rewrite(p, np.zeros((1, 200, 224)), dtype="uint8"), "label is 200x224 but S1RTC is 224x224"),
    ("S1RTC", lambda p: _rewrite(p, np.full((2, 224, 224), np.nan)), "every pixel is NaN"),
    ("LULC", lambda p: _rewrite(p, np.full((1, 224, 224), -1), dtype="int16"), "no labelled pixel"),
    ("LULC", lambda p: _rewrite(p, np.full((1, 224, 224), 12), dtype="int16"), "label value 12 >= data.num_classes=10"),
    ("S2L2A", lambda p: p.unlink(), "missing; the chip has a label but not this modality"),
]


@pytest.mark.parametrize("folder, damage, reason", BAD_CHIPS)
def test_a_bad_chip_is_skipped_with_one_warning_naming_file_and_reason(real_chips, tmp_path, folder, damage, reason):
    root = _copy_chips(real_chips, tmp_path / "chips")
    bad = root / folder / "282D_485L_3_3.tif"  # a training chip: the named val/test chips stay
    damage(bad)
    warnings: list[str] = []
    prepared = _prepare(root, tmp_path / "data", warn=warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipping chip 282D_485L_3_3: ")
    assert reason in warnings[0] and str(root) in warnings[0]
    assert [b["chip"] for b in prepared.bad_chips] == ["282D_485L_3_3"] and reason in prepared.bad_chips[0]["reason"]
    assert "282D_485L_3_3" not in sum(prepared.splits.values(), [])
    assert not any(t.startswith("282D_485L_3_3") for t in prepared.tiles["train"])
    assert PreparedData.load(prepared.root).bad_chips == prepared.bad_chips  # summary.json and the report read it


@pytest.mark.parametrize("folder, damage, reason", BAD_CHIPS[:3])
def test_on_bad_chip_error_makes_it_fatal(real_chips, tmp_path, folder, damage, reason):
    root = _copy_chips(real_chips, tmp_path / "chips")
    bad = root / folder / "282D_485L_3_3.tif"
    damage(bad)
    with pytest.raises(BadChip) as err:
        _prepare(root, tmp_path / "data", on_bad_chip="error")
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_a_named_chip_that_is_bad_is_one_line(real_chips, tmp_path):
    root = _copy_chips(real_chips, tmp_path / "chips")
    _rewrite(root / "S1RTC" / f"{VAL_CHIP}.tif", np.full((2, 224, 224), np.nan))
    with pytest.raises(DataError, match=rf"data.val_chips/test_chips: chip '{VAL_CHIP}' is unusable \(every pixel"):
        _prepare(root, tmp_path / "data", warn=lambda line: None)


def test_tiles_without_a_labelled_pixel_are_dropped(real_chips, tmp_path):
    root = _copy_chips(real_chips, tmp_path / "chips")
    label = root / "LULC" / "282D_485L_3_3.tif"
    with rasterio.open(label) as src:
        values = src.read().astype(np.int16)
    values[:, :112, :112] = -1  # one of the chip's four 112 px tiles has no label
    _rewrite(label, values, dtype="int16")
    prepared = _prepare(root, tmp_path / "data")
    assert prepared.unlabelled_tiles == 1 and "282D_485L_3_3__r0_c0" not in prepared.tiles["train"]
    assert len(prepared.tiles["train"]) == 11


def test_missing_modality_folder_and_missing_root(real_chips, tmp_path):
    root = _copy_chips(real_chips, tmp_path / "chips")
    with pytest.raises(DataError, match="lacks the folder S2L1C/"):  # a layout problem, not one bad chip: fatal
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
    prepared = prepare(DataSpec(str(root), "sen1floods11", ("S1GRD", "S2L1C"), 2, 112, (VAL_CHIP,)), tmp_path / "data", 0)
    assert prepared.modalities == ["S1GRD", "S2L1C"]
    assert sum(len(t) for t in prepared.tiles.values()) == 20 - prepared.unlabelled_tiles
    with rasterio.open(prepared.label_dir / f"{prepared.tiles['val'][0]}.tif") as src:
        assert src.read().min() == -1


def test_packaged_flood_sample_skips_its_two_unusable_chips(tmp_path):
    """The packaged Sen1Floods11 copy: 12 real chips, Paraguay's S1 all NaN and Ghana_83483 unlabelled."""
    from search.data.tiles import sample_root

    warnings: list[str] = []
    prepared = prepare(DataSpec(str(sample_root("sen1floods11")), "sen1floods11", ("S1GRD",), 2, 128),
                       tmp_path / "data", 0, folds=5, warn=warnings.append)
    assert sorted((b["chip"], b["reason"]) for b in prepared.bad_chips) == [
        ("Ghana_83483", "no labelled pixel (every label is -1/no data)"),
        ("Paraguay_34417", "every pixel is NaN/no-data")]
    assert len(warnings) == 2
    assert sum(len(v) for v in prepared.splits.values()) == 10
    assert [len(prepared.splits[s]) for s in ("train", "val")] == [8, 2]
    for split in ("train", "val"):
        assert all(v > 0 for v in prepared.class_pixels[split]), split  # water and land in both
    # The held-out folds: the ten usable chips, each tested once, two per fold.
    assert sorted(c for fold in prepared.folds for c in fold["test"]) == sorted(prepared.chip_tiles)
    assert [len(fold["test"]) for fold in prepared.folds] == [2] * 5


def test_a_folds_datamodule_is_normalised_by_that_folds_training_chips_only(tmp_path):
    from search.data.tiles import sample_root

    prepared = prepare(DataSpec(str(sample_root("sen1floods11")), "sen1floods11", ("S1GRD",), 2, 128),
                       tmp_path / "data", 0, folds=5, warn=lambda line: None)
    for k, fold in enumerate(prepared.folds):
        args = datamodule_init_args(prepared, 4, fold=k)
        vv = []
        for tile in Path(args["train_split"]).read_text().split():
            assert tile.split("__")[0] in fold["train"]
            with rasterio.open(prepared.modality_dir("S1GRD") / f"{tile}.tif") as src:
                vv.append(src.read(1))
        assert args["means"]["S1GRD"][0] == pytest.approx(float(np.nanmean(np.stack(vv))), abs=1e-3)
        assert {t.split("__")[0] for t in Path(args["test_split"]).read_text().split()} == set(fold["test"])
    assert len({tuple(datamodule_init_args(prepared, 4, fold=k)["means"]["S1GRD"]) for k in range(5)}) == 5
