"""`search bench asha SPACE`: the compute ASHA saves against full budgets, in trial-epochs.

The space runs twice under the same seeds (Optuna's sampler, the chip splits, every trial's
training seed): once with ASHA as written and once with every trial trained for all its epochs
(`training.scheduler: fifo`); the held-out stage is off in both. Target: accuracy per GB within 2%
of the best the full-budget run found. Compute to target: the trial-epochs spent, counting trials
in the order Optuna proposed them, up to and including the first trial whose result reaches the
target (sequential accounting: concurrency changes wall time, not trial-epochs). The first
`n_startup_trials` proposals are the same in both runs; after that TPE sees ASHA's partial scores
and the runs may diverge, which is part of what is being measured.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from search.execution.cluster import connect, probe_reachable
from search.execution.run import run_search
from search.outcome.export import write_results

TOLERANCE = 0.02


@dataclass(frozen=True)
class ArmResult:
    scheduler: str
    trials: int
    trial_epochs: int  # every epoch every trial ran
    best_objective: float | None
    epochs_to_target: int | None  # None: never within TOLERANCE of the target
    trial_at_target: str | None
    wall_seconds: float


def best_objective(rows: list[dict[str, Any]]) -> float | None:
    return max((r["objective"] for r in rows if r["objective"] is not None), default=None)


def epochs_to_target(rows: list[dict[str, Any]], target: float) -> tuple[int | None, str | None]:
    """Trial-epochs spent, in proposal order, until a trial's accuracy per GB reaches `target`."""
    spent = 0
    for row in sorted(rows, key=lambda r: (r["trial_number"] is None, r["trial_number"] or 0)):
        spent += row["epochs_run"] or 0
        if row["objective"] is not None and row["objective"] >= target:
            return spent, row["trial_id"]
    return None, None


def arm_space(raw: dict[str, Any], scheduler: str) -> dict[str, Any]:
    """The user's space with one scheduler and the held-out stage off; everything else as written."""
    space = {**raw, "name": f"{raw.get('name', 'space')}-{scheduler}", "evaluation": {"folds": 0}}
    space["training"] = {**(raw.get("training") or {}), "scheduler": scheduler}
    return space


def run_asha_bench(space_path: Path, out: Path, address: str | None = None, echo=print) -> list[ArmResult]:
    from search.plan.space import load_space

    load_space(space_path)  # a bad space fails here, in one line, before any run directory exists
    raw = yaml.safe_load(Path(space_path).read_text())
    out.mkdir(parents=True, exist_ok=True)
    outcomes = {}
    if address is not None:
        probe_reachable(address)
    connection = connect(address)  # one Ray start for both arms; each run_search leaves a Ray it did not start running
    try:
        for scheduler in ("fifo", "asha"):
            arm_file = out / f"{scheduler}.yaml"
            arm_file.write_text(yaml.safe_dump(arm_space(raw, scheduler), sort_keys=False))
            outcomes[scheduler] = run_search(arm_file, out / f"{scheduler}-run", address, echo=lambda *_: None)
            echo(f"{scheduler}: {len(outcomes[scheduler].rows)} trials in {outcomes[scheduler].wall_seconds:.0f} s")
    finally:
        connection.end()
    best_full = best_objective(outcomes["fifo"].rows)
    target = None if best_full is None else (1 - TOLERANCE) * best_full
    results = []
    for scheduler, outcome in outcomes.items():
        spent, trial = epochs_to_target(outcome.rows, target) if target is not None else (None, None)
        results.append(ArmResult(
            scheduler, len(outcome.rows), sum(r["epochs_run"] or 0 for r in outcome.rows),
            best_objective(outcome.rows),
            spent, trial, outcome.wall_seconds))
    write_results(pa.Table.from_pylist([asdict(r) for r in results]), out / "asha_bench.parquet")
    echo(bench_table(results, target))
    return results


def bench_table(results: list[ArmResult], target: float | None) -> str:
    def cell(value, width: int, spec: str = "") -> str:
        return format(value, f">{width}{spec}") if value is not None else format("never", f">{width}")

    header = f"{'scheduler':<10} {'trials':>6} {'trial-epochs':>12} {'best mIoU/GB':>12} {'epochs to target':>16} " \
             f"{'wall s':>7}"
    lines = [f"target: within {TOLERANCE:.0%} of the full-budget best = "
             f"{'-' if target is None else format(target, '.3f')} mIoU/GB", header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.scheduler:<10} {r.trials:>6} {r.trial_epochs:>12} {cell(r.best_objective, 12, '.3f')} "
                     f"{cell(r.epochs_to_target, 16)} {r.wall_seconds:>7.0f}")
    by = {r.scheduler: r for r in results}
    if by["asha"].epochs_to_target and by["fifo"].epochs_to_target:
        lines.append(f"ASHA / full budget, trial-epochs to target: "
                     f"{by['asha'].epochs_to_target / by['fifo'].epochs_to_target:.2f}; "
                     f"in all: {by['asha'].trial_epochs / by['fifo'].trial_epochs:.2f}")
    else:
        lines.append("ASHA never came within the target of the full-budget best")
    return "\n".join(lines)


def asha_command(args) -> int:
    """`python -m search bench asha SPACE`."""
    run_asha_bench(Path(args.space), args.out or Path("runs") / f"asha-bench-{time.strftime('%Y%m%d-%H%M%S')}",
                   args.address)
    return 0
