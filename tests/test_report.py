"""The numbers behind the report: Pareto front, seed statistics, ASHA's compute to target, the page itself.

These run on hand-made trial rows whose right answers are known; the searches in
test_search_end_to_end.py check the same code on a real run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from benchmarks.asha import epochs_to_target
from search.__main__ import main
from search.execution.held_out import methods
from search.outcome.export import write_results
from search.outcome.front import pareto_front, pick_on_front
from search.outcome.report import asha_rungs, importances, write_report
from search.outcome.results import CONFIRM_SCHEMA, SCHEMA, best_row, ranked, to_table
from search.outcome.statistics import held_out_summary
from search.plan.space import parse_space
from tests.conftest import small_space


def row(trial_id: str, miou: float | None, gb: float | None, status: str = "completed", **extra) -> dict:
    base = {name: None for name in SCHEMA.names}
    base.update(trial_id=trial_id, status=status, backbone="em_prithvi", tier=2, scale="tiny", quantization_bits=16,
                lora_rank=0, gradient_checkpointing=False, learning_rate=1e-3, batch_size=4, epochs_run=2,
                val_miou=miou, peak_gb=gb, predicted_gb=gb, memory_method="cpu_accounting",
                objective=None if miou is None or gb is None else miou / gb, worker_node_ids=[], worker_peak_gb=[],
                val_miou_per_epoch=[] if miou is None else [miou * 0.8, miou], trial_number=int(trial_id[1:]), seed=0)
    base.update(extra)
    return base


ROWS = [
    row("t0", 0.50, 1.0),                      # front: most accurate
    row("t1", 0.40, 0.5),                      # front: highest mIoU per GB (0.8)
    row("t2", 0.30, 0.6),                      # dominated by t1
    row("t3", 0.10, 0.1),                      # front: lightest (1.0 per GB — beats t1 on the ratio)
    row("t4", 0.45, 1.2, status="stopped_early", epochs_run=1, val_miou_per_epoch=[0.45]),  # dominated by t0
    row("t5", None, None, status="failed", cause="nan_loss", error="NonFiniteLoss: loss is nan"),
    row("t6", None, None, status="infeasible", cause="over_memory_budget", predicted_gb=99.0),
]


def test_front_holds_exactly_the_undominated_trials_lightest_first():
    front = pareto_front(ROWS)
    assert [r["trial_id"] for r in front] == ["t3", "t1", "t0"]
    assert pick_on_front(front)["trial_id"] == "t3"  # 0.1/0.1 = 1.0 mIoU per GB, the rule for best.yaml


def test_front_of_a_run_where_nothing_trained_is_empty():
    assert pareto_front(ROWS[5:]) == [] and pick_on_front([]) is None


def test_held_out_methods_are_the_winner_its_runner_up_and_the_best_cnn_trial_that_is_neither():
    rows = [*ROWS, row("t7", 0.05, 0.2, backbone="em_cnn", tier=0), row("t8", 0.04, 0.2, backbone="em_cnn", tier=0)]
    space = parse_space(small_space(None, tiers={0: ["em_cnn"], 2: ["em_prithvi"]}))
    picks = methods(space, rows, best_row(rows))
    assert [(p["role"], p["source_trial_id"]) for p in picks] == [("winner", "t3"), ("runner_up", "t1"),
                                                                  ("reference", "t7")]
    assert picks[0]["learning_rate"] == 1e-3 and picks[0]["backbone"] == "em_prithvi"


def test_a_light_trial_below_the_accuracy_floor_cannot_win():
    """t3 has the best ratio (0.10 / 0.1 GB) but a validation mIoU below the floor: t1 (0.40 / 0.5 GB) wins; only
    when no trial clears the floor does the best below it come first (and the run says so)."""
    floored = [{**r, "above_floor": None if r["val_miou"] is None else r["val_miou"] >= 0.3} for r in ROWS]
    assert best_row(ROWS)["trial_id"] == "t3"
    assert best_row(floored)["trial_id"] == "t1"
    assert [r["trial_id"] for r in ranked(floored)] == ["t1", "t0", "t2", "t4", "t3"]  # t3 last: below the floor
    assert pick_on_front(pareto_front(floored))["trial_id"] == "t1"
    nobody = [{**r, "above_floor": False if r["val_miou"] is not None else None} for r in ROWS]
    assert best_row(nobody)["trial_id"] == "t3"


def confusions(tp: int, fn: int, fp: int = 0, tn: int = 900) -> list[list[int]]:
    return [[tn, fp], [fn, tp]]


FOLD_CHIPS = (("a", "b"), ("c", "d"))


def confirm_rows() -> list[dict]:
    """Two folds of two chips, one seed: the winner finds 80-90 of each chip's 100 water pixels, the runner-up
    50-60, the reference CNN 70; a failed run of the runner-up on fold 1 is kept beside its completed one."""
    rows = []
    for role, source, found in (("winner", "t3", (90, 80)), ("runner_up", "t1", (60, 50)), ("reference", "t7", (70, 70))):
        for fold, chips in enumerate(FOLD_CHIPS):
            chip_confusion = {chip: confusions(found[i], 100 - found[i]) for i, chip in enumerate(chips)}
            rows.append({**row(f"c{len(rows)}", None, 0.1, backbone="em_cnn" if role == "reference" else "em_prithvi"),
                         "role": role, "source_trial_id": source, "fold": fold, "seed": 1 + fold,
                         "test_miou": 0.5, "chip_confusion": json.dumps(chip_confusion)})
    rows.append({**rows[3], "trial_id": "failed", "status": "failed", "chip_confusion": None})
    return rows


def baseline_folds() -> dict:
    return {"pixel classifier": {"kind": "pixel_classifier", "detail": "y",
                                 "folds": [[{c: confusions(75, 25) for c in chips}] for chips in FOLD_CHIPS]}}


def test_held_out_summary_scores_every_method_per_chip_and_leads_on_the_same_chips():
    summary = held_out_summary(confirm_rows(), baseline_folds(), folds=2)
    by_name = {m["name"]: m for m in summary["methods"]}
    assert list(by_name) == ["winner em_prithvi", "runner-up em_prithvi", "small CNN (tier-0 U-Net) em_cnn",
                             "pixel classifier"]
    winner = by_name["winner em_prithvi"]
    iou = {found: (found / 100 + 900 / (900 + 100 - found)) / 2 for found in (90, 80, 75)}  # water IoU, land IoU
    assert winner["per_chip"]["a"] == pytest.approx(iou[90]) and winner["per_chip"]["d"] == pytest.approx(iou[80])
    assert summary["chips"] == ["a", "b", "c", "d"] and summary["shapes"]["folds"] == 2
    leads = {c["against"]: c for c in summary["comparisons"]}
    assert set(leads) == {"runner-up em_prithvi", "small CNN (tier-0 U-Net) em_cnn", "pixel classifier"}
    pixel = leads["pixel classifier"]
    assert pixel["lead"]["estimate"] == pytest.approx(pixel["winner_test_miou"] - pixel["other_test_miou"])
    assert pixel["lead"]["n"] == 2 and pixel["lead"]["units"] == "folds"


def test_compute_to_target_counts_trial_epochs_in_proposal_order():
    rows = [row("t0", 0.2, 1.0, epochs_run=4), row("t1", 0.1, 1.0, epochs_run=1),
            row("t2", 0.5, 1.0, epochs_run=2), row("t3", 0.6, 1.0, epochs_run=4)]
    assert epochs_to_target(rows, 0.49) == (7, "t2")
    assert epochs_to_target(list(reversed(rows)), 0.49) == (7, "t2")  # order is Optuna's, not the list's
    assert epochs_to_target(rows, 0.7) == (None, None)


def test_asha_rungs_follow_grace_period_and_reduction_factor():
    space = parse_space(small_space(None, **{"training.epochs": 9, "training.grace_period": 1,
                                            "training.reduction_factor": 3}))
    assert asha_rungs(space) == [1, 3]
    fifo = parse_space(small_space(None, **{"training.scheduler": "fifo"}))
    assert asha_rungs(fifo) == []


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as `search run` leaves it, from the hand-made rows above."""
    space = small_space(None, **{"training.epochs": 2})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    write_results(to_table(ROWS), tmp_path / "results.parquet")
    import pyarrow as pa

    write_results(pa.Table.from_pylist(confirm_rows(), schema=CONFIRM_SCHEMA), tmp_path / "confirm.parquet")
    held_out = held_out_summary(confirm_rows(), baseline_folds(), folds=2)
    baselines = [{"name": "majority (train)", "kind": "constant", "val_miou": 0.05, "test_miou": None, "detail": "x"},
                 {"name": "pixel classifier", "kind": "pixel_classifier", "val_miou": 0.2, "test_miou": None,
                  "detail": "y"}]
    (tmp_path / "summary.json").write_text(json.dumps({
        "best_trial": "t3", "wall_seconds": 120.0, "held_out": held_out, "baselines": baselines,
        "accuracy_floor": {"val_miou": 0.2, "source": "pixel classifier"}, "cleared_floor": False,
        "test_properties": {"false_positive_rate": 0.047},
        "bad_chips": [{"chip": "Paraguay_34417", "file": "S1Hand/Paraguay_34417_S1Hand.tif",
                       "reason": "every pixel is NaN/no-data"}], "splits": {"train": ["a"], "val": ["b"]},
        "folds": [{"train": ["c", "d"], "test": ["a", "b"]}, {"train": ["a", "b"], "test": ["c", "d"]}],
        "tiles": {"train": 4, "val": 4}, "class_pixels": {"train": [1, 2], "val": [3, 4]},
        "unlabelled_tiles_dropped": 2, "timings": {"search": 120.0}}))
    return tmp_path


