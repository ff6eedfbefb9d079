"""Ray Tune's ResultGrid → one row per trial (results.parquet), ranking, and the printed trial table.

Light on purpose (no torch): the driver and `search report` use it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import pyarrow as pa

from em_backbones.techniques.config import searched_knobs, technique_knobs
from search.plan.faults import CAUSE_INFEASIBLE, cause_of
from search.plan.sampling import SEARCHED_PARAMS
from search.training.system_metrics import COLUMNS as SYSTEM_COLUMNS

STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"
STATUS_FAILED = "failed"
STATUS_INFEASIBLE = "infeasible"  # predicted over the memory budget: never trained
STATUS_RETRIED = "oom_retried"  # ran out of GPU memory and ran again with more room (its retry has its own row)

def _float(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _same(value: Any) -> Any:
    return value


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value or []]


def _floats(value: Any) -> list[float]:
    return [float(v) for v in value or []]


@dataclass(frozen=True)
class Column:
    """One results column: its Arrow type and, for columns copied from a trial's last report, the metric
    it is read from and how (`metric` None: derived in `trial_rows` from the trial as a whole)."""

    name: str
    type: pa.DataType
    metric: str | None = None
    read: Callable[[Any], Any] = _float


def _reported(name: str, type_: pa.DataType = pa.float64(), metric: str | None = None,
              read: Callable[[Any], Any] = _float) -> Column:
    return Column(name, type_, metric or name, read)


# Every column of results.parquet (and of confirm.parquet after its own three), in order: the one statement
# of what a trial row holds.
COLUMNS: tuple[Column, ...] = (
    Column("trial_id", pa.string()),
    Column("status", pa.string()),
    Column("error", pa.string()),
    Column("cause", pa.string()),
    Column("trial_number", pa.int64()),
    Column("tier", pa.int64()),
    Column("backbone", pa.string()),
    Column("scale", pa.string()),
    *(Column(name, getattr(pa, technique_knobs()[name].column)()) for name in searched_knobs()),
    Column("learning_rate", pa.float64()),
    Column("batch_size", pa.int64()),
    Column("epochs_run", pa.int64()),
    _reported("val_miou"),
    _reported("peak_gb"),
    _reported("occupied_gb"),  # peak + memory.overhead_gb: what the trial would occupy on its device
    Column("predicted_gb", pa.float64()),
    Column("gpu_share", pa.float64()),  # packed by memory: the GPU fraction it asked for (last attempt's)
    Column("oom_retries", pa.int64()),  # 1: it ran out of memory once and ran again with twice its share
    Column("retry_of", pa.string()),  # that first attempt's trial id
    _reported("gpu_ids", pa.list_(pa.string()), read=_strings),  # the GPUs Ray gave its worker
    _reported("memory_method", pa.string(), read=_same),
    _reported("objective"),  # val_miou / occupied_gb
    Column("above_floor", pa.bool_()),  # val mIoU >= objective.min_val_miou: only such a trial can win
    _reported("param_gb"),
    _reported("grad_gb"),
    _reported("optimizer_gb"),
    _reported("activation_gb"),
    _reported("wall_seconds", metric="time_total_s"),
    Column("started_at", pa.timestamp("ms", tz="UTC")),
    Column("finished_at", pa.timestamp("ms", tz="UTC")),
    _reported("train_seconds"),
    _reported("node_ip", pa.string(), metric="worker_node_ip", read=_same),
    _reported("workers", pa.int64(), metric="world_size", read=_same),
    _reported("worker_node_ids", pa.list_(pa.string()), read=_strings),
    _reported("worker_peak_gb", pa.list_(pa.float64()), read=_floats),
    _reported("train_batches", pa.int64(), read=_same),
    _reported("train_loss"),
    Column("val_miou_per_epoch", pa.list_(pa.float64())),
    _reported("seed", pa.int64(), read=_same),
    _reported("fold", pa.int64(), read=_same),  # held-out runs: the test fold (search trials: none)
    _reported("test_miou"),
    # the process that trained it, and how many trials it had trained before (0: fresh)
    _reported("pid", pa.int64(), read=_same),
    _reported("trials_before_in_process", pa.int64(), read=_same),
    _reported("import_seconds"),  # importing the model stack (0 in a warm process)
    _reported("setup_seconds"),  # config, datamodule, model and Trainer built
    _reported("fit_setup_seconds"),  # then Lightning's set-up inside fit, until the first batch
    _reported("rss_mb_at_start"),
    # how busy it kept its machine, mean and peak over its training (search/training/system_metrics.py)
    *(_reported(name) for name in SYSTEM_COLUMNS),
    _reported("chip_confusion", pa.string(), read=_json),  # held-out runs: {test chip: confusion matrix}
)
SCHEMA = pa.schema([(c.name, c.type) for c in COLUMNS])
# confirm.parquet: which method and fold a held-out run is, then a trial row.
CONFIRM_SCHEMA = pa.schema([("role", pa.string()), ("source_trial_id", pa.string()), *SCHEMA])
NOT_EPOCH_REPORTS = ("fault", "infeasible", "test_miou")  # reports a trial makes besides its epochs


def _utc(seconds: float | None) -> datetime | None:
    """To the millisecond, as the columns store it (trials report their own timestamps: training/worker.py)."""
    return None if seconds is None else datetime.fromtimestamp(round(seconds, 3), tz=timezone.utc)


def _span(metrics: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """When the trial started and made its last report: the report's own time (`reported_at`; Tune's whole-second
    `timestamp` for a report without one, such as an infeasible configuration's) less Tune's `time_total_s`."""
    finished = _float(metrics.get("reported_at", metrics.get("timestamp")))
    total = _float(metrics.get("time_total_s"))
    started = finished - total if finished is not None and total is not None else None
    return _utc(started), _utc(finished)


def epoch_curve(history) -> list[float]:
    """Validation mIoU of each epoch a trial reported (its fault, infeasible or test reports left out)."""
    if history is None or "val_miou" not in history:
        return []
    for column in NOT_EPOCH_REPORTS:
        if column in history:
            history = history[history[column].isna()]
    return [_float(v) for v in history["val_miou"]]  # None where an epoch had no validation (a held-out fold)


def trial_rows(result_grid, max_epochs: int, scale: str, budget_gb: float | None = None,
               params_key: str | None = None, carry: tuple[str, ...] = (),
               floor: float | None = None) -> list[dict[str, Any]]:
    """One dict per trial with SCHEMA's columns (plus `carry`); status tells completed / stopped / failed.

    `params_key`: where the trial's parameters sit in its config when they are not the config itself;
    `floor`: the accuracy floor (objective.min_val_miou), None when there is none.
    """
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        config = (result.config or {}).get(params_key, {}) if params_key else (result.config or {})
        curve = epoch_curve(result.metrics_dataframe)
        epochs_run = len(curve)
        fault, cause = metrics.get("fault"), None
        if fault:  # ASHA may stop the trial on its fault report before its error lands
            status, error, cause = STATUS_FAILED, metrics.get("fault_error"), fault
        elif result.error is not None:
            status, error = STATUS_FAILED, f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1]}"
            cause = cause_of(str(result.error))
        elif metrics.get("infeasible"):
            status, cause = STATUS_INFEASIBLE, CAUSE_INFEASIBLE
            error = metrics.get("infeasible_reason") or \
                f"predicted {config.get('predicted_gb', float('nan')):.4g} GB > memory_budget_gb {budget_gb:g}"
        elif epochs_run < max_epochs:
            status, error = STATUS_STOPPED, None
        else:
            status, error = STATUS_COMPLETED, None
        trial_id = metrics.get("trial_id") or result.path.rstrip("/").split("/")[-1]
        row = {name: config.get(name) for name in (*SEARCHED_PARAMS, *carry)}
        row.update({c.name: c.read(metrics.get(c.metric)) for c in COLUMNS if c.metric is not None})
        row.update({
            "trial_id": str(trial_id),
            "status": status,
            "error": error,
            "cause": cause,
            "trial_number": config.get("trial_number"),
            "scale": scale,
            "epochs_run": epochs_run,
            "predicted_gb": _float(config.get("predicted_gb", metrics.get("predicted_gb"))),
            "gpu_share": _float(config.get("gpu_share")),
            "oom_retries": config.get("oom_retries", 0),
            "val_miou_per_epoch": curve,
        })
        row["above_floor"] = None if row["val_miou"] is None else floor is None or row["val_miou"] >= floor
        row["started_at"], row["finished_at"] = _span(metrics)
        row["retry_of"] = config.get("retry_of")
        rows.append(row)
    retried = {r["retry_of"] for r in rows if r["retry_of"]}
    for row in rows:
        if row["trial_id"] in retried:
            row["status"] = STATUS_RETRIED
    return sorted(rows, key=lambda r: r["trial_id"])


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that trained and were scored (completed or stopped early by ASHA)."""
    return [r for r in rows if r["objective"] is not None and r["val_miou"] is not None
            and r["status"] not in (STATUS_FAILED, STATUS_INFEASIBLE, STATUS_RETRIED)]


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored trials, those that clear the accuracy floor first, each group best accuracy per GB first: a trial
    below the floor can win only when none clears it (and the run then says so)."""
    return sorted(scored(rows), key=lambda r: (r.get("above_floor") is False, -r["objective"]))


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next(iter(ranked(rows)), None)


def slot_utilisation(rows: list[dict[str, Any]], slots: int, search_wall_seconds: float) -> float:
    """Share of the trial slots' wall time (slots x search wall time) spent inside training."""
    busy = sum(r["train_seconds"] or 0.0 for r in rows)
    return busy / (slots * search_wall_seconds) if search_wall_seconds > 0 else 0.0


