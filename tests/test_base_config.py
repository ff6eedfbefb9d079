"""Bring your own TerraTorch config (search/data/base_config.py): the shipped example base configs searched end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from search.__main__ import main
from search.execution.run import run_search
from tests.conftest import REPO, terratorch_fit_fast_dev_run

SEARCHED = ("model.init_args.model_args.backbone", "model.init_args.lr", "data.init_args.batch_size")


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def searched_parts_only(base: dict, best: dict) -> list[str]:
    """Keys whose value differs between the user's config and best.yaml, minus the searched ones."""
    a, b = flatten(base), flatten(best)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    return [k for k in changed if not k.startswith(SEARCHED)]


def search_around(example: str, tmp_path_factory, **overrides):
    space = yaml.safe_load((REPO / "spaces" / example).read_text())
    space["training"].update(overrides.pop("training", {}))
    space.update(overrides)
    tmp = tmp_path_factory.mktemp(example.removesuffix(".yaml"))
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    return run_search(tmp / "space.yaml", tmp / "run"), tmp / "space.yaml"


def lighter_flood_base(tmp_path_factory) -> Path:
    """spaces/base/flood_fit.yaml for one epoch on 128 px crops (the same config otherwise): what the tests search
    around, to spend seconds rather than minutes per trial."""
    config = yaml.safe_load((REPO / "spaces/base/flood_fit.yaml").read_text())
    config["trainer"]["max_epochs"] = 1
    for transforms in ("train_transform", "val_transform", "test_transform"):
        for step in config["data"]["init_args"][transforms]:
            if "Crop" in step["class_path"]:
                step["init_args"] = {"height": 128, "width": 128}
    path = tmp_path_factory.mktemp("base") / "flood_fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def flood_run(tmp_path_factory, embedded_ray):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # the example's data paths are relative to the repository root, as for `terratorch fit`
        base = lighter_flood_base(tmp_path_factory)
        outcome, space_file = search_around("flood_base.yaml", tmp_path_factory, training={"num_samples": 2},
                                            evaluation={"seeds": 2}, base=str(base))
        return outcome, space_file, base


def test_best_yaml_is_the_users_config_with_only_the_searched_parts_replaced(flood_run):
    outcome, _, base_path = flood_run
    base = yaml.safe_load(base_path.read_text())
    best = yaml.safe_load((outcome.out_dir / "best.yaml").read_text())
    assert searched_parts_only(base, best) == []
    args = best["model"]["init_args"]["model_args"]
    assert args["backbone"] in ("em_prithvi", "em_terramind") and args["backbone_modalities"] == ["S1GRD"]
    assert args["backbone_img_size"] == 128  # read from the datamodule's batches (the config's crops)
    assert best["model"]["init_args"]["class_weights"] == [0.3, 0.7]  # the user's loss settings, kept
    terratorch_fit_fast_dev_run(outcome.out_dir / "best.yaml", REPO)  # its data paths are relative to the repository


def test_trials_validate_and_baselines_score_on_the_datamodules_own_splits(flood_run):
    outcome, _, _ = flood_run
    prepared = yaml.safe_load((outcome.out_dir / "data" / "prepared.json").read_text())
    assert len(prepared["tiles"]["val"]) == 2 and len(prepared["tiles"]["test"]) == 2  # the config's split files
    rows = pq.read_table(outcome.out_dir / "results.parquet").to_pylist()
    assert len(rows) == 2 and all(r["val_miou"] > 0 for r in rows)
    summary = yaml.safe_load((outcome.out_dir / "summary.json").read_text())
    names = {b["name"] for b in summary["baselines"]}
    assert {"VV threshold (Otsu)", "VV threshold -13.45 dB"} <= names  # the copied batches are raw dB
    # The held-out stage on the datamodule's own test split: one fold, every method over two seeds.
    confirm = pq.read_table(outcome.out_dir / "confirm.parquet").to_pylist()
    assert {r["fold"] for r in confirm} == {None} and len({r["seed"] for r in confirm if r["role"] == "winner"}) == 2
    assert all(c["lead"]["units"] == "seeds" for c in summary["held_out"]["comparisons"])
    assert (outcome.out_dir / "report.html").read_text().count("flood-base") >= 1


