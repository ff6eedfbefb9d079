"""What a run found, in two forms: summary.json (read by `search report` and by people) and the closing lines.

Both say: the best trial and whether it cleared the accuracy floor; on the held-out folds, every
method's pooled test mIoU with its 95% interval and the winner's paired lead over each reference
(search/outcome/verdict.py); the false-positive rate and power of that test at the run's shapes;
the chips that were skipped; where the wall time went.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.data.tiles import PreparedData
from search.outcome.comparison import Shapes, false_positive_rate, simulation_error
from search.outcome.results import summary_table
from search.outcome.verdict import floor_line, no_winner_line, verdict_lines
from search.plan.schema import Space

RANDOM_INIT = "random init"
SIMULATED_RUNS = 1000  # A/A and A/B comparisons simulated at the run's shapes (about 3 s)
KNOWN_LEAD = 0.05  # the lead whose detection rate is reported as power


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
    confirmation: list[dict]  # one row per (method, fold, seed) of the held-out stage
    held_out: dict  # search/outcome/statistics.py: methods, comparisons, chips, shapes
    baselines: list[dict]  # search/outcome/baselines.py, fitted on the search's training chips, scored on val
    floor: dict | None  # {"val_miou", "source"}: the accuracy a trial had to reach to win
    utilisation: float
    concurrent: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        return self.timings.get("search", 0.0)

    @property
    def cleared_floor(self) -> bool:
        return self.best is not None and self.best.get("above_floor") is not False


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


def test_properties(held_out: dict) -> dict[str, Any] | None:
    """The paired test's false-positive rate simulated at this run's folds, chips per fold and seeds (A/A:
    search/outcome/comparison.py), and, per comparison, its power to see a KNOWN_LEAD at its own spread."""
    if not held_out.get("comparisons"):
        return None
    shapes = Shapes(**held_out["shapes"])
    return {"shapes": held_out["shapes"], "simulated_runs": SIMULATED_RUNS,
            "false_positive_rate": false_positive_rate(shapes, runs=SIMULATED_RUNS),
            "false_positive_rate_error": simulation_error(0.05, SIMULATED_RUNS),
            f"power_at_lead_{KNOWN_LEAD}": {c["against"]: c["lead"][f"power_at_{KNOWN_LEAD}"]
                                           for c in held_out["comparisons"]}}


def summary_of(outcome: RunOutcome) -> dict[str, Any]:
    rows, best, space, prepared = outcome.rows, outcome.best, outcome.space, outcome.prepared
    return {
        "trials": len(rows), "statuses": {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}},
        "objective": space.objective, "scheduler": space.training.scheduler, "weights": weights_of(space),
        "memory_overhead_gb": space.memory.overhead_gb, "accuracy_floor": outcome.floor,
        "cleared_floor": outcome.cleared_floor,
        "answer": (best["trial_id"] if outcome.cleared_floor else (outcome.floor or {}).get("source")) if best else None,
        "best_trial": best["trial_id"] if best else None, "best_val_miou": best["val_miou"] if best else None,
        "best_objective": best["objective"] if best else None,
        "epochs": {"searched": best["epochs_run"] if best else None, "exported": space.training.epochs},
        "pareto_front": [r["trial_id"] for r in outcome.front],
        "baselines": outcome.baselines, "held_out": outcome.held_out,
        "test_properties": test_properties(outcome.held_out),
        "splits": prepared.splits, "folds": prepared.folds, "tiles": {s: len(t) for s, t in prepared.tiles.items()},
        "class_pixels": prepared.class_pixels, "bad_chips": prepared.bad_chips,
        "unlabelled_tiles_dropped": prepared.unlabelled_tiles,
        "slot_utilisation": outcome.utilisation, "concurrent_slots": outcome.concurrent,
        "wall_seconds": outcome.wall_seconds, "timings": outcome.timings, "trial_processes": trial_overheads(rows),
    }


def write_summary(outcome: RunOutcome) -> dict[str, Any]:
    summary = summary_of(outcome)
    (outcome.out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def held_out_lines(held_out: dict) -> list[str]:
    """Every method's pooled test mIoU over the folds, with its 95% interval."""
    if not held_out.get("methods"):
        return []
    shapes = held_out["shapes"]
    lines = ["", f"held-out test mIoU ({shapes['folds']} folds, every chip tested once): mean of folds [95% CI], "
                 "pooled"]
    width = max(len(method["name"]) for method in held_out["methods"])  # whole names, aligned
    for method in held_out["methods"]:
        t = method["test_miou"]
        span = "" if t["low"] is None else f" [{t['low']:.4f}, {t['high']:.4f}]"
        lines.append(f"  {method['name']:<{width}} {t['estimate']:.4f}{span:<18}  {method['pooled_test_miou']:.4f}")
    return lines


def timing_line(timings: dict[str, float]) -> str:
    total = sum(timings.values())
    return "wall time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()) + \
        f" (total {total:.1f} s)"


def winner_lines(outcome: RunOutcome, summary: dict[str, Any]) -> list[str]:
    best, out = outcome.best, outcome.out_dir
    seen, epochs = best["epochs_run"], outcome.space.training.epochs
    weights = weights_of(outcome.space)[best["backbone"]]
    lines = [f"best: {best['backbone']} ({best['trial_id']}), val mIoU {best['val_miou']:.4f}, "
             f"{best['objective']:.3f} mIoU/GB",
             f"  {best['peak_gb']:.4f} GB peak + {outcome.space.memory.overhead_gb:.3f} GB per process = "
             f"{best['occupied_gb']:.4f} GB on its device; weights: {weights}",
             f"  searched {seen} of {epochs} epochs; best.yaml trains {epochs}: {out / 'best.yaml'}"]
    line = floor_line(outcome.floor, best)
    lines += [line] if line else []
    comparisons = outcome.held_out.get("comparisons") or []
    if comparisons:
        properties = summary["test_properties"]
        lines += ["", "the winner's test-mIoU lead over every reference, 95% CI over the held-out folds",
                  f"('ahead'/'BEHIND' only where it excludes 0; simulated A/A rate at these shapes "
                  f"{properties['false_positive_rate']:.1%}; power: to see a 0.05 lead):", *verdict_lines(comparisons)]
    return lines


def closing_lines(outcome: RunOutcome, summary: dict[str, Any]) -> list[str]:
    """What `search run` prints at the end: trials, the winner against every reference, held-out, timings; when no
    configuration cleared the floor, the last line says so."""
    lines = ["", summary_table(outcome.rows), ""]
    for bad in outcome.prepared.bad_chips:
        lines.append(f"skipped chip {bad['chip']}: {bad['reason']}")
    if outcome.best is None:
        lines.append("no trial produced a score; no best.yaml written")
    else:
        lines += winner_lines(outcome, summary)
    lines += held_out_lines(outcome.held_out)
    overheads = trial_overheads(outcome.rows)
    lines.append(f"slot utilisation: {outcome.utilisation:.1%} of {outcome.concurrent} slot(s) x "
                 f"{outcome.wall_seconds:.0f} s search spent training; {overheads['processes']} trial process(es), "
                 f"median overhead per trial {_seconds(overheads['median_overhead_s_reused_process'])} reused, "
                 f"{_seconds(overheads['median_overhead_s_fresh_process'])} fresh")
    lines.append(timing_line(outcome.timings))
    lines.append(f"results: {outcome.out_dir / 'results.parquet'}")
    last = no_winner_line(outcome.floor, outcome.cleared_floor) if outcome.best is not None else None
    return lines + ([last] if last else [])


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"
