"""Whole chips to splits and folds, stratified by class share: no chip on both sides, every class where it can be.

The search's validation chips, when not named (20% of the usable chips, at least one), are
stratified by class share: of many seeded random assignments, the one where every class appears
in both parts, then whose validation class shares are closest to the whole data's. With a single
validation chip, or one a class dominates, a search ranks configurations on whatever that chip
happens to hold. The held-out stage's k folds follow the same rule over every usable chip. Both
read only the labels' class counts, never a score.
"""

from __future__ import annotations

import random

import numpy as np

from search.data.spec import DataError

CANDIDATE_SPLITS = 512  # seeded random assignments scored when validation and test chips are not named


def class_shares(counts: np.ndarray) -> np.ndarray:
    return counts / max(int(counts.sum()), 1)


def split_score(parts: dict[str, list[str]], histograms: dict[str, np.ndarray], overall: np.ndarray,
                held_out: tuple[str, ...] = ("val",)) -> tuple:
    """Lower is better: every class in every part first, then the held-out parts' class shares close to the data's."""
    totals = {name: sum((histograms[c] for c in chips), np.zeros_like(overall)) for name, chips in parts.items()}
    missing = sum(int(((overall > 0) & (totals[name] == 0)).sum()) for name in parts if parts[name])
    distance = sum(0.5 * float(np.abs(class_shares(totals[name]) - class_shares(overall)).sum())
                   for name in held_out if parts.get(name))
    return missing, round(distance, 9)


def split_chips(histograms: dict[str, np.ndarray], val: list[str], test: list[str], seed: int,
                val_fraction: float = 0.2, test_fraction: float = 0.0) -> dict[str, list[str]]:
    """The search's chips: validation (named, or stratified by class share), training, and any kept out (test).

    Among CANDIDATE_SPLITS seeded random assignments of the unnamed chips, the one where every class
    of the data appears in every part (where the chips allow), then whose validation and test class
    shares are closest (total variation distance) to the whole data's: so validation can rank
    configurations on the classes the task has, in about the proportions it has them.
    """
    chip_ids = sorted(histograms)
    unknown = [c for c in [*val, *test] if c not in histograms]
    if unknown:
        raise DataError(f"data.val_chips/test_chips: no usable chip {unknown[0]!r}; usable: {chip_ids}")
    free = [c for c in chip_ids if c not in val and c not in test]
    n_val = 0 if val else (max(1, round(val_fraction * len(chip_ids))) if len(free) > 1 else 0)
    n_test = 0 if test or test_fraction == 0 else min(max(1, round(test_fraction * len(chip_ids))),
                                                       max(len(free) - n_val - 1, 0))
    overall = sum(histograms.values())
    rng = random.Random(seed)
    best = None
    for _ in range(CANDIDATE_SPLITS if n_val + n_test else 1):
        order = rng.sample(free, len(free))
        parts = {"val": sorted([*val, *order[:n_val]]), "test": sorted([*test, *order[n_val:n_val + n_test]]),
                 "train": sorted(order[n_val + n_test:])}
        score = split_score(parts, histograms, overall, ("val", "test"))
        if best is None or score < best[0]:
            best = (score, parts)
    parts = best[1]
    if not parts["train"] or not parts["val"]:
        raise DataError(f"data: need at least one training and one validation chip; {len(chip_ids)} usable "
                        f"chip(s) give train {len(parts['train'])}, val {len(parts['val'])}, test {len(parts['test'])}")
    return parts if parts["test"] else {"train": parts["train"], "val": parts["val"]}


def make_folds(histograms: dict[str, np.ndarray], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """k folds over every usable chip, each chip in exactly one test fold, stratified like the search's split.

    Among CANDIDATE_SPLITS seeded random orders dealt round-robin into `folds` test sets (sizes
    differ by at most one chip), the one where every class appears in every fold's training chips,
    then whose test folds' class shares are closest to the whole data's. `folds` larger than the
    chips gives one chip per fold (leave one out).
    """
    chip_ids = sorted(histograms)
    k = min(folds, len(chip_ids))
    if k < 2:
        raise DataError(f"evaluation.folds: {len(chip_ids)} usable chip(s) cannot be split into test folds "
                        "(at least 2 needed); set evaluation.folds: 0 or give more chips")
    overall = sum(histograms.values())
    rng = random.Random(seed)
    best = None
    for _ in range(CANDIDATE_SPLITS):
        order = rng.sample(chip_ids, len(chip_ids))
        tests = [sorted(order[j::k]) for j in range(k)]
        parts = {f"train{j}": sorted(set(chip_ids) - set(test)) for j, test in enumerate(tests)}
        parts.update({f"test{j}": test for j, test in enumerate(tests)})
        totals = {j: sum((histograms[c] for c in parts[f"train{j}"]), np.zeros_like(overall)) for j in range(k)}
        missing = sum(int(((overall > 0) & (totals[j] == 0)).sum()) for j in range(k))
        distance = split_score({f"test{j}": tests[j] for j in range(k)}, histograms, overall,
                               tuple(f"test{j}" for j in range(k)))[1]
        score = (missing, distance)
        if best is None or score < best[0]:
            best = (score, tests)
    tests = sorted(best[1])
    return [{"train": sorted(set(chip_ids) - set(test)), "test": test} for test in tests]
