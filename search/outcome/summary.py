"""What a run found, in two forms: summary.json (read by `search report` and by people) and the closing lines.

Both say: the best trial, how it compares with the baselines and the reference CNN on validation
and test against the run's measured noise (search/outcome/verdict.py), the held-out figures, the chips
that were skipped, and where the wall time went.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.data.tiles import PreparedData
from search.plan.schema import Space

RANDOM_INIT = "random init"


def weights_of(space: Space) -> dict[str, str]:
    """Each searched backbone's weights: the local path the space names, or random init."""
    return {name: space.weights.get(name, RANDOM_INIT) for name in space.backbones}


@dataclass
class RunOutcome:
    out_dir: Path
    space: Space
    prepared: PreparedData
    rows: list[dict]
    best: dict | None
    front: list[dict]
    confirmation: list[dict]  # one row per (retrained configuration, seed)
    held_out: list[dict]  # per retrained top-k configuration: val / test spreads over seeds
    reference: dict | None  # the tier-0 CNN over seeds
    baselines: list[dict]  # search/outcome/baselines.py, on the same val/test tiles
    comparisons: list[dict]  # search/outcome/verdict.py
    utilisation: float
    concurrent: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        return self.timings.get("search", 0.0)


def outcome_of(out: Path, space: Space, prepared: PreparedData, rows: list[dict], best: dict | None,
               front: list[dict], confirmation: list[dict], baselines: list[dict], utilisation: float,
               concurrent: int, timings: dict[str, float]) -> RunOutcome:
    from search.outcome.statistics import aggregate, reference_summary
    from search.outcome.verdict import comparisons

    held_out = aggregate(confirmation, rows)
    reference = reference_summary(confirmation)
    return RunOutcome(out, space, prepared, rows, best, front, confirmation, held_out, reference, baselines,
                      comparisons(best, held_out, reference, baselines), utilisation, concurrent, timings)


def trial_overheads(rows: list[dict]) -> dict[str, Any]:
    """Per-trial overhead (wall - training seconds) in fresh and in reused processes; import seconds paid."""
    def overhead(r: dict) -> float | None:
        return r["wall_seconds"] - r["train_seconds"] if r["wall_seconds"] and r["train_seconds"] else None

    fresh = [o for r in rows if r.get("trials_before_in_process") == 0 and (o := overhead(r)) is not None]
    warm = [o for r in rows if (r.get("trials_before_in_process") or 0) > 0 and (o := overhead(r)) is not None]
    return {"processes": len({r["pid"] for r in rows if r.get("pid")}),
            "import_seconds": sum(r.get("import_seconds") or 0.0 for r in rows),
            "median_overhead_s_fresh_process": statistics.median(fresh) if fresh else None,
            "median_overhead_s_reused_process": statistics.median(warm) if warm else None,
            "trials_in_reused_processes": len(warm)}


def summary_of(outcome: RunOutcome) -> dict[str, Any]:
    rows, best, space, prepared = outcome.rows, outcome.best, outcome.space, outcome.prepared
    return {
        "trials": len(rows), "statuses": {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}},
        "objective": space.objective, "scheduler": space.training.scheduler, "weights": weights_of(space),
        "best_trial": best["trial_id"] if best else None, "best_val_miou": best["val_miou"] if best else None,
        "best_objective": best["objective"] if best else None,
        "epochs": {"searched": best["epochs_run"] if best else None, "exported": space.training.epochs},
        "pareto_front": [r["trial_id"] for r in outcome.front],
        "baselines": outcome.baselines, "reference_cnn": outcome.reference,
        "comparisons": outcome.comparisons,
        "splits": prepared.splits, "tiles": {s: len(t) for s, t in prepared.tiles.items()},
        "class_pixels": prepared.class_pixels, "bad_chips": prepared.bad_chips,
        "unlabelled_tiles_dropped": prepared.unlabelled_tiles,
        "slot_utilisation": outcome.utilisation, "concurrent_slots": outcome.concurrent,
        "wall_seconds": outcome.wall_seconds, "timings": outcome.timings, "trial_processes": trial_overheads(rows),
        "held_out": outcome.held_out,
    }


