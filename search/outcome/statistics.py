"""The held-out stage's figures: every method's test mIoU (fold mean and pooled) and per chip, and the winner's leads.

Pure functions over confirm.parquet's rows (one per method, fold and seed, each with its test
chips' confusion matrices) and the baselines' per-fold confusions: no Ray, no torch. The tests
themselves (intervals, verdicts, false-positive rate) are search/outcome/comparison.py.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from search.outcome.comparison import Scores, Shapes, method_interval, paired_lead, per_chip_miou, pooled_miou
from search.outcome.results import STATUS_COMPLETED

REFERENCE_BACKBONE = "em_cnn"
WINNER_ROLE, RUNNER_UP_ROLE, REFERENCE_ROLE = "winner", "runner_up", "reference"
ROLE_NAMES = {WINNER_ROLE: "winner", RUNNER_UP_ROLE: "runner-up", REFERENCE_ROLE: "small CNN (tier-0 U-Net)"}


def role_scores(confirm_rows: list[dict[str, Any]], role: str, folds: int) -> Scores | None:
    """[fold][seed] → {chip: confusion} of one method; None unless every fold has a completed, tested run."""
    scores: Scores = [[] for _ in range(folds)]
    for row in confirm_rows:
        if row["role"] == role and row["status"] == STATUS_COMPLETED and row.get("chip_confusion"):
            chips = {chip: np.asarray(m) for chip, m in json.loads(row["chip_confusion"]).items()}
            scores[row["fold"] or 0].append(chips)
    return scores if all(scores) else None


def baseline_scores(entry: dict[str, Any]) -> Scores:
    return [[{chip: np.asarray(m) for chip, m in seed.items()} for seed in fold] for fold in entry["folds"]]


def method_entry(name: str, kind: str, scores: Scores, detail: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "kind": kind, **detail, "test_miou": method_interval(scores).as_dict(),
            "pooled_test_miou": pooled_miou(scores), "per_chip": per_chip_miou(scores)}


def held_out_summary(confirm_rows: list[dict[str, Any]], baselines: dict[str, dict], folds: int) -> dict[str, Any]:
    """Per method (the trained ones and every baseline): pooled test mIoU with its 95% interval over folds and
    each chip's own; per reference: the winner's paired lead and its verdict; the run's shapes."""
    trained: dict[str, tuple[dict, Scores]] = {}
    for role in (WINNER_ROLE, RUNNER_UP_ROLE, REFERENCE_ROLE):
        scores = role_scores(confirm_rows, role, folds)
        first = next((r for r in confirm_rows if r["role"] == role), None)
        if scores is not None and first is not None:
            detail = {"role": role, "backbone": first["backbone"], "source_trial_id": first["source_trial_id"],
                      "learning_rate": first["learning_rate"], "batch_size": first["batch_size"]}
            trained[role] = (method_entry(f"{ROLE_NAMES[role]} {first['backbone']}", role, scores, detail), scores)
    others = {name: (method_entry(name, entry["kind"], baseline_scores(entry), {"detail": entry["detail"]}),
                     baseline_scores(entry)) for name, entry in baselines.items()}
    entries = [entry for entry, _ in [*trained.values(), *others.values()]]
    comparisons = []
    if WINNER_ROLE in trained:
        mine = trained[WINNER_ROLE][1]
        for entry, scores in [*(v for k, v in trained.items() if k != WINNER_ROLE), *others.values()]:
            comparisons.append({"against": entry["name"], "kind": entry["kind"],
                                "winner_test_miou": method_interval(mine).estimate,
                                "other_test_miou": method_interval(scores).estimate,
                                "lead": paired_lead(mine, scores).as_dict()})
    chips = sorted({chip for e in entries for chip in e["per_chip"]})
    seeds = max((len(fold) for _, s in trained.values() for fold in s), default=1)
    shapes = Shapes(folds=folds, chips_per_fold=max(1, round(len(chips) / max(folds, 1))), seeds=seeds)
    return {"methods": entries, "comparisons": comparisons, "chips": chips, "shapes": shapes.__dict__}
