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
from search.execution.held_out import candidates
from search.outcome.export import write_results
from search.outcome.front import pareto_front, pick_on_front
from search.outcome.report import asha_rungs, importances, write_report
from search.outcome.results import CONFIRM_SCHEMA, SCHEMA, to_table
from search.outcome.statistics import aggregate, reference_summary, spread
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


def test_candidates_are_the_top_k_by_accuracy_per_gb_with_their_parameters():
    picks = candidates(ROWS, 2)
    assert [(p["rank"], p["source_trial_id"]) for p in picks] == [(1, "t3"), (2, "t1")]
    assert picks[0]["backbone"] == "em_prithvi" and picks[0]["learning_rate"] == 1e-3
    assert picks[0]["trial_number"] is None  # a retraining never gets a search trial's injected fault


def test_spread_is_mean_sample_std_and_iqm_from_four_runs():
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 10.0]
    stats = spread(values)
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert stats["iqm"] == pytest.approx(np.mean([0.3, 0.4, 0.5, 0.6]))  # the middle half; the outlier is gone
    three = spread([0.2, 0.4, 0.9])
    assert three["iqm"] is None and three["std"] == pytest.approx(0.3605551, rel=1e-6)
    assert spread([])["mean"] is None
    # Defect: one run reported std 0.0; a standard deviation of one value is undefined.
    assert spread([0.3]) == {"mean": 0.3, "std": None, "iqm": None, "n": 1}


def confirm_rows() -> list[dict]:
    rows = []
    for rank, source, vals, tests in ((1, "t3", [0.10, 0.12, 0.14], [0.09, 0.10, 0.14]),
                                      (2, "t1", [0.40, 0.38, None], [0.35, 0.33, None]),
                                      (0, None, [0.08, 0.09, 0.10], [0.05, 0.06, 0.07])):
        for seed, (val, test) in enumerate(zip(vals, tests)):
            done = val is not None
            rows.append({**row(f"c{rank}{seed}", val, 0.1 if done else None,
                               status="completed" if done else "failed"),
                         "rank": rank, "role": "reference" if rank == 0 else "candidate", "source_trial_id": source,
                         "seed": seed, "test_miou": test})
    return rows


