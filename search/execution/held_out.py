"""After the search: k-fold cross-validation over chips of the winner, its runner-up and the reference CNN.

The search selected on its own validation split alone; this stage is the only one that reads
test labels. The usable chips are dealt into `evaluation.folds` test folds by the stratified rule
(search/data/splits.py): every chip is tested exactly once, by models trained on the other folds'
chips, normalised by those chips' statistics, for the epochs the search trains (`training.epochs`,
what best.yaml trains). Each (method, fold, seed) is one Tune trial of the same trial function
the search ran, with its own seed (distinct per fold: a model's luck with one seed cannot repeat
across folds), which runs Lightning's `test` after training and reports each test chip's
confusion matrix. The baselines are fitted on the same folds beside it (search/outcome/baselines.py).

The reference CNN is the best `em_cnn` trial of the search where the space searches tier 0 (on
equal footing: same sampler, same budget); otherwise its learning rate is chosen on the search's
own validation split from three values spanning the space's range (`reference_learning_rates`), as
a candidate's is chosen by the search, in the same Tune experiment as the held-out runs (so the same warm
trial actors train both: search/execution/held_out_schedule.py). A base config's own datamodule has no chips
to fold: its test split is the one fold, and only seeds vary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray import tune

from search.execution.held_out_schedule import CHOOSING, HeldOutSchedule
from search.execution.trial import TrialSetup, run_confirmation
from search.execution.tuner import restored_or_new, run_config, with_trial_resources
from search.outcome.export import write_results
from search.outcome.results import CONFIRM_SCHEMA, ranked, trial_rows
from search.outcome.statistics import REFERENCE_BACKBONE, REFERENCE_ROLE, RUNNER_UP_ROLE, WINNER_ROLE
from search.plan.sampling import SEARCHED_PARAMS
from search.plan.schema import Space, TechniqueSpace

REFERENCE_LEARNING_RATES = 3  # log-spaced over the space's range when the reference is not searched


def as_method(row: dict[str, Any], role: str) -> dict[str, Any]:
    """A searched trial's parameters as the config of the held-out runs of one method."""
    return {**{name: row[name] for name in SEARCHED_PARAMS}, "predicted_gb": row["predicted_gb"],
            "gpu_share": row.get("gpu_share"), "trial_number": None, "role": role, "source_trial_id": row["trial_id"]}


def methods(space: Space, rows: list[dict[str, Any]], best: dict[str, Any]) -> list[dict[str, Any]]:
    """The winner, its runner-up and (where the space searches tier 0) the best CNN trial that is neither."""
    order = [best, *[r for r in ranked(rows) if r["trial_id"] != best["trial_id"]]]
    picks = [as_method(order[0], WINNER_ROLE)]
    if len(order) > 1:
        picks.append(as_method(order[1], RUNNER_UP_ROLE))
    if 0 in space.tiers and space.evaluation.reference_cnn:
        chosen = {p["source_trial_id"] for p in picks}
        cnn = next((r for r in order if r["backbone"] == REFERENCE_BACKBONE and r["trial_id"] not in chosen), None)
        if cnn is not None:
            picks.append(as_method(cnn, REFERENCE_ROLE))
    return picks


def reference_config(space: Space, batch_size: int, learning_rate: float) -> dict[str, Any]:
    """The tier-0 U-Net as a trial config: no techniques, the winner's batch size."""
    return {"tier": 0, "backbone": REFERENCE_BACKBONE, **{k: v[0] for k, v in TechniqueSpace().choices.items()},
            "learning_rate": learning_rate, "batch_size": batch_size, "predicted_gb": None, "trial_number": None,
            "role": REFERENCE_ROLE, "source_trial_id": None}


def reference_learning_rates(space: Space) -> list[float]:
    """Where the space does not search the reference CNN: three log-spaced rates over the space's range, each
    trained on the search's split for the search's epochs; the best validation mIoU is its rate."""
    low, high = space.training.learning_rate
    return [low * (high / low) ** (i / (REFERENCE_LEARNING_RATES - 1)) for i in range(REFERENCE_LEARNING_RATES)]


def fold_seed(space: Space, fold: int, seed_index: int) -> int:
    """Every (fold, seed) trains with its own seed, none of them the search's."""
    return space.training.seed + 1 + fold * space.evaluation.seeds + seed_index


def held_out_tuner(space: Space, picks: list[dict[str, Any]], folds: list[int | None], setup: TrialSetup,
                   max_concurrent: int, resume: bool = False, echo=print,
                   reference: dict[str, Any] | None = None) -> tune.Tuner:
    """One experiment for the whole stage: every pick on every (fold, seed), and `reference` (a candidate whose
    learning rate is still to be chosen) first on the search's split at each of its rates, then on every run."""
    trainable = with_trial_resources(run_confirmation, setup)
    runs = [{"fold": fold, "seed": fold_seed(space, fold or 0, s)} for fold in folds
            for s in range(space.evaluation.seeds)]
    rates = reference_learning_rates(space) if reference is not None else []
    schedule = HeldOutSchedule([{"candidate": p, "run": run} for p in picks for run in runs], reference, rates,
                               runs if reference is not None else [])
    total = (len(picks) + (reference is not None)) * len(runs) + len(rates)
    return restored_or_new("held_out", trainable, setup, resume, lambda: tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=schedule, num_samples=-1, max_concurrent_trials=max_concurrent,
                                    reuse_actors=True),
        run_config=run_config("held_out", setup, space, live_metrics=False, label="held-out run", total=total,
                              echo=echo),
    ))


def held_out_rows(result_grid, space: Space) -> list[dict[str, Any]]:
    """Every held-out run's row; the trials that chose the reference's learning rate are not held-out runs."""
    runs = [r for r in result_grid if (r.config or {}).get("run") != CHOOSING]
    rows = trial_rows(runs, space.training.epochs, space.scale, params_key="candidate",
                      carry=("role", "source_trial_id"))
    order = {WINNER_ROLE: 0, RUNNER_UP_ROLE: 1, REFERENCE_ROLE: 2}
    return sorted(rows, key=lambda r: (order.get(r["role"], 3), r["fold"] if r["fold"] is not None else -1,
                                       r["seed"] if r["seed"] is not None else -1))


def held_out_stage(space: Space, rows: list[dict[str, Any]], best: dict[str, Any] | None, folds: list[int | None],
                   session, resume: bool, out: Path, echo) -> list[dict[str, Any]]:
    """Every method trained and tested on every fold; rows also go to confirm.parquet."""
    if not space.evaluation.folds or best is None:
        return []
    picks = methods(space, rows, best)
    reference = None
    if space.evaluation.reference_cnn and not any(p["role"] == REFERENCE_ROLE for p in picks) \
            and best["backbone"] != REFERENCE_BACKBONE:
        reference = reference_config(space, best["batch_size"], math.nan)
        rates = ", ".join(f"{r:.1e}" for r in reference_learning_rates(space))
        echo(f"reference CNN: its learning rate chosen on validation from {rates}, beside the held-out runs")
    roles = [p["role"] for p in picks] + ([REFERENCE_ROLE] if reference else [])
    echo(f"held-out test: {', '.join(roles)} x {len(folds)} fold(s) x {space.evaluation.seeds} seed(s), "
         f"{space.training.epochs} epochs each")
    grid = held_out_tuner(space, picks, folds, session.setup, session.concurrent, resume, echo, reference).fit()
    confirmation = held_out_rows(grid, space)
    write_results(pa.Table.from_pylist(confirmation, schema=CONFIRM_SCHEMA), out / "confirm.parquet")
    return confirmation
