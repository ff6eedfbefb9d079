"""After the search: results, best.yaml, the held-out folds (trained methods and baselines), summary, report.

Each step lives in its own module; this one calls them in order and times them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from search.data.storage import mirror_outputs
from search.data.tiles import PreparedData
from search.execution.cluster import dashboard_lines
from search.execution.held_out import held_out_stage
from search.execution.tracking import close_study
from search.outcome.export import export_winners, write_results
from search.outcome.report import write_report
from search.outcome.results import slot_utilisation, to_table, trial_rows
from search.outcome.statistics import held_out_summary
from search.outcome.summary import RunOutcome, closing_lines, write_summary
from search.plan.schema import Space


def fold_baselines_in_background(prepared: PreparedData, seed: int):
    """The baselines fitted on every held-out fold, on one thread while the folds' trainings run."""
    from threadpoolctl import threadpool_limits

    from search.outcome.baselines import fold_baselines

    def fit() -> dict:
        with threadpool_limits(limits=1):
            return fold_baselines(prepared, seed)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fold-baselines")
    future = pool.submit(fit)
    pool.shutdown(wait=False)
    return future


def finish_run(space: Space, session, prepared: PreparedData, out: Path, location: str, resume: bool, clock,
               echo, baselines: list[dict], floor: dict | None) -> RunOutcome:
    """Search, export, held-out stage, summary, report, mirror; each step timed."""
    for line in dashboard_lines(session.connection.context):
        echo(line)
    echo(f"run directory: {out}" + (f" (mirrored to {location})" if location != str(out) else "")
         + (" — resuming" if resume else ""))
    if floor is not None:
        echo(f"accuracy floor: val mIoU {floor['val_miou']:.4f} ({floor['source']}); a trial below it cannot win")
    echo(session.describe(space))
    with clock.step("search"):
        grid = session.tuner.fit()
    with clock.step("results and best.yaml"):
        close_study(session.tracking)
        rows = trial_rows(grid, space.training.epochs, space.scale, space.resources.memory_budget_gb,
                          floor=floor["val_miou"] if floor else None)
        write_results(to_table(rows), out / "results.parquet")
        utilisation = slot_utilisation(rows, session.concurrent, clock.seconds["search"])
        front, best = export_winners(space, rows, prepared, out, floor)
    folds = list(range(len(prepared.folds))) if prepared.folds else [None]
    with clock.step("held-out stage"):
        fitted = fold_baselines_in_background(prepared, space.training.seed) if space.evaluation.folds else None
        confirmation = held_out_stage(space, rows, best, folds, session, resume, out, echo)
        held_out = held_out_summary(confirmation, fitted.result() if fitted else {}, len(folds)) \
            if confirmation else {}
    # Nothing below needs Ray: a Ray this run started shuts down (about a second) while the summary and report
    # are written; a caller's own Ray stays up.
    closing = threading.Thread(target=session.connection.end, name="ray-shutdown")
    closing.start()
    outcome = RunOutcome(out, space, prepared, rows, best, front, confirmation, held_out, baselines, floor,
                         utilisation, session.concurrent, clock.seconds)
    summary = write_summary(outcome)
    with clock.step("report"):
        report = write_report(out)
    summary = write_summary(outcome)  # again, with the report's seconds in the breakdown
    if location != str(out):
        mirror_outputs(out, location)
    for line in closing_lines(outcome, summary):
        echo(line)
    echo(f"report: {report}")
    closing.join()
    return outcome
