"""A real search on the real chips: Ray Tune + Optuna + ASHA over Ray Train trials, then TerraTorch.

One search runs for the whole module (4 trials over tier 0 and tier 2, then the winner, its runner-up
and the reference CNN cross-validated on 3 folds of the 5 chips: about a minute and a half on 2
CPUs); the tests read its outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from search.__main__ import main
from search.execution.run import run_search
from search.outcome.metrics import mean_iou
from search.outcome.results import SCHEMA
from search.outcome.study import load_study
from tests.conftest import REPO, small_space, terratorch_fit_fast_dev_run


@pytest.fixture(scope="module")
def finished_run(real_chips, tmp_path_factory, embedded_ray):
    tmp = tmp_path_factory.mktemp("search")
    space_file = tmp / "space.yaml"
    space = small_space(real_chips, tiers={0: ["em_cnn"], 2: ["em_prithvi", "em_terramind", "em_clay"]}, **{
        "training.num_samples": 4, "evaluation.folds": 3, "evaluation.seeds": 1})
    del space["data"]["val_chips"], space["data"]["test_chips"]  # the stratified rule, as the packaged spaces
    space_file.write_text(yaml.safe_dump(space))
    out = tmp / "run"
    return run_search(space_file, out, mlflow="run-dir")  # tracked: a local MLflow store (SQLite file)


def test_tier1_and_tier3_backbones_train_quantized_with_lora_inside_the_search(real_chips, tmp_path, embedded_ray):
    tiers = {1: ["earthmind_v1", "granite_4_tiny"], 3: ["internvl2_40b"]}
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(small_space(real_chips, tiers=tiers, **{
        "techniques.quantization_bits": [4, 8], "techniques.lora_rank": [8],
        "training.num_samples": 3, "training.epochs": 1})))
    outcome = run_search(space_file, tmp_path / "run")
    assert ray.is_initialized()  # a Ray the caller started (the tests' shared one) is left running
    assert len(outcome.rows) == 3
    for row in outcome.rows:
        assert row["status"] == "completed", row["error"]
        assert row["backbone"] in tiers[row["tier"]] and 0.0 <= row["val_miou"] <= 1.0
        assert row["quantization_bits"] in (4, 8) and row["lora_rank"] == 8
        assert 0.0 < row["predicted_gb"] and 0.0 < row["peak_gb"]
    # The exported QLoRA config trains under TerraTorch's own CLI, techniques included.
    config = yaml.safe_load((outcome.out_dir / "best.yaml").read_text())
    model_args = config["model"]["init_args"]["model_args"]
    assert model_args["backbone_quantization_bits"] in (4, 8) and model_args["backbone_lora_rank"] == 8
    terratorch_fit_fast_dev_run(outcome.out_dir / "best.yaml", tmp_path)


def test_pareto_search_under_a_memory_budget_exports_its_front(real_chips, tmp_path, embedded_ray):
    """`objective: pareto` with a budget: infeasible trials never train, Optuna optimises two objectives
    under the budget constraint, best.yaml is the front's best mIoU per GB, the front is exported."""
    budget = 0.08  # GB: tiny InternVL2-26B at batch 4 fits with 4-bit weights (0.025-0.042), not at 16 bits (0.13-0.16)
    space = small_space(real_chips, tiers={3: ["internvl2_26b"]}, **{
        "techniques.quantization_bits": [4, 16], "techniques.lora_rank": [0],
        "techniques.gradient_checkpointing": [False, True], "resources.memory_budget_gb": budget,
        "training.num_samples": 6, "training.epochs": 1})
    space["objective"] = "pareto"
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    outcome = run_search(space_file, tmp_path / "run")
    statuses = {r["status"] for r in outcome.rows}
    assert "infeasible" in statuses and "completed" in statuses
    for row in outcome.rows:
        assert (row["status"] == "infeasible") == (row["predicted_gb"] > budget), row
        if row["status"] == "infeasible":
            assert row["quantization_bits"] == 16 and row["peak_gb"] is None and row["train_seconds"] is None
            assert "budget" in row["error"]
    assert outcome.best["status"] == "completed"
    study = load_study(outcome.out_dir, "test")
    constraints = [t.constraints["predicted_gb_over_budget"] for t in study.trials]
    assert any(c > 0 for c in constraints) and any(c <= 0 for c in constraints)

    # Two objectives in Optuna, each trial told its measured (val mIoU, peak GB).
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_number = {r["trial_number"]: r for r in outcome.rows}
    for trial in study.trials:
        row = by_number[trial.number]
        if row["status"] == "completed":
            assert trial.values == pytest.approx([row["val_miou"], row["peak_gb"]])
        else:  # infeasible: no accuracy at its predicted memory, and its constraint says over budget
            assert trial.values == pytest.approx([0.0, row["predicted_gb"]])
    # The front: trained trials no other beats on both axes; best.yaml = its best mIoU per GB.
    trained = [r for r in outcome.rows if r["status"] == "completed"]
    front_ids = {r["trial_id"] for r in outcome.front}
    for r in trained:
        dominated = any(o["val_miou"] >= r["val_miou"] and o["peak_gb"] <= r["peak_gb"] and
                        (o["val_miou"], o["peak_gb"]) != (r["val_miou"], r["peak_gb"]) for o in trained)
        assert (r["trial_id"] in front_ids) == (not dominated)
    assert outcome.best["trial_id"] == max(outcome.front, key=lambda r: r["objective"])["trial_id"]
    exported = sorted((outcome.out_dir / "pareto").glob("*.yaml"))
    assert [p.name.split("_", 1)[1] for p in exported] == [f"{r['trial_id']}.yaml" for r in outcome.front]
    for path, r in zip(exported, outcome.front):
        args = yaml.safe_load(path.read_text())["model"]["init_args"]["model_args"]
        assert args["backbone_quantization_bits"] == r["quantization_bits"]
        assert args["backbone_gradient_checkpointing"] == r["gradient_checkpointing"]


