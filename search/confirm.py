"""After the search: the top-k configurations retrained over several seeds and scored on the test split.

The search chose on validation mIoU alone; this stage is the only one that reads the test tiles.
Each (configuration, seed) pair is one Tune trial of the same Ray Train function the search ran,
at full budget (no ASHA), that runs Lightning's `test` after training. The first seed is the
search's own, so that run repeats the search trial exactly (CPU training is deterministic for a
seed), and the others show how much of a configuration's score is luck.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from ray import tune
from scipy.stats import trim_mean

from search.export import write_results
from search.results import SCHEMA, STATUS_COMPLETED, ranked, trial_rows
from search.space import SEARCHED_PARAMS, Space
from search.trial import TrialSetup, run_confirmation
from search.tuner import head_pinned, run_config

CONFIRM_SCHEMA = pa.schema([("rank", pa.int64()), ("source_trial_id", pa.string()), *SCHEMA])
IQM_MIN_RUNS = 4  # the interquartile mean of fewer runs trims nothing: it is just the mean


def candidates(rows: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """The parameters of the best `top_k` scored trials, in rank order, as trial configs."""
    return [{**{name: row[name] for name in SEARCHED_PARAMS}, "predicted_gb": row["predicted_gb"],
             "trial_number": None, "rank": rank, "source_trial_id": row["trial_id"]}
            for rank, row in enumerate(ranked(rows)[:top_k], start=1)]


def confirm_tuner(space: Space, picks: list[dict[str, Any]], setup: TrialSetup, max_concurrent: int,
                  resume: bool = False) -> tune.Tuner:
    trainable = head_pinned(run_confirmation, setup=setup)
    storage = setup.storage
    path = f"{storage.rstrip('/')}/confirm"
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    seeds = [space.seed + i for i in range(space.evaluation.seeds)]
    return tune.Tuner(
        trainable,
        param_space={"candidate": tune.grid_search(picks), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=run_config("confirm", storage, space, live_metrics=False),
    )


def confirmation_rows(result_grid, space: Space) -> list[dict[str, Any]]:
    rows = trial_rows(result_grid, space.epochs, space.scale, params_key="candidate",
                      carry=("rank", "source_trial_id"))
    return sorted(rows, key=lambda r: (r["rank"], r["seed"] if r["seed"] is not None else -1))


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation and (from IQM_MIN_RUNS runs) the interquartile mean."""
    if not values:
        return {"mean": None, "std": None, "iqm": None, "n": 0}
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "iqm": float(trim_mean(array, 0.25)) if len(array) >= IQM_MIN_RUNS else None, "n": len(array)}


def aggregate(confirm_rows: list[dict[str, Any]], search_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: its search score next to validation and test over the seeds that completed."""
    by_id = {r["trial_id"]: r for r in search_rows}
    summary = []
    for rank in sorted({r["rank"] for r in confirm_rows}):
        runs = [r for r in confirm_rows if r["rank"] == rank]
        done = [r for r in runs if r["status"] == STATUS_COMPLETED and r["test_miou"] is not None]
        source = by_id[runs[0]["source_trial_id"]]

        def values(key: str) -> list[float]:
            return [r[key] for r in done if r[key] is not None and math.isfinite(r[key])]

        summary.append({
            "rank": rank, "source_trial_id": source["trial_id"], "backbone": source["backbone"],
            "quantization_bits": source["quantization_bits"], "lora_rank": source["lora_rank"],
            "gradient_checkpointing": source["gradient_checkpointing"], "learning_rate": source["learning_rate"],
            "batch_size": source["batch_size"], "search_val_miou": source["val_miou"],
            "search_objective": source["objective"], "runs": len(runs), "completed": len(done),
            "seeds": [r["seed"] for r in done], "val_miou": spread(values("val_miou")),
            "test_miou": spread(values("test_miou")), "peak_gb": spread(values("peak_gb")),
            "objective": spread(values("objective")),
        })
    return summary


def write_confirmation(path: Path, rows: list[dict[str, Any]]) -> None:
    write_results(pa.Table.from_pylist(rows, schema=CONFIRM_SCHEMA), path)