def write_summary(outcome: RunOutcome) -> None:
    (outcome.out_dir / "summary.json").write_text(json.dumps(summary_of(outcome), indent=1, default=str))


def format_spread(stats: dict[str, float | None]) -> str:
    """`mean ± std` (std from two runs on), the IQM where there were enough runs; a dash where none completed."""
    if stats["mean"] is None:
        return "–"
    text = f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] is not None else " (1 run)")
    return text + (f" (IQM {stats['iqm']:.4f})" if stats["iqm"] is not None else "")


def held_out_lines(summary: list[dict], reference: dict | None = None) -> list[str]:
    """The top-k retrained: search val mIoU, then val and test mean ± std over the seeds."""
    if not summary:
        return []
    lines = ["", "held-out test (top configurations retrained; mean ± std over seeds):"]
    for entry in summary:
        val, test = entry["val_miou"], entry["test_miou"]
        if not entry["completed"]:
            lines.append(f"  #{entry['rank']} {entry['backbone']}: no seed completed")
            continue
        lines.append(f"  #{entry['rank']} {entry['backbone']} ({entry['source_trial_id']}): search val "
                     f"{entry['search_val_miou']:.4f} | val {format_spread(val)} | "
                     f"test {format_spread(test)} ({entry['completed']}/{entry['runs']} seeds)")
    if reference is not None:
        lines.append(f"  reference small CNN (U-Net, lr {reference['learning_rate']:.1e}): val "
                     f"{format_spread(reference['val_miou'])} | test {format_spread(reference['test_miou'])} "
                     f"({reference['completed']}/{reference['runs']} seeds)")
    return lines


def timing_line(timings: dict[str, float]) -> str:
    total = sum(timings.values())
    return "wall time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()) + \
        f" (total {total:.1f} s)"


def closing_lines(outcome: RunOutcome) -> list[str]:
    """What `search run` prints at the end: trials, the winner against every reference, held-out, timings."""
    from search.outcome.results import summary_table
    from search.outcome.verdict import verdict_lines

    best, out = outcome.best, outcome.out_dir
    lines = ["", summary_table(outcome.rows), ""]
    for bad in outcome.prepared.bad_chips:
        lines.append(f"skipped chip {bad['chip']}: {bad['reason']}")
    if best is None:
        lines.append("no trial produced a score; no best.yaml written")
    else:
        seen, epochs = best["epochs_run"], outcome.space.training.epochs
        weights = weights_of(outcome.space)[best["backbone"]]
        lines += [f"best: {best['backbone']} ({best['trial_id']}) val mIoU {best['val_miou']:.4f}, "
                  f"{best['peak_gb']:.4f} GB; searched {seen} of {epochs} epochs, best.yaml trains {epochs} "
                  f"(weights: {weights})", f"best.yaml: {out / 'best.yaml'}"]
        if outcome.comparisons:
            noise = "noise: the combined seed-to-seed std of the two compared"
            lines += ["", f"winner against every reference (held-out means over seeds where retrained; {noise}):",
                      *verdict_lines(outcome.comparisons)]
    lines += held_out_lines(outcome.held_out, outcome.reference)
    overheads = trial_overheads(outcome.rows)
    lines.append(f"slot utilisation: {outcome.utilisation:.1%} of {outcome.concurrent} slot(s) x "
                 f"{outcome.wall_seconds:.0f} s search spent training; {overheads['processes']} trial process(es), "
                 f"median overhead per trial {_seconds(overheads['median_overhead_s_reused_process'])} reused, "
                 f"{_seconds(overheads['median_overhead_s_fresh_process'])} fresh")
    lines.append(timing_line(outcome.timings))
    lines.append(f"results: {out / 'results.parquet'}")
    return lines


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"
