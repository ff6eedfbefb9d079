"""Write a run's outputs (tables, configs, the report), each atomically: temp file + rename."""

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
