"""The held-out stage's schedule (search/execution/held_out_schedule.py), driven as Tune drives a searcher: the
reference's learning-rate trials first, the other runs beside them, the reference's runs once its rate is chosen,
and a saved schedule that goes on where it stopped."""

from __future__ import annotations

import math

from ray.tune.search import Searcher

from search.execution.held_out_schedule import CHOOSING, HeldOutSchedule

RATES = [1e-4, 5e-4, 3e-3]
RUNS = [{"fold": 0, "seed": 1}, {"fold": 1, "seed": 2}]
REFERENCE = {"backbone": "em_cnn", "role": "reference", "learning_rate": math.nan}


def schedule() -> HeldOutSchedule:
    ready = [{"candidate": {"backbone": "em_clay", "role": "winner"}, "run": run} for run in RUNS]
    return HeldOutSchedule(ready, REFERENCE, RATES, RUNS)


def test_choosing_trials_come_first_and_the_reference_runs_at_the_rate_that_validated_best():
    s = schedule()
    handed = [s.suggest(f"t{i}") for i in range(5)]
    assert [c["run"] for c in handed[:3]] == [CHOOSING] * 3
    assert [c["candidate"]["learning_rate"] for c in handed[:3]] == RATES
    assert [c["candidate"]["role"] for c in handed[3:]] == ["winner", "winner"]
    assert s.suggest("t5") is None  # nothing more until every choosing trial has reported
    s.on_trial_complete("t0", {"val_miou": 0.41})
    s.on_trial_complete("t1", {"val_miou": 0.47})
    assert s.suggest("t5") is None
    s.on_trial_complete("t2", {"val_miou": 0.44})
    reference = [s.suggest("t5"), s.suggest("t6")]
    assert [c["run"] for c in reference] == RUNS
    assert all(c["candidate"]["learning_rate"] == 5e-4 and c["candidate"]["role"] == "reference" for c in reference)
    assert s.suggest("t7") == Searcher.FINISHED


def test_without_a_validation_score_the_rate_is_the_middle_of_the_range():
    s = schedule()
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", error=True)
    s.on_trial_complete("t1", {"val_miou": math.nan, "fault": "nan_loss"})
    s.on_trial_complete("t2", None)
    s.suggest("t3"), s.suggest("t4")
    assert s.suggest("t5")["candidate"]["learning_rate"] == math.sqrt(RATES[0] * RATES[-1])


def test_a_saved_schedule_goes_on_where_it_stopped(tmp_path):
    s = schedule()
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val_miou": 0.5})
    s.save(str(tmp_path / "state.pkl"))
    again = HeldOutSchedule([])
    again.restore(str(tmp_path / "state.pkl"))
    again.on_trial_complete("t1", {"val_miou": 0.2})
    again.on_trial_complete("t2", {"val_miou": 0.3})
    rest = [again.suggest(f"r{i}") for i in range(4)]
    assert [c["candidate"]["role"] for c in rest] == ["winner", "winner", "reference", "reference"]
    assert {c["candidate"]["learning_rate"] for c in rest[2:]} == {RATES[0]}
    assert again.suggest("r4") == Searcher.FINISHED
