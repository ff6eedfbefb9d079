"""Ray Tune's ResultGrid → one row per trial (results.parquet), ranking, and the printed trial table.

Light on purpose (no torch): the driver and `search report` use it.""" 

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from em_backbones.techniques_config import searched_knobs, technique_knobs
from search.faults import CAUSE_INFEASIBLE, cause_of
from search.space import SEARCHED_PARAMS

STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"
STATUS_FAILED = "failed"
STATUS_INFEASIBLE = "infeasible"  # predicted over the memory budget: never trained

SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("cause", pa.string()),
    ("trial_number", pa.int64()),
    ("tier", pa.int64()),
    ("backbone", pa.string()),
    ("scale", pa.string()),
    *((name, getattr(pa, technique_knobs()[name].column)()) for name in searched_knobs()),
    ("learning_rate", pa.float64()),
    ("batch_size", pa.int64()),
    ("epochs_run", pa.int64()),
    ("val_miou", pa.float64()),
    ("peak_gb", pa.float64()),
    ("predicted_gb", pa.float64()),
    ("memory_method", pa.string()),
    ("objective", pa.float64()),
    ("param_gb", pa.float64()),
    ("grad_gb", pa.float64()),
    ("optimizer_gb", pa.float64()),
    ("activation_gb", pa.float64()),
    ("wall_seconds", pa.float64()),
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("train_seconds", pa.float64()),
    ("node_ip", pa.string()),
    ("workers", pa.int64()),
    ("worker_node_ids", pa.list_(pa.string())),
    ("worker_peak_gb", pa.list_(pa.float64())),
    ("train_batches", pa.int64()),
    ("train_loss", pa.float64()),
    ("val_miou_per_epoch", pa.list_(pa.float64())),
    ("seed", pa.int64()),
    ("test_miou", pa.float64()),
    ("pid", pa.int64()),  # the process that trained it, and how many trials it had trained before (0: fresh)
    ("trials_before_in_process", pa.int64()),
    ("import_seconds", pa.float64()),  # importing the model stack (0 in a warm process)
    ("setup_seconds", pa.float64()),  # config, datamodule, model and Trainer built
    ("fit_setup_seconds", pa.float64()),  # then Lightning's set-up inside fit, until the first batch
    ("rss_mb_at_start", pa.float64()),
])
NOT_EPOCH_REPORTS = ("fault", "infeasible", "test_miou")  # reports a trial makes besides its epochs


