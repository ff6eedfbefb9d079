"""Held-out statistics: spread over seeds and the per-configuration summary (pure functions: no Ray, no torch)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import trim_mean

from em_backbones.techniques.config import searched_knobs
from search.outcome.results import STATUS_COMPLETED

REFERENCE_BACKBONE = "em_cnn"
CANDIDATE, REFERENCE = "candidate", "reference"
IQM_MIN_RUNS = 4  # the interquartile mean of fewer runs trims nothing: it is just the mean


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation and (from IQM_MIN_RUNS runs) the interquartile mean."""
    if not values:
        return {"mean": None, "std": None, "iqm": None, "n": 0}
    array = np.asarray(values, dtype=float)
    # One run has no spread: its standard deviation is undefined, not 0.
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else None,
            "iqm": float(trim_mean(array, 0.25)) if len(array) >= IQM_MIN_RUNS else None, "n": len(array)}


def spreads(done: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Val, test, peak GB and objective over the seeds that completed."""
    def values(key: str) -> list[float]:
        return [r[key] for r in done if r[key] is not None and math.isfinite(r[key])]

    return {key: spread(values(key)) for key in ("val_miou", "test_miou", "peak_gb", "objective")}


def aggregate(confirm_rows: list[dict[str, Any]], search_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: its search score next to validation and test over the seeds that completed."""
    by_id = {r["trial_id"]: r for r in search_rows}
    summary = []
    for rank in sorted({r["rank"] for r in confirm_rows if r["role"] == CANDIDATE}):
        runs = [r for r in confirm_rows if r["rank"] == rank and r["role"] == CANDIDATE]
        done = [r for r in runs if r["status"] == STATUS_COMPLETED and r["test_miou"] is not None]
        source = by_id[runs[0]["source_trial_id"]]
        summary.append({
            "rank": rank, "source_trial_id": source["trial_id"], "backbone": source["backbone"],
            **{name: source[name] for name in searched_knobs()}, "learning_rate": source["learning_rate"],
            "batch_size": source["batch_size"], "search_val_miou": source["val_miou"],
            "search_objective": source["objective"], "runs": len(runs), "completed": len(done),
            "seeds": [r["seed"] for r in done], **spreads(done),
        })
    return summary


def reference_summary(confirm_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The tier-0 CNN over its seeds (val, test, peak GB), or None when it did not train."""
    runs = [r for r in confirm_rows if r["role"] == REFERENCE]
    if not runs:
        return None
    done = [r for r in runs if r["status"] == STATUS_COMPLETED and r["test_miou"] is not None]
    return {"backbone": REFERENCE_BACKBONE, "learning_rate": runs[0]["learning_rate"],
            "batch_size": runs[0]["batch_size"], "runs": len(runs), "completed": len(done),
            "seeds": [r["seed"] for r in done], **spreads(done)}


