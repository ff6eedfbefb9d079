"""Write a run's outputs (tables, best.yaml, the Pareto front's configs, text), each atomically: temp file + rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide results from a shared cluster's users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_results(table: pa.Table, path: Path) -> None:
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_best_config(config: dict[str, Any], path: Path, header: str) -> None:
    """A TerraTorch LightningCLI config: `terratorch fit -c best.yaml` trains it unchanged."""
    write_text(path, "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(config, sort_keys=False))


def floor_note(row: dict[str, Any], floor: dict | None) -> str:
    """The header's word on the accuracy floor: cleared, or not, and then which baseline is the better answer."""
    if floor is None:
        return ""
    if row.get("above_floor") is False:
        return (f"NO CONFIGURATION CLEARED THE ACCURACY FLOOR (val mIoU {floor['val_miou']:.4f}, {floor['source']}): "
                f"{floor['source']} is the better answer on these chips; this is the best below it, for reference.\n")
    return f"It cleared the accuracy floor (val mIoU {floor['val_miou']:.4f}, {floor['source']}).\n"


def write_trial_config(space, row: dict[str, Any], prepared, path: Path, title: str, floor: dict | None = None) -> None:
    """A trial's TerraTorch config, headed by what it scored, whether it cleared the floor, and how many epochs
    the search saw it train."""
    from search.plan.terratorch_config import terratorch_config

    epochs = space.training.epochs
    seen = row["epochs_run"]
    header = (f"{title}: val mIoU {row['val_miou']:.4f}, peak {row['peak_gb']:.4f} GB ({row['memory_method']}) "
              f"+ {space.memory.overhead_gb:.3f} GB per-process overhead, objective {row['objective']:.3f}.\n"
              + floor_note(row, floor) +
              f"The search trained it for {seen} of {epochs} epochs"
              + (" (stopped early by ASHA)" if seen < epochs else "") + f"; this config trains {epochs} epochs "
              f"(trainer.max_epochs). Weights: {space.weights.get(row['backbone'], 'random init')}.\n"
              f"Train it with: terratorch fit -c {path.name}")
    write_best_config(terratorch_config(space, row, prepared), path, header)


def export_winners(space, rows: list[dict[str, Any]], prepared, out: Path,
                   floor: dict | None = None) -> tuple[list[dict], dict | None]:
    """best.yaml (and, for `objective: pareto`, every front point in pareto/); returns (front, best)."""
    from search.outcome.front import pareto_front, pick_on_front
    from search.outcome.results import best_row

    front = pareto_front(rows)
    best = pick_on_front(front) if space.objective == "pareto" else best_row(rows)
    if best is not None:
        write_trial_config(space, best, prepared, out / "best.yaml", f"Best trial {best['trial_id']} of {space.name}",
                           floor)
    if space.objective == "pareto":
        (out / "pareto").mkdir(exist_ok=True)
        for i, row in enumerate(front):
            write_trial_config(space, row, prepared, out / "pareto" / f"{i:02d}_{row['trial_id']}.yaml",
                               f"Pareto front point {i} (lightest first) of {space.name}: trial {row['trial_id']}",
                               floor)
    return front, best