def _float(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(round(seconds), tz=timezone.utc)


def _span(metrics: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """When the trial started and made its last report, from Tune's own `timestamp` and `time_total_s`."""
    finished, total = _float(metrics.get("timestamp")), _float(metrics.get("time_total_s"))
    started = finished - total if finished is not None and total is not None else None
    return _utc(started), _utc(finished)


def epoch_curve(history) -> list[float]:
    """Validation mIoU of each epoch a trial reported (its fault, infeasible or test reports left out)."""
    if history is None or "val_miou" not in history:
        return []
    for column in NOT_EPOCH_REPORTS:
        if column in history:
            history = history[history[column].isna()]
    return [float(v) for v in history["val_miou"]]


def trial_rows(result_grid, max_epochs: int, scale: str, budget_gb: float | None = None,
               params_key: str | None = None, carry: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One dict per trial with SCHEMA's columns (plus `carry`); status tells completed / stopped / failed.

    `params_key`: where the trial's parameters sit in its config when they are not the config itself.
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
            error = f"predicted {config.get('predicted_gb', float('nan')):.4g} GB > memory_budget_gb {budget_gb:g}"
        elif epochs_run < max_epochs:
            status, error = STATUS_STOPPED, None
        else:
            status, error = STATUS_COMPLETED, None
        trial_id = metrics.get("trial_id") or result.path.rstrip("/").split("/")[-1]
        row = {name: config.get(name) for name in (*SEARCHED_PARAMS, *carry)}
        row.update({
            "trial_id": str(trial_id),
            "status": status,
            "error": error,
            "cause": cause,
            "trial_number": config.get("trial_number"),
            "scale": scale,
            "epochs_run": epochs_run,
            "val_miou": _float(metrics.get("val_miou")),
            "peak_gb": _float(metrics.get("peak_gb")),
            "predicted_gb": _float(config.get("predicted_gb", metrics.get("predicted_gb"))),
            "memory_method": metrics.get("memory_method"),
            "objective": _float(metrics.get("objective")),
            "param_gb": _float(metrics.get("param_gb")),
            "grad_gb": _float(metrics.get("grad_gb")),
            "optimizer_gb": _float(metrics.get("optimizer_gb")),
            "activation_gb": _float(metrics.get("activation_gb")),
            "wall_seconds": _float(metrics.get("time_total_s")),
            "train_seconds": _float(metrics.get("train_seconds")),
            "node_ip": metrics.get("worker_node_ip"),
            "workers": metrics.get("world_size"),
            "worker_node_ids": list(metrics.get("worker_node_ids") or []),
            "worker_peak_gb": [float(v) for v in metrics.get("worker_peak_gb") or []],
            "train_batches": metrics.get("train_batches"),
            "train_loss": _float(metrics.get("train_loss")),
            "val_miou_per_epoch": curve,
            "seed": metrics.get("seed"),
            "test_miou": _float(metrics.get("test_miou")),
            "pid": metrics.get("pid"),
            "trials_before_in_process": metrics.get("trials_before_in_process"),
            "import_seconds": _float(metrics.get("import_seconds")),
            "setup_seconds": _float(metrics.get("setup_seconds")),
            "fit_setup_seconds": _float(metrics.get("fit_setup_seconds")),
            "rss_mb_at_start": _float(metrics.get("rss_mb_at_start")),
        })
        row["started_at"], row["finished_at"] = _span(metrics)
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that trained and were scored (completed or stopped early by ASHA)."""
    return [r for r in rows if r["objective"] is not None and r["val_miou"] is not None
            and r["status"] not in (STATUS_FAILED, STATUS_INFEASIBLE)]


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored trials, best accuracy per GB first."""
    return sorted(scored(rows), key=lambda r: -r["objective"])


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next(iter(ranked(rows)), None)


def slot_utilisation(rows: list[dict[str, Any]], slots: int, search_wall_seconds: float) -> float:
    """Share of the trial slots' wall time (slots x search wall time) spent inside training."""
    busy = sum(r["train_seconds"] or 0.0 for r in rows)
    return busy / (slots * search_wall_seconds) if search_wall_seconds > 0 else 0.0


def summary_table(rows: list[dict[str, Any]], top: int = 10) -> str:
    """The printed trial table, best first; one column per searched technique knob."""
    knobs = [(name, spec.short or name, max(len(spec.short or name), 4)) for name, spec in technique_knobs().items()
             if spec.searched]

    def fmt(value: Any, spec: str) -> str:
        if isinstance(value, bool):
            value = "yes" if value else "no"
        return format(value, spec) if value is not None else format("-", spec.rstrip(".0123456789ef") or ">1")

    header = (f"{'trial':<14} {'backbone':<13} {'status':<13} {'ep':>2} "
              + "".join(f"{short:>{width}} " for _, short, width in knobs)
              + f"{'lr':>8} {'bs':>3} {'val mIoU':>9} {'peak GB':>8} {'pred GB':>8} {'mIoU/GB':>9}")
    lines = [header, "-" * len(header)]
    for r in sorted(rows, key=lambda r: (r["objective"] is None, -(r["objective"] or 0.0)))[:top]:
        lines.append(
            f"{r['trial_id'][-14:]:<14} {str(r['backbone']):<13} {r['status']:<13} {r['epochs_run']:>2} "
            + "".join(f"{fmt(r[name], f'>{width}')} " for name, _, width in knobs)
            + f"{fmt(r['learning_rate'], '>8.1e')} {fmt(r['batch_size'], '>3')} {fmt(r['val_miou'], '>9.4f')} "
            f"{fmt(r['peak_gb'], '>8.4f')} {fmt(r['predicted_gb'], '>8.4f')} {fmt(r['objective'], '>9.3f')}")
        if r["error"]:
            lines.append(f"{'':<14} error: {r['error'][:100]}")
    return "\n".join(lines)
