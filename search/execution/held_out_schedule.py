"""The held-out stage's trials in one Tune experiment: a Tune `Searcher` that hands them out in order.

One experiment means one set of warm trial actors (`reuse_actors`) for the whole stage. Where the reference
CNN's learning rate must first be chosen on the search's validation split (search/execution/held_out.py),
that choice used to be an experiment of its own, whose two fresh actors imported the model stack again
(~10 s of CPU each on 2 CPUs) only to train three small U-Nets. Here the choosing trials come first, the
other methods' held-out runs go on beside them, and the reference's own held-out runs are released once every
choosing trial has reported: the learning rate with the best validation mIoU (the geometric middle of the
range if none reported one).

Tune asks `suggest` for a trial whenever a slot is free: a config, `None` (nothing now, ask again: the
choice is still being made) or `FINISHED`. The state is a few lists, pickled whole by `save` so that a
resumed run (Tuner.restore) goes on where the stage stopped.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.search import Searcher

CHOOSING = {"evaluate_test": False}  # a choosing trial's `run`: trained and validated on the search's split


def chosen_rate(scores: list[tuple[float, float]], rates: list[float]) -> float:
    """The rate with the best finite validation mIoU; the geometric middle of the rates when none has one."""
    finite = [(miou, rate) for miou, rate in scores if isinstance(miou, (int, float)) and math.isfinite(miou)]
    return max(finite)[1] if finite else math.sqrt(min(rates) * max(rates))


class HeldOutSchedule(Searcher):
    """Choosing trials first, then the held-out runs; the reference's runs once its learning rate is chosen."""

    def __init__(self, ready: list[dict[str, Any]], reference: dict[str, Any] | None = None,
                 rates: list[float] = (), reference_runs: list[dict[str, Any]] = ()) -> None:
        """`ready`: held-out trial configs that need nothing else; `reference`: the reference method's candidate,
        first trained on the search's split at each of `rates`, then run as `reference_runs` at the best."""
        super().__init__(metric=None, mode=None)
        choosing = [{"candidate": {**reference, "learning_rate": rate}, "run": dict(CHOOSING)}
                    for rate in rates] if reference is not None else []
        self.queue = [*choosing, *ready]
        self.reference, self.rates, self.reference_runs = reference, list(rates), list(reference_runs)
        self.choosing: dict[str, float] = {}  # Tune trial id of a choosing trial handed out -> its learning rate
        self.scores: dict[str, float] = {}  # choosing trial id -> its validation mIoU (NaN: none)
        self.learning_rate: float | None = None  # the chosen one

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.queue and self.reference is not None and self.learning_rate is None:
            if len(self.scores) < len(self.rates):
                return None  # the choice is still being made
            self.learning_rate = chosen_rate([(self.scores[t], self.choosing[t]) for t in self.scores], self.rates)
            candidate = {**self.reference, "learning_rate": self.learning_rate}
            self.queue = [{"candidate": candidate, "run": run} for run in self.reference_runs]
        if not self.queue:
            return Searcher.FINISHED
        config = self.queue.pop(0)
        if config["run"] == CHOOSING:
            self.choosing[trial_id] = config["candidate"]["learning_rate"]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.choosing:
            self.scores[trial_id] = math.nan if error or not result else result.get("val_miou", math.nan)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
