"""Does the winner mean something? Its lead over the runner-up and every baseline, against the run's own noise.

Noise is measured, not assumed: the held-out stage retrains each configuration over several seeds,
and its seed-to-seed standard deviation is how much a score moves when nothing but the seed
changes. The noise of a comparison is the combined spread of the two things compared,
sqrt(std_winner² + std_other²): a deterministic baseline (a constant, a threshold, a fitted
classifier) adds none, the runner-up and the reference CNN add their own. A lead counts as real
when it is larger than that. The run's noise floor (the largest seed-to-seed std of any retrained
configuration) is reported beside it. Without a held-out stage (or with one seed) the run has not
measured its noise, and says so.

The winner's figures are its held-out means over seeds where they exist (validation and test),
else its search validation score; baselines are scored on the same tiles (search/outcome/baselines.py).
"""

from __future__ import annotations

import math
from typing import Any


def noise_floor(held_out: list[dict[str, Any]], reference: dict[str, Any] | None) -> dict[str, float | None]:
    entries = [*held_out, *([reference] if reference else [])]
    floor = {}
    for split in ("val", "test"):
        stds = [e[f"{split}_miou"]["std"] for e in entries if e[f"{split}_miou"]["std"] is not None]
        floor[split] = max(stds) if stds else None
    return floor


Score = dict[str, tuple[float, float | None] | None]  # split → (mean, seed std or None), None: not scored


def scored(entry: dict[str, Any]) -> Score:
    return {split: (entry[f"{split}_miou"]["mean"], entry[f"{split}_miou"]["std"])
            if entry[f"{split}_miou"]["mean"] is not None else None for split in ("val", "test")}


def winner_scores(best: dict[str, Any], held_out: list[dict[str, Any]]) -> Score:
    first = next((e for e in held_out if e["rank"] == 1 and e["completed"]), None)
    return scored(first) if first is not None else {"val": (best["val_miou"], None), "test": None}


def references(held_out: list[dict[str, Any]], reference: dict[str, Any] | None,
               baselines: list[dict[str, Any]]) -> list[tuple[str, str, Score]]:
    """(name, kind, scores) of everything the winner is measured against; baselines have no seed spread."""
    out = []
    runner_up = next((e for e in held_out if e["rank"] == 2 and e["completed"]), None)
    if runner_up is not None:
        out.append((f"runner-up {runner_up['backbone']} ({runner_up['source_trial_id']})", "runner_up",
                    scored(runner_up)))
    if reference is not None and reference["completed"]:
        out.append(("small CNN (tier-0 U-Net)", "cnn", scored(reference)))
    for b in baselines:
        out.append((b["name"], b["kind"], {split: None if b[f"{split}_miou"] is None else (b[f"{split}_miou"], 0.0)
                                           for split in ("val", "test")}))
    return out


def combined(mine: float | None, theirs: float | None) -> float | None:
    return None if mine is None or theirs is None else math.hypot(mine, theirs)


def comparisons(best: dict[str, Any] | None, held_out: list[dict[str, Any]], reference: dict[str, Any] | None,
                baselines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (reference, split): the winner's score, the other's, the lead and whether it beats the noise."""
    if best is None:
        return []
    mine, floor = winner_scores(best, held_out), noise_floor(held_out, reference)
    rows = []
    for name, kind, theirs in references(held_out, reference, baselines):
        for split in ("val", "test"):
            if mine[split] is None or theirs[split] is None:
                continue
            (m, m_std), (o, o_std) = mine[split], theirs[split]
            noise = combined(m_std, o_std)
            rows.append({"against": name, "kind": kind, "split": split, "winner": m, "other": o, "lead": m - o,
                         "noise": noise, "noise_floor": floor[split],
                         "beyond_noise": None if noise is None else bool(m - o > noise),
                         "verdict": verdict(m - o, noise)})
    return rows


def verdict(lead: float, noise: float | None) -> str:
    """ahead / within noise / behind: the lead measured against the noise of the comparison."""
    if noise is None:
        return "ahead, noise not measured" if lead > 0 else "behind, noise not measured"
    if lead > noise:
        return "ahead beyond noise"
    return "within noise" if lead >= -noise else "BEHIND beyond noise"


def verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per reference: the lead on val and test, and whether it exceeds the noise floor."""
    lines = []
    for name in dict.fromkeys(r["against"] for r in rows):
        mine = [r for r in rows if r["against"] == name]
        parts = []
        for r in mine:
            noise = "" if r["noise"] is None else f" {r['noise']:.4f}"
            parts.append(f"{r['split']} {r['winner']:.4f} vs {r['other']:.4f} "
                         f"({r['lead']:+.4f}: {r['verdict']}{noise})")
        lines.append(f"  vs {name}: " + "; ".join(parts))
    return lines