def choosing_trials(out: Path) -> list[dict]:
    """The last result of each held-out-stage trial that chose the reference CNN's learning rate."""
    lasts = [json.loads(path.read_text().splitlines()[-1]) for path in sorted(out.glob("held_out/*/result.json"))]
    return [r for r in lasts if r["config"]["run"] == {"evaluate_test": False}]


def test_the_reference_cnn_runs_at_the_learning_rate_that_validated_best_in_the_same_experiment(flood_run):
    """flood_base.yaml searches no tier 0: the reference U-Net's rate is chosen from three on the search's
    validation split, by trials of the held-out stage's own experiment (its warm actors train them too)."""
    outcome, _, _ = flood_run
    choosing = choosing_trials(outcome.out_dir)
    rates = sorted(r["config"]["candidate"]["learning_rate"] for r in choosing)
    assert len(rates) == 3 and rates[0] < rates[1] < rates[2]
    assert all(r["config"]["candidate"]["backbone"] == "em_cnn" and math.isfinite(r["val_miou"]) for r in choosing)
    # The best validation mIoU; a tie (one epoch can leave every U-Net at the majority class) goes to the larger rate.
    best = max((r["val_miou"], r["config"]["candidate"]["learning_rate"]) for r in choosing)[1]
    reference = [r for r in pq.read_table(outcome.out_dir / "confirm.parquet").to_pylist() if r["role"] == "reference"]
    assert len(reference) == 2 and {r["learning_rate"] for r in reference} == {best}  # both seeds, at that rate
    assert not (outcome.out_dir / "reference_lr").exists()  # no experiment (and no trial processes) of its own


def recorded_results(out: Path) -> dict[str, str]:
    """Every Tune experiment's result files in a run directory (the search, the held-out stage)."""
    return {str(path.relative_to(out)): path.read_text() for path in sorted(out.glob("*/*/result.json"))}


def test_a_finished_base_config_run_resumes_without_training_again(flood_run):
    outcome, space_file, _ = flood_run
    before = recorded_results(outcome.out_dir)
    assert len(choosing_trials(outcome.out_dir)) == 3 and any(n.startswith("tune/") for n in before)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        again = run_search(space_file, outcome.out_dir, resume=True)
    assert {r["trial_id"] for r in pq.read_table(again.out_dir / "results.parquet").to_pylist()} == \
        {r["trial_id"] for r in pq.read_table(outcome.out_dir / "results.parquet").to_pylist()}
    # No trial of any stage ran again (the reference CNN's three learning-rate trials were retrained here once).
    assert recorded_results(outcome.out_dir) == before


def test_terramesh_example_base_config_search_exports_a_config_terratorch_trains(tmp_path_factory, monkeypatch,
                                                                                 embedded_ray):
    monkeypatch.chdir(REPO)
    outcome, _ = search_around("terramesh_base.yaml", tmp_path_factory, training={"num_samples": 1},
                               evaluation={"folds": 0})
    base = yaml.safe_load((REPO / "spaces/base/terramesh_fit.yaml").read_text())
    best = yaml.safe_load((outcome.out_dir / "best.yaml").read_text())
    assert searched_parts_only(base, best) == []
    assert best["model"]["init_args"]["model_args"]["backbone_modalities"] == ["S1RTC", "S2L2A"]
    terratorch_fit_fast_dev_run(outcome.out_dir / "best.yaml", REPO)  # its data paths are relative to the repository