def test_results_table_has_one_row_per_trial(finished_run):
    table = pq.read_table(finished_run.out_dir / "results.parquet")
    assert table.schema.equals(SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    for row in rows:
        assert row["status"] in {"completed", "stopped_early"}, row["error"]
        assert row["backbone"] in {"em_prithvi", "em_terramind", "em_clay", "em_cnn"}
        assert row["tier"] == (0 if row["backbone"] == "em_cnn" else 2)
        assert 1 <= row["epochs_run"] <= 2 and len(row["val_miou_per_epoch"]) == row["epochs_run"]
        assert 0.0 <= row["val_miou"] <= 1.0
        assert 0.0 < row["peak_gb"] < 1.0 and row["memory_method"].startswith("cpu_accounting")
        # What a trial occupies: its peak plus the per-process overhead (the CUDA context), and the objective over it.
        assert row["occupied_gb"] == pytest.approx(row["peak_gb"] + finished_run.space.memory.overhead_gb)
        assert row["objective"] == pytest.approx(row["val_miou"] / row["occupied_gb"])
        assert row["above_floor"] == (row["val_miou"] >= finished_run.floor["val_miou"])
        # Two clocks: Tune times a reused actor's trial from its reset, which can come a moment after the trial's
        # training thread started (seen: 3.31 s of training in 3.19 s of Tune time on a loaded CI machine).
        assert row["wall_seconds"] > 0 and 0 < row["train_seconds"] <= row["wall_seconds"] + 0.5
        span = (row["finished_at"] - row["started_at"]).total_seconds()
        assert abs(span - row["wall_seconds"]) <= 0.002 and row["finished_at"] <= datetime.now(timezone.utc)
        assert row["node_ip"]
        assert row["status"] == ("completed" if row["epochs_run"] == 2 else "stopped_early")
        # How busy it kept the machine: its process trained (CPU well above idle), held its model stack in RSS,
        # and no GPU figure on a machine without one.
        assert 20 < row["cpu_percent_mean"] <= row["cpu_percent_peak"] <= 100 * os.cpu_count() + 10
        assert 0.3 < row["rss_gb_mean"] <= row["rss_gb_peak"] < 16
        assert row["gpu_util_percent_mean"] is None and row["gpu_mem_gb_peak"] is None
    # Spans to the millisecond, from each trial's own report times (Tune's `timestamp` has whole seconds only: a
    # packed GPU then seemed to hold a heavy trial beside the one before it).
    assert any(row["finished_at"].microsecond for row in rows)


def test_optuna_study_persisted_in_run_directory_with_the_accuracy_floor_as_a_constraint(finished_run):
    study = load_study(finished_run.out_dir, "test")
    assert len(study.trials) == 4
    assert {"tier", "learning_rate"} <= set(study.trials[0].params)
    by_number = {r["trial_number"]: r for r in finished_run.rows}
    floor = finished_run.floor["val_miou"]
    for trial in study.trials:  # feasible (<= 0) exactly when the trial cleared the floor
        row = by_number[trial.number]
        assert trial.constraints["val_miou_below_floor"] == pytest.approx(floor - row["val_miou"])


def test_mlflow_file_store_holds_one_run_per_trial_under_the_study(finished_run):
    """Read back with MLflow's own client: one child run per trial, its sampled parameters and final metrics."""
    assert not list(finished_run.out_dir.glob("mlruns"))  # one local store, in the run directory
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{finished_run.out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(finished_run.out_dir.name)
    runs = client.search_runs([experiment.experiment_id])
    study = [r for r in runs if r.data.tags.get("em_search.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("em_search.role") == "trial"]
    assert len(study) == 1 and study[0].info.status == "FINISHED"
    assert len(trials) == 4 and all(r.data.tags["mlflow.parentRunId"] == study[0].info.run_id for r in trials)
    rows = pq.read_table(finished_run.out_dir / "results.parquet").to_pylist()
    by_lr = {round(float(r.data.params["learning_rate"]), 12): r for r in trials}
    assert set(by_lr) == {round(row["learning_rate"], 12) for row in rows}
    for row in rows:
        tracked = by_lr[round(row["learning_rate"], 12)]
        assert tracked.data.params["backbone"] == row["backbone"]
        if row["status"] in ("completed", "stopped_early"):
            assert tracked.data.metrics["val_miou"] == pytest.approx(row["val_miou"])
            assert tracked.data.metrics["peak_gb"] == pytest.approx(row["peak_gb"])
            history = client.get_metric_history(tracked.info.run_id, "val_miou")
            assert len(history) == row["epochs_run"]  # one point per epoch
            # System metrics ride on the same reports: one point per epoch, the last one the row's.
            rss = client.get_metric_history(tracked.info.run_id, "rss_gb_peak")
            assert len(rss) == row["epochs_run"] and rss[-1].value == pytest.approx(row["rss_gb_peak"])


def test_optuna_dashboard_opens_the_study_journal(finished_run):
    """README: `optuna-dashboard runs/<run>/optuna_journal.log`; the dashboard's own loader and API read it."""
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard
    from optuna_dashboard._storage_url import guess_storage_from_url

    storage = guess_storage_from_url(str(finished_run.out_dir / "optuna_journal.log"))
    app = optuna_dashboard.wsgi(storage)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
    assert status[0].startswith("200"), body[:2000]
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["test"]


def test_best_yaml_is_the_best_trial(finished_run):
    config = yaml.safe_load((finished_run.out_dir / "best.yaml").read_text())
    best = finished_run.best
    clearing = [r for r in finished_run.rows if r["above_floor"]] or finished_run.rows
    assert best["objective"] == max(r["objective"] for r in clearing)
    model_args = config["model"]["init_args"]["model_args"]
    assert model_args["backbone"] == best["backbone"]
    assert config["model"]["init_args"]["lr"] == pytest.approx(best["learning_rate"])
    assert model_args["backbone_gradient_checkpointing"] == best["gradient_checkpointing"]
    assert config["data"]["class_path"] == "terratorch.datamodules.GenericMultiModalDataModule"
    assert 0.0 < finished_run.utilisation <= 1.0
    # Defect: an ASHA-stopped winner was exported to train all epochs without a word; now both are said.
    header = (finished_run.out_dir / "best.yaml").read_text().split("seed_everything")[0]
    assert f"The search trained it for {best['epochs_run']} of 2 epochs" in header
    assert "this config trains 2 epochs" in header and config["trainer"]["max_epochs"] == 2
    summary = json.loads((finished_run.out_dir / "summary.json").read_text())
    assert summary["epochs"] == {"searched": best["epochs_run"], "exported": 2}
    assert summary["weights"] == {"em_cnn": "random init", "em_prithvi": "random init", "em_terramind": "random init",
                                  "em_clay": "random init"}
    assert "Weights: random init." in header


def test_baselines_floor_and_verdicts_are_in_the_summary_and_the_closing_lines(finished_run):
    summary = json.loads((finished_run.out_dir / "summary.json").read_text())
    names = [b["name"] for b in summary["baselines"]]
    assert names == ["majority (train)", "best constant (val)", "pixel classifier"]  # 10 classes: no SAR threshold
    by_name = {b["name"]: b for b in summary["baselines"]}
    assert by_name["best constant (val)"]["val_miou"] >= by_name["majority (train)"]["val_miou"]
    assert all(0.0 <= b["val_miou"] <= 1.0 and b["test_miou"] is None for b in summary["baselines"])
    # The floor: the best baseline that did not peek at validation labels.
    fair = max((by_name[n]["val_miou"], n) for n in ("majority (train)", "pixel classifier"))
    assert summary["accuracy_floor"] == {"val_miou": fair[0], "source": fair[1]}
    assert summary["cleared_floor"] == (finished_run.best["val_miou"] >= fair[0])
    comparisons = summary["held_out"]["comparisons"]
    against = {c["against"] for c in comparisons}
    assert {"majority (train)", "pixel classifier"} <= against and "best constant (val)" not in against
    assert any(a.startswith("runner-up") for a in against)
    for c in comparisons:
        lead = c["lead"]
        assert lead["estimate"] == pytest.approx(c["winner_test_miou"] - c["other_test_miou"])
        assert lead["n"] == 3 and lead["units"] == "folds" and lead["low"] <= lead["estimate"] <= lead["high"]
        assert lead["verdict"] == ("ahead" if lead["low"] > 0 else "BEHIND" if lead["high"] < 0 else
                                   "no difference shown")
    properties = summary["test_properties"]
    assert properties["shapes"] == {"folds": 3, "chips_per_fold": 2, "seeds": 1, "pixels_per_chip": 65536}
    assert properties["false_positive_rate"] <= 0.05 + 2 * properties["false_positive_rate_error"]
    lines = "\n".join(finished_run_lines(finished_run, summary))
    for name in against:  # whole names: "small CNN (tier-0 U-Net) em_cnn" was once cut to "... e"
        assert f"  vs {name} " in lines
    assert "wall time: " in lines and "search " in lines and "held-out stage " in lines
    assert ("no configuration cleared the accuracy floor" in lines.splitlines()[-1]) == (not summary["cleared_floor"])


def finished_run_lines(outcome, summary) -> list[str]:
    from search.outcome.summary import closing_lines

    return closing_lines(outcome, summary)


def test_bad_space_exits_nonzero_with_one_line_and_no_run_dir(write_space, tmp_path, capsys):
    out = tmp_path / "never"
    space = write_space(small_space(None, **{"training.num_samples": 0}))
    assert main(["run", str(space), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "training.num_samples" in err
    assert not out.exists()


def test_bad_data_leaves_no_half_written_run(write_space, tmp_path, capsys):
    out = tmp_path / "run"
    space = write_space(small_space(tmp_path / "no-such-chips"))
    assert main(["run", str(space), "--out", str(out)]) == 2
    assert "data.root" in capsys.readouterr().err and not out.exists()


def test_out_dir_that_holds_files_is_refused(write_space, tmp_path, capsys):
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["run", str(write_space(small_space(None))), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"


def test_cli_entry_point_reports_errors_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "search", "run", str(tmp_path / "missing.yaml")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing.yaml'}: space file not found"


def test_every_chip_is_tested_once_per_method_and_chip_scores_match_terratorchs_own_test_miou(finished_run):
    confirm = pq.read_table(finished_run.out_dir / "confirm.parquet").to_pylist()
    folds = finished_run.prepared.folds
    assert len(folds) == 3 and sorted(c for f in folds for c in f["test"]) == sorted(finished_run.prepared.chip_tiles)
    roles = {}
    for row in confirm:
        assert row["status"] == "completed", row["error"]
        assert row["epochs_run"] == 2  # the search's full budget, no ASHA here
        chips = json.loads(row["chip_confusion"])
        assert sorted(chips) == folds[row["fold"]]["test"]  # scored on its own fold's test chips only
        # TerraTorch's test/mIoU (torchmetrics over the fold's tiles) and the per-chip confusions agree.
        assert mean_iou(sum(np.asarray(m) for m in chips.values())) == pytest.approx(row["test_miou"], abs=1e-6)
        roles.setdefault(row["role"], []).append(row)
    assert set(roles) >= {"winner", "runner_up"}
    for role, rows in roles.items():
        assert sorted(r["fold"] for r in rows) == [0, 1, 2], role
        assert len({r["seed"] for r in rows}) == 3  # every fold its own seed
    assert roles["winner"][0]["source_trial_id"] == finished_run.best["trial_id"]
    if "reference" in roles:
        assert {r["backbone"] for r in roles["reference"]} == {"em_cnn"}
    assert max(r["trials_before_in_process"] for r in confirm) >= 2  # reused processes


def test_run_writes_its_report(finished_run):
    page = (finished_run.out_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5  # scatter, by choice, importances, curves, held out
    assert "No importances" not in page  # trials below the floor trained: fANOVA keeps them
    assert finished_run.best["trial_id"] in page and "Held-out test, chip by chip" in page
    for row in finished_run.rows:
        assert row["trial_id"] in page
    assert {p.name for p in (finished_run.out_dir / "report").glob("*.png")} == {
        "accuracy_vs_memory.png", "objective_by_choice.png", "importances.png", "learning_curves.png",
        "held_out.png"}
