"""The accuracy-vs-memory Pareto front of a run's trials, and the rule that picks best.yaml on it.

The front is Optuna's own non-domination (what a two-objective study's `best_trials` returns),
applied to the trials' measured (val mIoU, peak GB), so single-objective runs get the same front
in their report as `objective: pareto` runs. Rule for best.yaml on the front: the highest
accuracy per GB. That point is always on the front (a trial beating it on both axes would have a
higher ratio), so both objective modes export the same kind of winner; a pareto search differs in
how it explores (multi-objective TPE spreads trials along the front) and in exporting every point
of the front as `pareto/*.yaml`.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.outcome.results import scored

DIRECTIONS = ["maximize", "minimize"]  # val mIoU, peak GB


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored trials that no other trial beats on both val mIoU and peak GB, lightest first."""
    points = [r for r in scored(rows) if r["peak_gb"] is not None]
    if not points:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=DIRECTIONS)
    study.add_trials([optuna.trial.create_trial(values=[r["val_miou"], r["peak_gb"]], user_attrs={"row": i})
                      for i, r in enumerate(points)])
    front = [points[t.user_attrs["row"]] for t in study.best_trials]
    return sorted(front, key=lambda r: (r["peak_gb"], -r["val_miou"]))


def pick_on_front(front: list[dict[str, Any]]) -> dict[str, Any] | None:
    """best.yaml's rule: the front's highest validation mIoU per GB, among the points that clear the floor if any do."""
    return max(front, key=lambda r: (r.get("above_floor") is not False, r["objective"])) if front else None