def test_report_page_is_self_contained_and_states_the_findings(run_dir):
    page = write_report(run_dir).read_text()
    pngs = sorted(p.name for p in (run_dir / "report").iterdir())
    assert pngs == ["accuracy_vs_memory.png", "held_out.png", "learning_curves.png", "objective_by_choice.png"]
    for png in pngs:
        assert (run_dir / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count('src="data:image/png;base64,') == 4 and "src=\"report/" not in page
    # best accuracy per GB, the front in order, failures with their causes, val next to test
    assert "1.000" in page and "t3" in page
    front_table = page[page.index("front point"):page.index("Objective by backbone")]
    assert [front_table.index(t) for t in ("t3", "t1", "t0")] == sorted(front_table.index(t) for t in ("t3", "t1", "t0"))
    assert "t2" not in front_table and "t4" not in front_table
    assert "nan_loss" in page and "over_memory_budget" in page
    assert "No importances: no Optuna study to read" in page  # this directory has no journal
    # The floor not cleared, and which baseline is the better answer.
    assert "No configuration cleared it: pixel classifier is the better answer on these chips" in page
    # Every reference with its lead, interval and verdict; the chips with every method's score; the skipped chip.
    verdicts = page[page.index("Does the winner beat the references?"):page.index("Accuracy vs memory")]
    assert "pixel classifier" in verdicts and "small CNN (tier-0 U-Net)" in verdicts and "runner-up" in verdicts
    assert "4.7% of runs" in verdicts
    chips = page[page.index("Held-out test, chip by chip"):page.index("Baselines on the search")]
    assert all(f">{chip}" in chips for chip in "abcd") and "<i>val</i>" in chips  # chip b was validated on
    assert "Paraguay_34417" in page and "every pixel is NaN/no-data" in page
    assert "fold 1 test" in page


def test_report_of_a_directory_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no finished run" in err and str(tmp_path) in err
    assert not (tmp_path / "report.html").exists()


def test_asha_bench_arms_differ_only_in_scheduler_and_skip_the_held_out_stage():
    from benchmarks.asha import arm_space

    raw = small_space(None, **{"evaluation.folds": 3})
    arms = {s: parse_space(arm_space(raw, s)) for s in ("asha", "fifo")}
    assert (arms["asha"].training.scheduler, arms["fifo"].training.scheduler) == ("asha", "fifo")
    assert arms["asha"].evaluation.folds == arms["fifo"].evaluation.folds == 0
    assert arms["asha"].name == "test-asha" and arms["fifo"].name == "test-fifo"
    same = ("tiers", "techniques", "data")
    assert all(getattr(arms["asha"], f) == getattr(arms["fifo"], f) for f in same)
    training = ("seed", "num_samples", "epochs", "learning_rate")
    assert all(getattr(arms["asha"].training, f) == getattr(arms["fifo"].training, f) for f in training)
    assert raw["evaluation"] == {"folds": 3}  # the user's space is not changed


def test_trial_table_names_every_catalogued_backbone_whole_within_80_columns():
    """Defect: the backbone column cut names to 12 characters (`internvl2_40`, `granite_4_ti`)."""
    from em_backbones.catalog import CATALOG
    from search.outcome.results import summary_table

    rows = [row(f"t{i}", 0.5, 1.0 + i, backbone=name, quantization_bits=4, lora_rank=64, gradient_checkpointing=True)
            for i, name in enumerate(CATALOG)]
    lines = summary_table(rows, top=len(rows)).splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert sorted(line.split()[1] for line in lines[2:]) == sorted(CATALOG)
    assert {" ".join(line.split()[3:6]) for line in lines[2:]} == {"4b 64l ck"}  # the knobs, whole


def test_closing_lines_give_every_methods_interval_and_say_when_no_configuration_cleared_the_floor():
    from search.outcome.summary import held_out_lines
    from search.outcome.verdict import floor_line, no_winner_line, verdict_lines

    held_out = held_out_summary(confirm_rows(), baseline_folds(), folds=2)
    lines = held_out_lines(held_out)
    assert lines[1].startswith("held-out test mIoU (2 folds, every chip tested once)")
    assert lines[2].split() == ["winner", "em_prithvi", "0.9168", "[0.9168,", "0.9168]", "0.9168"]  # both folds alike
    assert held_out_lines({}) == []
    verdicts = verdict_lines(held_out["comparisons"])
    assert all(v.startswith("  vs ") and " [" in v and ("ahead" in v or "BEHIND" in v or "no difference" in v)
               for v in verdicts)
    # Whole names in aligned columns (the reference's 31-character name was once cut to "... U-Net) e").
    assert any(line.startswith("  small CNN (tier-0 U-Net) em_cnn ") for line in lines[2:])
    assert any(line.startswith("  vs small CNN (tier-0 U-Net) em_cnn ") for line in verdicts)
    longest = max(len(method["name"]) for method in held_out["methods"])
    assert all(line[2 + longest] == " " and line[3 + longest].isdigit() for line in lines[2:])
    longest = max(len(c["against"]) for c in held_out["comparisons"])
    assert all(line[5 + longest] == " " and line[6 + longest] in "+-" for line in verdicts)
    floor = {"val_miou": 0.2, "source": "pixel classifier"}
    assert floor_line(floor, ROWS[3]) == "accuracy floor: val mIoU 0.2000 (pixel classifier): NOT cleared"
    assert no_winner_line(floor, cleared=False) == ("no configuration cleared the accuracy floor (val mIoU 0.2000): "
                                                    "pixel classifier is the better answer here")
    assert no_winner_line(floor, cleared=True) is None


def test_importances_leave_out_infeasible_trials_that_never_trained(tmp_path):
    """Defect: trials recorded infeasible entered fANOVA with their placeholder objective 0."""
    import optuna

    from search.outcome.study import journal_storage

    space = parse_space(small_space(None, **{"techniques.quantization_bits": [4, 16]}))
    study = optuna.create_study(study_name=space.name, storage=journal_storage(tmp_path), direction="maximize")
    rng = np.random.default_rng(0)
    for i in range(12):
        feasible = i % 3 != 0
        bits = 4 if feasible else 16  # only infeasible trials ever had 16 bits
        lr = float(rng.uniform(1e-4, 1e-3))
        trial = optuna.trial.create_trial(
            params={"learning_rate": lr, "quantization_bits": bits, "batch_size": 4 + i % 2},
            distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-3),
                           "quantization_bits": optuna.distributions.CategoricalDistribution([4, 16]),
                           "batch_size": optuna.distributions.CategoricalDistribution([4, 5])},
            value=lr * 1000 if feasible else 0.0)
        trial.set_constraint("predicted_gb_over_budget", -1.0 if feasible else 5.0)  # what DefineByRun records
        study.add_trial(trial)
    scores, note = importances(space, tmp_path)
    assert note is None and "quantization_bits" not in scores["val mIoU per GB"]
    assert max(scores["val mIoU per GB"], key=scores["val mIoU per GB"].get) == "learning_rate"