def test_aggregate_puts_search_val_next_to_retrained_val_and_test():
    summary = aggregate(confirm_rows(), ROWS)
    first, second = summary
    assert (first["rank"], first["source_trial_id"], first["search_val_miou"]) == (1, "t3", 0.10)
    assert first["completed"] == 3 and first["seeds"] == [0, 1, 2]
    assert first["val_miou"]["mean"] == pytest.approx(0.12) and first["test_miou"]["mean"] == pytest.approx(0.11)
    assert first["test_miou"]["std"] == pytest.approx(np.std([0.09, 0.10, 0.14], ddof=1))
    assert second["runs"] == 3 and second["completed"] == 2  # a failed seed is counted, not averaged
    reference = reference_summary(confirm_rows())
    assert reference["completed"] == 3 and reference["test_miou"]["mean"] == pytest.approx(0.06)


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
    from search.outcome.verdict import comparisons

    held_out, reference = aggregate(confirm_rows(), ROWS), reference_summary(confirm_rows())
    baselines = [{"name": "majority (train)", "kind": "constant", "val_miou": 0.05, "test_miou": 0.04, "detail": "x"},
                 {"name": "pixel classifier", "kind": "pixel_classifier", "val_miou": 0.2, "test_miou": 0.15,
                  "detail": "y"}]
    (tmp_path / "summary.json").write_text(json.dumps({
        "best_trial": "t3", "wall_seconds": 120.0, "held_out": held_out, "reference_cnn": reference,
        "baselines": baselines, "comparisons": comparisons(ROWS[3], held_out, reference, baselines),
        "bad_chips": [{"chip": "Paraguay_34417", "file": "S1Hand/Paraguay_34417_S1Hand.tif",
                       "reason": "every pixel is NaN/no-data"}], "splits": {"train": ["a"], "val": ["b"], "test": []},
        "tiles": {"train": 4, "val": 4, "test": 0}, "class_pixels": {"train": [1, 2], "val": [3, 4], "test": [0, 0]},
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
    assert "0.1200 ± 0.0200" in page and "0.1100 ± 0.0265" in page  # rank 1: val and test over three seeds
    assert "No importances: no Optuna study to read" in page  # this directory has no journal
    # The baselines, the reference CNN and the verdict against each; the skipped chip with its reason.
    verdicts = page[page.index("Does the winner beat the baselines?"):page.index("Accuracy vs memory")]
    assert "pixel classifier" in verdicts and "small CNN (tier-0 U-Net)" in verdicts
    assert "ahead beyond noise" in verdicts  # 0.12 ± 0.02 against the majority's 0.05
    assert "BEHIND beyond noise" in verdicts  # the pixel classifier's 0.2 val against the winner's 0.12 ± 0.02
    assert "Paraguay_34417" in page and "every pixel is NaN/no-data" in page


def test_report_of_a_directory_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no finished run" in err and str(tmp_path) in err
    assert not (tmp_path / "report.html").exists()


def test_asha_bench_arms_differ_only_in_scheduler_and_skip_the_held_out_stage():
    from benchmarks.asha import arm_space

    raw = small_space(None, **{"evaluation.top_k": 3})
    arms = {s: parse_space(arm_space(raw, s)) for s in ("asha", "fifo")}
    assert (arms["asha"].training.scheduler, arms["fifo"].training.scheduler) == ("asha", "fifo")
    assert arms["asha"].evaluation.top_k == arms["fifo"].evaluation.top_k == 0
    assert arms["asha"].name == "test-asha" and arms["fifo"].name == "test-fifo"
    same = ("tiers", "techniques", "data")
    assert all(getattr(arms["asha"], f) == getattr(arms["fifo"], f) for f in same)
    training = ("seed", "num_samples", "epochs", "learning_rate")
    assert all(getattr(arms["asha"].training, f) == getattr(arms["fifo"].training, f) for f in training)
    assert raw["evaluation"] == {"top_k": 3}  # the user's space is not changed


def test_held_out_lines_print_mean_std_and_iqm_per_candidate():
    from search.outcome.summary import held_out_lines

    entry = {"rank": 1, "backbone": "em_clay", "source_trial_id": "t1", "search_val_miou": 0.07, "completed": 4,
             "runs": 4, "val_miou": {"mean": 0.065, "std": 0.004, "iqm": 0.0645},
             "test_miou": {"mean": 0.042, "std": 0.06, "iqm": None}}
    failed = {**entry, "rank": 2, "backbone": "em_prithvi", "completed": 0}
    lines = held_out_lines([entry, failed])
    assert lines[2] == ("  #1 em_clay (t1): search val 0.0700 | val 0.0650 ± 0.0040 (IQM 0.0645) | "
                        "test 0.0420 ± 0.0600 (4/4 seeds)")
    assert lines[3] == "  #2 em_prithvi: no seed completed"
    assert held_out_lines([]) == []


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


def test_verdicts_weigh_each_lead_against_the_noise_of_the_two_compared():
    from search.outcome.verdict import comparisons, verdict

    assert verdict(0.05, 0.02) == "ahead beyond noise" and verdict(0.01, 0.02) == "within noise"
    assert verdict(-0.01, 0.02) == "within noise" and verdict(-0.05, 0.02) == "BEHIND beyond noise"
    held_out = aggregate(confirm_rows(), ROWS)
    reference = reference_summary(confirm_rows())
    rows = comparisons(ROWS[3], held_out, reference, [{"name": "t", "kind": "threshold", "val_miou": 0.1,
                                                       "test_miou": None}])
    by = {(r["against"], r["split"]): r for r in rows}
    winner_val_std = np.std([0.10, 0.12, 0.14], ddof=1)
    # A deterministic baseline adds no spread: the noise is the winner's own seed-to-seed std.
    assert by[("t", "val")]["noise"] == pytest.approx(winner_val_std) and ("t", "test") not in by
    # The reference CNN has its own spread: the two combine.
    cnn_val_std = np.std([0.08, 0.09, 0.10], ddof=1)
    assert by[("small CNN (tier-0 U-Net)", "val")]["noise"] == pytest.approx(np.hypot(winner_val_std, cnn_val_std))
    assert by[("small CNN (tier-0 U-Net)", "val")]["lead"] == pytest.approx(0.12 - 0.09)
    # The runner-up is the held-out rank 2, whatever its search rank.
    assert by[("runner-up em_prithvi (t1)", "val")]["other"] == pytest.approx(0.39)
