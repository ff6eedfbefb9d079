"""`search run`: space file → prepared data → Ray Tune search → results.parquet, best.yaml, summary."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.tune import Tuner

from search.confirm import aggregate, candidates, confirm_tuner, confirmation_rows, write_confirmation
from search.data import SAMPLE_DATA, DataError, PreparedData, prepare
from search.export import write_best_config, write_results
from search.front import pareto_front, pick_on_front
from search.report import format_spread, write_report
from search.results import best_row, majority_class_miou, slot_utilisation, summary_table, to_table, trial_rows
from search.space import Space, load_space
from search.storage import check_writable, run_location, upload
from search.terratorch_config import terratorch_config
from search.cluster import connect, dashboard_lines, probe_reachable
from search.trial import TrialSetup
from search.tuner import build_tuner, plan_resources, trial_setup


class RunError(RuntimeError):
    """A run that cannot start; the run directory is removed before this is raised."""


@dataclass
class RunOutcome:
    out_dir: Path
    rows: list[dict]
    best: dict | None
    baseline_class: int
    baseline_miou: float
    oracle_class: int
    oracle_miou: float
    utilisation: float
    wall_seconds: float
    front: list[dict] = field(default_factory=list)
    confirmation: list[dict] = field(default_factory=list)  # one row per (top-k configuration, seed)


def default_out_dir(space: Space) -> Path:
    return Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim_out_dir(out: Path) -> None:
    """Create the run directory; refuse one that already holds files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out}: exists and is not empty; choose a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"--out {out}: cannot create the run directory ({err.strerror})") from None


def prepare_data(space: Space, out: Path) -> PreparedData:
    root = Path(space.data.root).expanduser() if space.data.root else SAMPLE_DATA
    return prepare(root, space.data.layout, list(space.data.modalities), space.data.num_classes,
                   space.data.tile_size, out / "data", list(space.data.val_chips), list(space.data.test_chips),
                   space.seed)


RUN_RECORD = "run.json"  # where this run's Tune experiment and tiles live, for --resume


def start_run(space_path: str | Path, space: Space, out: Path, storage: str | None) -> tuple[PreparedData, str, str]:
    """A new run directory: tiles prepared (and uploaded), space copied, run.json written last."""
    location = run_location(storage, out)
    if storage:
        check_writable(location)
    claim_out_dir(out)
    try:
        prepared = prepare_data(space, out)
        if space.evaluation.top_k and not prepared.tiles["test"]:
            raise DataError("evaluation.top_k: retraining on held-out chips needs a test split; name "
                            "data.test_chips or give at least 3 chips (or set evaluation.top_k: 0)")
        shutil.copyfile(space_path, out / "space.yaml")
        data = str(prepared.root)
        if storage:
            data = f"{location}/data"
            upload(prepared.root, data)
        (out / RUN_RECORD).write_text(json.dumps({"location": location, "data": data}))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return prepared, location, data


def reopen_run(space_path: str | Path, out: Path) -> tuple[PreparedData, str, str]:
    """An interrupted run directory, checked to be one this space started."""
    record = out / RUN_RECORD
    meta = json.loads(record.read_text()) if record.is_file() else None
    if meta is None or not Tuner.can_restore(f"{meta['location']}/tune"):
        raise RunError(f"--resume {out}: holds no search run to resume (no {RUN_RECORD} with a Tune experiment)")
    if Path(space_path).read_bytes() != (out / "space.yaml").read_bytes():
        raise RunError(f"--resume {out}: {space_path} differs from the space.yaml the run started with")
    return PreparedData.load(out / "data"), meta["location"], meta["data"]


def run_search(space_path: str | Path, out: Path | None = None, address: str | None = None,
               storage: str | None = None, resume: bool = False, echo=print) -> RunOutcome:
    space = load_space(space_path)
    if resume and out is None:
        raise RunError("--resume needs --out DIR, the run directory to continue")
    out = (out or default_out_dir(space)).resolve()
    if address is not None:
        probe_reachable(address)
    if resume:
        prepared, location, data = reopen_run(space_path, out)
    else:
        prepared, location, data = start_run(space_path, space, out, storage)
    try:
        context = connect(address)
        resources, concurrent = plan_resources(ray.cluster_resources(), space)
        setup = trial_setup(space, (out / "space.yaml").read_text(), data, location, resources)
        tuner = build_tuner(space, out, setup, concurrent, resume)
    except BaseException:
        if not resume:
            shutil.rmtree(out, ignore_errors=True)
        raise
    for line in dashboard_lines(context):
        echo(line)
    echo(f"run directory: {out}" + (f" (mirrored to {location})" if location != str(out) else "")
         + (" — resuming" if resume else ""))
    echo(f"trials: {space.num_samples}, at most {concurrent} at once, each {resources.num_workers} worker(s) x "
         f"{resources.cpus_per_worker:g} CPU / {resources.gpus_per_worker:g} GPU")

    started = time.monotonic()
    grid = tuner.fit()
    wall = time.monotonic() - started

    rows = trial_rows(grid, space.epochs, space.scale, space.resources.memory_budget_gb)
    write_results(to_table(rows), out / "results.parquet")
    front, best = export_winners(space, rows, prepared, out)
    confirmation = held_out_stage(space, rows, setup, concurrent, resume, out, echo) if best is not None else []

    baseline_class, baseline = majority_class_miou(prepared, fit_on="train")
    oracle_class, oracle = majority_class_miou(prepared, fit_on="val")
    outcome = RunOutcome(out, rows, best, baseline_class, baseline, oracle_class, oracle,
                         slot_utilisation(rows, concurrent, wall), wall, front, confirmation)
    write_summary(outcome, space, concurrent)
    report = write_report(out)
    if location != str(out):
        mirror_outputs(out, location)
    for line in closing_lines(outcome, concurrent):
        echo(line)
    echo(f"report: {report}")
    return outcome


