"""Failing trials end alone: injected exceptions, NaN losses and OOMs are recorded with their cause,
Optuna is told FAIL, and the search finishes with the other trials."""

from __future__ import annotations

import optuna
import pytest
import yaml

from search.execution.run import run_search
from search.outcome.study import load_study
from search.plan.space import SpaceError, load_space
from tests.conftest import small_space

FAULTS = [{"trial": 0, "kind": "raise"}, {"trial": 1, "kind": "nan"}, {"trial": 2, "kind": "oom"}]


def test_injected_faults_fail_their_trials_only_and_optuna_hears_it(real_chips, tmp_path, embedded_ray):
    space = small_space(real_chips, tiers={2: ["em_prithvi"]}, **{
        "techniques.gradient_checkpointing": [False], "training.num_samples": 4, "training.epochs": 1,
        "training.grace_period": 1})
    space["faults"] = FAULTS
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    outcome = run_search(space_file, tmp_path / "run")
    by_number = {r["trial_number"]: r for r in outcome.rows}
    assert sorted(by_number) == [0, 1, 2, 3]
    expected = {0: ("exception", "InjectedFault", 0), 1: ("nan_loss", "NonFiniteLoss", 0),
                2: ("out_of_memory", "OutOfMemoryError", 0)}
    for number, (cause, error, epochs) in expected.items():
        row = by_number[number]
        assert (row["status"], row["cause"], row["epochs_run"]) == ("failed", cause, epochs), row
        assert row["error"].startswith(error)
    # The NaN stops its trial at the first batch: no epoch finished, no validation score.
    assert by_number[1]["val_miou_per_epoch"] == []
    healthy = by_number[3]
    assert healthy["status"] == "completed" and healthy["cause"] is None and healthy["epochs_run"] == 1
    assert outcome.best["trial_id"] == healthy["trial_id"] and (outcome.out_dir / "best.yaml").is_file()

    study = load_study(outcome.out_dir, space["name"])
    states = {t.number: t.state for t in study.trials}
    assert states == {0: optuna.trial.TrialState.FAIL, 1: optuna.trial.TrialState.FAIL,
                      2: optuna.trial.TrialState.FAIL, 3: optuna.trial.TrialState.COMPLETE}


@pytest.mark.parametrize("faults, fragment", [
    ([{"trial": 0, "kind": "segfault"}], "field 'faults[0].kind': expected one of ['raise', 'nan', 'oom']"),
    ([{"trial": -1, "kind": "nan"}], "field 'faults[0].trial': expected an integer >= 0"),
    ([{"trial": 0, "kind": "nan", "epoch": 9}], "field 'faults[0].epoch': expected an epoch the trial reaches"),
    ([{"trial": 0, "kind": "nan", "when": 1}], "unknown field 'faults[0].when'"),
    ([{"trial": 0, "kind": "nan"}, {"trial": 0, "kind": "oom"}], "field 'faults': expected at most one fault"),
    ({"trial": 0}, "field 'faults': expected a list"),
])
def test_bad_fault_entries_are_refused(write_space, faults, fragment):
    with pytest.raises(SpaceError) as err:
        load_space(write_space({**small_space(None), "faults": faults}))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_faults_are_off_unless_listed():
    assert load_space("spaces/tier2.yaml").faults == ()


def test_a_worker_group_that_never_starts_is_its_own_cause():
    """What Ray Train raises after its bounded start retries (search/execution/trial.py) reads as that cause."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from search.execution.trial import WORKER_START_RETRIES
    from search.plan.faults import CAUSE_WORKERS_NOT_STARTED, cause_of

    error = ControllerError(WorkerGroupStartupTimeoutError(num_workers=1))
    assert cause_of(error) == CAUSE_WORKERS_NOT_STARTED and cause_of(str(error)) == CAUSE_WORKERS_NOT_STARTED
    assert cause_of(RuntimeError("CUDA out of memory")) == "out_of_memory"
    assert 0 < WORKER_START_RETRIES <= 30  # bounded: Ray's default (-1) retries forever
