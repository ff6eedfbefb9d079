"""After the search: the top-k configurations retrained over several seeds and scored on the test split.

The search chose on validation mIoU alone; this stage is the only one that reads the test tiles.
Each (configuration, seed) pair is one Tune trial of the same trial function the search ran, at
full budget (no ASHA), that runs Lightning's `test` after training. The first seed is the search's
own, so that run repeats the search trial exactly (CPU training is deterministic for a seed), and
the others show how much of a configuration's score is luck: the run's noise floor.

Beside them, with the same seeds, epochs, batch size and data, trains the tier-0 reference: a
small U-Net from scratch (em_backbones/families/cnn.py) at the geometric middle of the space's learning-rate
range. A foundation backbone that does not beat it has not earned its memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray import tune

from search.execution.trial import TrialSetup, run_confirmation
from search.execution.tuner import run_config, with_trial_resources
from search.outcome.export import write_results
from search.outcome.results import CONFIRM_SCHEMA, ranked, trial_rows
from search.outcome.statistics import CANDIDATE, REFERENCE, REFERENCE_BACKBONE
from search.plan.sampling import SEARCHED_PARAMS
from search.plan.schema import Space, TechniqueSpace


def candidates(rows: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """The parameters of the best `top_k` scored trials, in rank order, as trial configs."""
    return [{**{name: row[name] for name in SEARCHED_PARAMS}, "predicted_gb": row["predicted_gb"],
             "trial_number": None, "rank": rank, "role": CANDIDATE, "source_trial_id": row["trial_id"]}
            for rank, row in enumerate(ranked(rows)[:top_k], start=1)]


def reference_cnn(space: Space, winner: dict[str, Any]) -> dict[str, Any]:
    """The tier-0 U-Net as a trial config: no techniques, the winner's batch size, a neutral learning rate."""
    low, high = space.training.learning_rate
    return {"tier": 0, "backbone": REFERENCE_BACKBONE, **{k: v[0] for k, v in TechniqueSpace().choices.items()},
            "learning_rate": math.sqrt(low * high), "batch_size": winner["batch_size"], "predicted_gb": None,
            "trial_number": None, "rank": 0, "role": REFERENCE, "source_trial_id": None}


def confirm_tuner(space: Space, picks: list[dict[str, Any]], setup: TrialSetup, max_concurrent: int,
                  resume: bool = False) -> tune.Tuner:
    trainable = with_trial_resources(run_confirmation, setup)
    path = f"{setup.storage.rstrip('/')}/confirm"
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    seeds = [space.training.seed + i for i in range(space.evaluation.seeds)]
    return tune.Tuner(
        trainable,
        param_space={"candidate": tune.grid_search(picks), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=run_config("confirm", setup, space, live_metrics=False),
    )


def confirmation_rows(result_grid, space: Space) -> list[dict[str, Any]]:
    rows = trial_rows(result_grid, space.training.epochs, space.scale, params_key="candidate",
                      carry=("rank", "role", "source_trial_id"))
    return sorted(rows, key=lambda r: (r["rank"] == 0, r["rank"], r["seed"] if r["seed"] is not None else -1))


def write_confirmation(path: Path, rows: list[dict[str, Any]]) -> None:
    write_results(pa.Table.from_pylist(rows, schema=CONFIRM_SCHEMA), path)


def held_out_stage(space: Space, rows: list[dict[str, Any]], best: dict[str, Any] | None, session, resume: bool,
                   out: Path, echo) -> list[dict[str, Any]]:
    """The top-k (and the reference CNN) retrained over seeds and tested; rows also go to confirm.parquet."""
    if not space.evaluation.top_k or best is None:
        return []
    picks = candidates(rows, space.evaluation.top_k)
    if space.evaluation.reference_cnn:
        picks.append(reference_cnn(space, best))
    echo(f"held-out test: retraining the top {len(picks) - space.evaluation.reference_cnn} configuration(s)"
         + (" and the reference CNN" if space.evaluation.reference_cnn else "")
         + f" over {space.evaluation.seeds} seed(s) for {space.training.epochs} epochs each")
    grid = confirm_tuner(space, picks, session.setup, session.concurrent, resume).fit()
    confirmation = confirmation_rows(grid, space)
    write_confirmation(out / "confirm.parquet", confirmation)
    return confirmation