STATUS_SHORT = {STATUS_COMPLETED: "done", STATUS_STOPPED: "ASHA", STATUS_FAILED: "FAILED", STATUS_INFEASIBLE: "too big",
                STATUS_RETRIED: "OOM→retry"}


def knobs_short(row: dict[str, Any]) -> str:
    """A trial's searched technique knobs in a few characters: `16b r0 ck`."""
    parts = []
    for name, spec in technique_knobs().items():
        value = row.get(name)
        if not spec.searched or value is None:
            continue
        if isinstance(value, bool):
            parts.append(spec.short[:2] if value else "")
        else:
            parts.append(f"{value}{(spec.short or name)[0]}")
    return " ".join(p for p in parts if p)


def summary_table(rows: list[dict[str, Any]], top: int = 10) -> str:
    """The printed trial table, best first, under 80 columns for the registered backbones: status `ASHA@e` = stopped
    by ASHA after e epochs; knobs `16b 0l ck` = bits, LoRA rank, checkpointing; `*` = below the accuracy floor
    (cannot win). Backbone and knobs columns are as wide as what they hold: a cut name (`internvl2_40`) misleads."""
    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if value is not None else format("-", spec.rstrip(".0123456789ef") or ">1")

    shown = sorted(rows, key=lambda r: (r["objective"] is None, r.get("above_floor") is False,
                                        -(r["objective"] or 0.0)))[:top]
    name_width = max([len("backbone"), *(len(str(r["backbone"])) for r in shown)])
    knobs_width = max([len("knobs"), *(len(knobs_short(r)) for r in shown)])
    header = (f"{'trial':<8} {'backbone':<{name_width}} {'status':<8} {'knobs':<{knobs_width}} {'lr':>7} {'bs':>3} "
              f"{'val':>6} {'GB':>6} {'/GB':>6}")
    lines = [header, "-" * len(header)]
    for r in shown:
        status = STATUS_SHORT.get(r["status"], r["status"])
        status += f"@{r['epochs_run']}" if r["status"] == STATUS_STOPPED else ""
        floor_mark = "*" if r.get("above_floor") is False else " "
        lines.append(f"{r['trial_id'][-8:]:<8} {str(r['backbone']):<{name_width}} {status:<8} "
                     f"{knobs_short(r):<{knobs_width}} "
                     f"{fmt(r['learning_rate'], '>7.1e')} {fmt(r['batch_size'], '>3')} {fmt(r['val_miou'], '>6.3f')}"
                     f"{floor_mark}{fmt(r['peak_gb'], '>6.3f')} {fmt(r['objective'], '>6.2f')}")
        if r["error"]:
            lines.append(f"{'':<8} error: {r['error'][:70]}")
    if any(r.get("above_floor") is False for r in rows):
        lines.append("* below the accuracy floor: cannot win")
    return "\n".join(lines)
