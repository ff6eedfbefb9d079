"""Live search progress as Ray metrics, so the dashboard's Metrics view (Prometheus/Grafana) can plot it.

A Ray Tune `Callback` in the driver: every finished trial updates three gauges tagged with the
search's name. Ray exports them from the driver's node at its metrics-export port, where the
dashboard's Prometheus scrapes everything else Ray publishes; names get Ray's `ray_` prefix there.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback
from ray.util.metrics import Gauge

TRIALS_DONE = "search_trials_done"
BEST_OBJECTIVE = "search_best_objective"
BEST_PEAK_GB = "search_best_peak_gb"


class LiveSearchMetrics(Callback):
    """Trials done, best objective so far and the best trial's peak GB, per search."""

    def __init__(self, search_name: str, metric: str = "objective") -> None:
        self.tags = {"search": search_name}
        self.metric = metric
        self.done = 0
        self.best: dict[str, Any] | None = None
        self.gauges: dict[str, Gauge] | None = None

    def setup(self, **info) -> None:
        # Gauges are made here, in the driver, once Ray is initialised.
        descriptions = {TRIALS_DONE: "trials finished (completed, stopped early, failed or infeasible)",
                        BEST_OBJECTIVE: "best validation mIoU per peak GB so far",
                        BEST_PEAK_GB: "peak GB per worker of the best trial so far"}
        self.gauges = {name: Gauge(name, description=text, tag_keys=("search",))
                       for name, text in descriptions.items()}
        self.publish()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        objective = result.get(self.metric)
        if isinstance(objective, (int, float)) and math.isfinite(objective) and not result.get("infeasible"):
            if self.best is None or objective > self.best[self.metric]:
                self.best = result
                self.publish()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self.publish()

    on_trial_error = on_trial_complete  # a failed trial is done too

    def publish(self) -> None:
        if self.gauges is None:
            return
        self.gauges[TRIALS_DONE].set(self.done, tags=self.tags)
        if self.best is not None:
            self.gauges[BEST_OBJECTIVE].set(float(self.best[self.metric]), tags=self.tags)
            self.gauges[BEST_PEAK_GB].set(float(self.best.get("peak_gb", math.nan)), tags=self.tags)
