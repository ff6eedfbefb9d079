"""Does the winner mean something? Its paired test lead over every reference, and whether it cleared the floor.

The leads and their 95% intervals come from the held-out folds (search/outcome/comparison.py): "ahead" or
"BEHIND" only where the interval excludes zero. The floor is the accuracy a trial had to reach on the
search's validation split to be allowed to win: `objective.min_val_miou`, by default the best non-deep
baseline there (search/outcome/baselines.py: accuracy_floor).
"""

from __future__ import annotations

from typing import Any


def floor_line(floor: dict[str, Any] | None, best: dict[str, Any] | None) -> str | None:
    if floor is None or best is None:
        return None
    cleared = best["val_miou"] is not None and best["val_miou"] >= floor["val_miou"]
    return (f"accuracy floor: val mIoU {floor['val_miou']:.4f} ({floor['source']}): "
            f"{'cleared' if cleared else 'NOT cleared'}")


def no_winner_line(floor: dict[str, Any] | None, cleared: bool) -> str | None:
    """The run's last word when no configuration reached the floor: which baseline is the better answer."""
    if cleared or floor is None:
        return None
    return (f"no configuration cleared the accuracy floor (val mIoU {floor['val_miou']:.4f}): "
            f"{floor['source']} is the better answer here")


def lead_text(comparison: dict[str, Any]) -> str:
    """`-0.0080 [-0.0622, +0.0461] no difference shown (power 50%)`: the lead, its 95% CI, the verdict."""
    lead = comparison["lead"]
    if lead["low"] is None:
        return f"{lead['estimate']:+.4f} (no interval: one fold and one seed)"
    power = lead.get("power_at_0.05")
    return (f"{lead['estimate']:+.4f} [{lead['low']:+.4f}, {lead['high']:+.4f}] {lead['verdict']}"
            + (f" (power {power:.0%})" if power is not None else ""))


def verdict_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """One line per reference: the winner's test-mIoU lead, its 95% interval over folds, the verdict. The name
    column is as wide as the longest name: a cut name ("small CNN (tier-0 U-Net) e") hides which model it is."""
    width = max((len(c["against"]) for c in comparisons), default=0)
    return [f"  vs {c['against']:<{width}} {lead_text(c)}" for c in comparisons]
