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
own validation split from three values spanning the space's range (`reference_learning_rate`), as
a candidate's is chosen by the search. A base config's own datamodule has no chips to fold: its
test split is the one fold, and only seeds vary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray import tune

from search.execution.trial import TrialSetup, run_confirmation, run_trial
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


def reference_learning_rate(space: Space, batch_size: int, setup: TrialSetup, concurrent: int, resume: bool,
                            echo) -> float:
    """The reference CNN's learning rate where the space does not search it: the best validation mIoU of three
    log-spaced rates over the space's range, trained on the search's split for the search's epochs."""
    low, high = space.training.learning_rate
    rates = [low * (high / low) ** (i / (REFERENCE_LEARNING_RATES - 1)) for i in range(REFERENCE_LEARNING_RATES)]
    echo(f"reference CNN: choosing its learning rate on validation from {', '.join(f'{r:.1e}' for r in rates)}")
    trainable = with_trial_resources(run_trial, setup)
    grid = restored_or_new("reference_lr", trainable, setup, resume, lambda: tune.Tuner(
        trainable,
        param_space={**reference_config(space, batch_size, 0.0), "learning_rate": tune.grid_search(rates)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=run_config("reference_lr", setup, space, live_metrics=False, label="reference lr",
                              total=len(rates), echo=echo),
    )).fit()
    scores = [(r.metrics.get("val_miou", -math.inf), r.config["learning_rate"]) for r in grid
              if r.metrics and math.isfinite(r.metrics.get("val_miou", math.nan))]
    return max(scores)[1] if scores else math.sqrt(low * high)


def fold_seed(space: Space, fold: int, seed_index: int) -> int:
    """Every (fold, seed) trains with its own seed, none of them the search's."""
    return space.training.seed + 1 + fold * space.evaluation.seeds + seed_index


def held_out_tuner(space: Space, picks: list[dict[str, Any]], folds: list[int | None], setup: TrialSetup,
                   max_concurrent: int, resume: bool = False, echo=print) -> tune.Tuner:
    trainable = with_trial_resources(run_confirmation, setup)
    runs = [{"fold": fold, "seed": fold_seed(space, fold or 0, s)} for fold in folds
            for s in range(space.evaluation.seeds)]
    return restored_or_new("held_out", trainable, setup, resume, lambda: tune.Tuner(
        trainable,
        param_space={"candidate": tune.grid_search(picks), "run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=run_config("held_out", setup, space, live_metrics=False, label="held-out run",
                              total=len(picks) * len(runs), echo=echo),
    ))


def held_out_rows(result_grid, space: Space) -> list[dict[str, Any]]:
    rows = trial_rows(result_grid, space.training.epochs, space.scale, params_key="candidate",
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
    if space.evaluation.reference_cnn and not any(p["role"] == REFERENCE_ROLE for p in picks) \
            and best["backbone"] != REFERENCE_BACKBONE:
        rate = reference_learning_rate(space, best["batch_size"], session.setup, session.concurrent, resume, echo)
        picks.append(reference_config(space, best["batch_size"], rate))
    echo(f"held-out test: {', '.join(p['role'] for p in picks)} x {len(folds)} fold(s) x "
         f"{space.evaluation.seeds} seed(s), {space.training.epochs} epochs each")
    grid = held_out_tuner(space, picks, folds, session.setup, session.concurrent, resume, echo).fit()
    confirmation = held_out_rows(grid, space)
    write_results(pa.Table.from_pylist(confirmation, schema=CONFIRM_SCHEMA), out / "confirm.parquet")
    return confirmation
