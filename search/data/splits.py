"""Whole chips to splits, stratified by class share: no chip on both sides, every class where the chips allow.

Validation and test chips, when not named (20% of the usable chips each, at least one), are
stratified by class share: of many seeded random assignments, the one where every class appears
in every split, then whose validation and test class shares are closest to the whole data's. With
a single validation chip, or one a class dominates, a search ranks configurations on whatever
that chip happens to hold. The rule reads only the labels' class counts, never a score.
"""

from __future__ import annotations

import random

import numpy as np

from search.data.spec import DataError

CANDIDATE_SPLITS = 512  # seeded random assignments scored when validation and test chips are not named


def class_shares(counts: np.ndarray) -> np.ndarray:
    return counts / max(int(counts.sum()), 1)


def split_score(parts: dict[str, list[str]], histograms: dict[str, np.ndarray], overall: np.ndarray) -> tuple:
    """Lower is better: every class in every split first, then validation and test class shares close to the data's."""
    totals = {split: sum((histograms[c] for c in chips), np.zeros_like(overall)) for split, chips in parts.items()}
    missing = sum(int(((overall > 0) & (totals[split] == 0)).sum()) for split in ("val", "train", "test")
                  if parts[split])
    distance = sum(0.5 * float(np.abs(class_shares(totals[split]) - class_shares(overall)).sum())
                   for split in ("val", "test") if parts[split])
    return missing, round(distance, 9)


def split_chips(histograms: dict[str, np.ndarray], val: list[str], test: list[str], seed: int,
                val_fraction: float = 0.2, test_fraction: float = 0.2) -> dict[str, list[str]]:
    """Whole chips to splits: named chips where given; the others stratified by class share.

    Among CANDIDATE_SPLITS seeded random assignments of the unnamed chips, the one where every class
    of the data appears in every split (where the chips allow), then whose validation and test class
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
        score = split_score(parts, histograms, overall)
        if best is None or score < best[0]:
            best = (score, parts)
    parts = best[1]
    if not parts["train"] or not parts["val"]:
        raise DataError(f"data: need at least one training and one validation chip; {len(chip_ids)} usable "
                        f"chip(s) give train {len(parts['train'])}, val {len(parts['val'])}, test {len(parts['test'])}")
    return parts