def write_summary(outcome: RunOutcome, space: Space, concurrent: int) -> None:
    """summary.json: the run's headline figures, read by `search report` and by people."""
    rows, best = outcome.rows, outcome.best
    (outcome.out_dir / "summary.json").write_text(json.dumps({
        "trials": len(rows), "statuses": {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}},
        "objective": space.objective, "scheduler": space.scheduler,
        "best_trial": best["trial_id"] if best else None, "best_val_miou": best["val_miou"] if best else None,
        "best_objective": best["objective"] if best else None, "pareto_front": [r["trial_id"] for r in outcome.front],
        "majority_class": outcome.baseline_class, "majority_class_val_miou": outcome.baseline_miou,
        "val_majority_class": outcome.oracle_class, "val_majority_class_val_miou": outcome.oracle_miou,
        "slot_utilisation": outcome.utilisation, "concurrent_slots": concurrent, "wall_seconds": outcome.wall_seconds,
        "held_out": aggregate(outcome.confirmation, rows),
    }, indent=1))


def mirror_outputs(out: Path, location: str) -> None:
    """Copy the run's outputs to the --storage URI, beside the tiles and Tune results already there."""
    for name in ("space.yaml", "results.parquet", "best.yaml", "summary.json", "optuna_journal.log",
                 "confirm.parquet", "report.html", "report", "pareto"):
        if (out / name).exists():
            upload(out / name, f"{location}/{name}")


def closing_lines(outcome: RunOutcome, concurrent: int) -> list[str]:
    """What `search run` prints at the end: the trial table, the winner against the baselines, held-out figures."""
    best, out = outcome.best, outcome.out_dir
    lines = ["", summary_table(outcome.rows), ""]
    if best is not None:
        lines += [f"best: {best['backbone']} val mIoU {best['val_miou']:.4f}; on the same validation chips, "
                  f"predicting the validation majority class ({outcome.oracle_class}) everywhere scores "
                  f"{outcome.oracle_miou:.4f}, the training majority class ({outcome.baseline_class}) "
                  f"{outcome.baseline_miou:.4f}", f"best.yaml: {out / 'best.yaml'}"]
    else:
        lines.append("no trial produced a score; no best.yaml written")
    lines.append(f"slot utilisation: {outcome.utilisation:.1%} of {concurrent} slot(s) x "
                 f"{outcome.wall_seconds:.0f} s wall spent training")
    lines += held_out_lines(aggregate(outcome.confirmation, outcome.rows))
    lines.append(f"results: {out / 'results.parquet'}")
    return lines


def export_winners(space: Space, rows: list[dict], prepared: PreparedData, out: Path) -> tuple[list[dict], dict | None]:
    """best.yaml (and, for `objective: pareto`, every front point in pareto/); returns (front, best)."""
    front = pareto_front(rows)
    best = pick_on_front(front) if space.objective == "pareto" else best_row(rows)
    if best is not None:
        write_trial_config(space, best, prepared, out / "best.yaml", f"Best trial {best['trial_id']} of {space.name}")
    if space.objective == "pareto":
        (out / "pareto").mkdir(exist_ok=True)
        for i, row in enumerate(front):
            write_trial_config(space, row, prepared, out / "pareto" / f"{i:02d}_{row['trial_id']}.yaml",
                               f"Pareto front point {i} (lightest first) of {space.name}: trial {row['trial_id']}")
    return front, best


def held_out_stage(space: Space, rows: list[dict], setup: TrialSetup, concurrent: int, resume: bool, out: Path,
                   echo) -> list[dict]:
    """The top-k retrained over seeds and tested (search/confirm.py); rows also go to confirm.parquet."""
    if not space.evaluation.top_k:
        return []
    picks = candidates(rows, space.evaluation.top_k)
    echo(f"held-out test: retraining the top {len(picks)} configuration(s) over {space.evaluation.seeds} "
         f"seed(s) for {space.epochs} epochs each")
    confirmation = confirmation_rows(confirm_tuner(space, picks, setup, concurrent, resume).fit(), space)
    write_confirmation(out / "confirm.parquet", confirmation)
    return confirmation


def write_trial_config(space: Space, row: dict, prepared: PreparedData, path: Path, title: str) -> None:
    header = (f"{title}: val mIoU {row['val_miou']:.4f}, peak {row['peak_gb']:.4f} GB ({row['memory_method']}), "
              f"objective {row['objective']:.3f}.\nTrain it with: terratorch fit -c {path.name}")
    write_best_config(terratorch_config(space, row, prepared), path, header)


def held_out_lines(summary: list[dict]) -> list[str]:
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
    return lines