@pytest.mark.parametrize("breakage, named", [
    ({"data": {"class_path": "terratorch.datamodules.NoSuchDataModule"}}, "data.class_path"),
    ({"data": {"init_args": {"train_label_data_root": "search/sample_data/missing"}}},
     "data.init_args.train_label_data_root"),
])
def test_a_broken_base_config_fails_in_one_line_naming_the_key_and_leaves_no_run(breakage, named, tmp_path,
                                                                                 monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    base = yaml.safe_load((REPO / "spaces/base/flood_fit.yaml").read_text())
    for section, change in breakage.items():
        base[section].update({k: v for k, v in change.items() if k != "init_args"})
        base[section]["init_args"].update(change.get("init_args", {}))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "run"
    code = main(["run", str(REPO / "spaces/flood_base.yaml"), "--base", str(tmp_path / "base.yaml"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and named in err[0] and str(tmp_path / "base.yaml") in err[0]
    assert not out.exists()


@pytest.mark.parametrize("example, layout, modalities, classes, tile", [
    ("flood_fit.yaml", "sen1floods11", ("S1GRD",), 2, 128), ("terramesh_fit.yaml", "terramesh", ("S1RTC", "S2L2A"), 10, 112)])
def test_example_base_configs_split_by_the_blind_rule_and_normalise_from_training_chips_only(
        example, layout, modalities, classes, tile, tmp_path):
    """Their splits are what the stratified rule picks from class shares (seed 0, 20% validation and test), and
    their means/stds are recomputed here from the training chips' valid pixels alone."""
    import numpy as np
    import rasterio

    from search.data.chips import find_chips
    from search.data.spec import DataSpec
    from search.data.tiles import prepare, sample_root

    base = yaml.safe_load((REPO / "spaces/base" / example).read_text())["data"]["init_args"]
    prepared = prepare(DataSpec(None, layout, modalities, classes, tile, val_fraction=0.2, test_fraction=0.2),
                       tmp_path, 0, warn=lambda line: None)
    for split in ("train", "val", "test"):
        assert (REPO / base[f"{split}_split"]).read_text().split() == prepared.splits[split], split
    chips = {c.chip_id: c for c in find_chips(sample_root(layout), layout, list(modalities))}
    for modality in modalities:
        pixels = []
        for chip in prepared.splits["train"]:
            with rasterio.open(chips[chip].images[modality]) as src:
                pixels.append(src.read().astype(np.float64).reshape(src.count, -1))
        stacked = np.concatenate(pixels, axis=1)
        assert base["means"][modality] == pytest.approx(np.nanmean(stacked, axis=1), abs=0.01)
        assert base["stds"][modality] == pytest.approx(np.nanstd(stacked, axis=1), abs=0.01)


def test_the_fixed_db_threshold_scores_the_same_chips_alike_in_base_and_layout_mode(tmp_path, monkeypatch):
    """The copied batches of a base config are raw dB (TerraTorch normalises only with a trainer attached), so the
    -13.45 dB baseline applies in both modes: on the same validation chips, uncropped, the same score."""
    from search.data.base_config import load_base
    from search.data.from_base import prepare_from_base
    from search.data.spec import DataSpec
    from search.data.tiles import prepare
    from search.outcome.baselines import FIXED_VV_THRESHOLD_DB, search_baselines

    monkeypatch.chdir(REPO)
    config = yaml.safe_load((REPO / "spaces/base/flood_fit.yaml").read_text())
    config["data"]["init_args"]["val_transform"] = [{"class_path": "albumentations.pytorch.transforms.ToTensorV2"}]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    from_base = prepare_from_base(load_base(tmp_path / "base.yaml"), "base.yaml", tmp_path / "base", lambda line: None)
    splits = {s: (REPO / config["data"]["init_args"][f"{s}_split"]).read_text().split() for s in ("val", "test")}
    layout = prepare(DataSpec(None, "sen1floods11", ("S1GRD",), 2, 128, tuple(splits["val"]), tuple(splits["test"])),
                     tmp_path / "layout", 0, warn=lambda line: None)
    name = f"VV threshold {FIXED_VV_THRESHOLD_DB} dB"
    scores = [{b.name: b for b in search_baselines(prepared, 0)}[name] for prepared in (from_base, layout)]
    assert scores[0].val_miou == pytest.approx(scores[1].val_miou, abs=1e-9)
    assert 0.3 < scores[0].val_miou < 1.0
