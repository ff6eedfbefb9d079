"""The search's Optuna searcher: Ray's OptunaSearch over the define-by-run space, told what really happened.

- Failures: Ray's searcher tells COMPLETE with the last reported value even when the trial errored
  after some epochs, and passes a NaN objective on, which Optuna rejects, leaving that Optuna trial
  RUNNING forever. Here an errored trial, a reported fault or a non-finite objective is FAIL, so TPE
  does not learn from a value the configuration never really achieved.
- The accuracy floor: each completed trial's `floor - val mIoU` is an Optuna constraint (feasible
  when <= 0), as the memory budget's excess is.
- Out of memory on a packed GPU is not a failure: the trial is proposed again, once, with twice its
  GPU share (search/execution/packing.py), under the same Optuna trial, which hears only the final
  outcome. The searcher then counts its own proposals (Tune runs it with num_samples=-1) so a retry
  does not take a new configuration's place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.execution.packing import MARGIN, gpu_share_of, retry_share
from search.outcome.study import journal_storage
from search.plan.faults import CAUSE_OOM
from search.plan.sampling import DefineByRun
from search.plan.schema import Space

FLOOR_CONSTRAINT = "val_miou_below_floor"  # Optuna constraint: the accuracy floor minus the trial's val mIoU
METRIC = "objective"
MODE = "max"


@dataclass(frozen=True)
class Objectives:
    """What Optuna optimises and the one scalar ASHA compares trials on at each rung."""

    searcher_metric: str | list[str]
    searcher_mode: str | list[str]
    scheduler_metric: str
    scheduler_mode: str


def objectives_of(space: Space) -> Objectives:
    """`accuracy_per_gb`: one scalar for both. `pareto`: Optuna gets (val mIoU max, peak GB min).

    ASHA then ranks on val mIoU, not on mIoU/GB: a configuration's peak GB is fixed from its first
    training step, so the only thing a further epoch can reveal is accuracy. Ranking rungs on
    mIoU/GB would let memory alone stop every heavy configuration at the first rung and empty the
    accurate end of the front; a light configuration ASHA stops keeps its exact GB and a lower
    bound of its accuracy, so it still lands on the front if it belongs there.
    """
    if space.objective == "pareto":
        return Objectives(["val_miou", "peak_gb"], ["max", "min"], "val_miou", "max")
    return Objectives(METRIC, MODE, METRIC, MODE)




class FailureAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, telling Optuna what happened (see the module docstring)."""

    def __init__(self, *args, floor: float | None = None, samples: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.floor = floor  # the accuracy floor: a trial below it is infeasible for Optuna, whatever its memory
        self.samples = samples  # packed: the searcher counts its own proposals (None: Tune counts them)
        self.proposed = 0
        self.configs: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.retries: list[tuple[str, dict[str, Any]]] = []

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.retries:  # an out-of-memory trial again, with more room, under its Optuna trial
            first_id, config = self.retries.pop(0)
            self._ot_trials[trial_id] = self._ot_trials.pop(first_id)
            config = {**config, "gpu_share": retry_share(gpu_share_of(config)), "oom_retries": 1, "retry_of": first_id}
        elif self.samples is not None and self.proposed >= self.samples:
            return None if self.running else Searcher.FINISHED
        else:
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            self.proposed += 1
        self.configs[trial_id] = config
        self.running.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Each epoch's value reaches its Optuna trial once: an out-of-memory retry, or a trial that a resumed
        search runs again, reports epochs its Optuna trial already holds (Optuna would keep the first and warn)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and not isinstance(self.metric, list):
            held = self._ot_study.get_trials(deepcopy=False)[ot_trial.number].intermediate_values
            if result.get(TRAINING_ITERATION) in held:
                return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running.discard(trial_id)
        config = self.configs.get(trial_id, {})
        if self.samples is not None and result and result.get("fault") == CAUSE_OOM and not config.get("oom_retries"):
            self.retries.append((trial_id, config))  # Optuna is told nothing yet: the retry decides
            return
        result = dict(result) if result else None
        miou = (result or {}).get("val_miou")
        if self.floor is not None and isinstance(miou, (int, float)) and math.isfinite(miou) \
                and trial_id in self._ot_trials:
            # Feasible when <= 0: TPE keeps proposing near configurations that cleared it, as with the budget.
            self._ot_trials[trial_id].set_constraint(FLOOR_CONSTRAINT, self.floor - miou)
        if result and result.get("infeasible"):
            # Never trained: no accuracy at its predicted memory; the trial's constraint marks it infeasible.
            result.update(val_miou=0.0, peak_gb=result["predicted_gb"])
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(name) for name in metrics]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        failed = error or bool((result or {}).get("fault")) or (result is not None and not finite)
        super().on_trial_complete(trial_id, None if failed else result, error=failed)


def optuna_searcher(space: Space, out_dir: Path, floor: float | None = None,
                    gpu_memory: float | None = None) -> OptunaSearch:
    """Optuna TPE over the define-by-run space, its study kept in the run directory; `floor`: the accuracy floor,
    an Optuna constraint; `gpu_memory`: trials packed onto GPUs of that many GB by predicted memory."""
    # Optuna logs every study it creates and every trial it is told of at INFO; the console has its own lines.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = journal_storage(out_dir)
    goal = objectives_of(space)
    return FailureAwareOptunaSearch(
        space=DefineByRun(space, gpu_memory, MARGIN),
        metric=goal.searcher_metric,
        mode=goal.searcher_mode,
        sampler=optuna.samplers.TPESampler(seed=space.training.seed,
                                           n_startup_trials=max(2, space.training.num_samples // 3)),
        study_name=space.name,
        storage=storage,
        floor=floor,
        samples=space.training.num_samples if gpu_memory is not None else None,
    )


