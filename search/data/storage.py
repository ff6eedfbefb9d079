"""Run storage: a local (or shared-mount) run directory, optionally mirrored to a URI every node reaches.

With `--storage URI` (s3://, gs://, hdfs://, file://, anything pyarrow.fs resolves) Ray Tune keeps
its experiment and trial results under URI/<run name>/tune, the prepared tiles are uploaded to
URI/<run name>/data before any trial starts, and the finished run directory is mirrored there, so
the URI holds the same layout as the local run directory. Trial workers on other nodes read the
tiles through `materialise`, which copies them once per node into a local cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from search.errors import UserError

CACHE = Path(tempfile.gettempdir()) / "em-search-data"
COMPLETE_MARKER = "prepared.json"  # written last by search.data.tiles.prepare


class StorageError(UserError, RuntimeError):
    """--storage names something pyarrow cannot open or write."""


def is_uri(location: str) -> bool:
    return "://" in location


def run_location(storage: str | None, out: Path) -> str:
    """Where Ray Tune and the mirror of this run live: URI/<run name>, or the run directory itself."""
    return f"{storage.rstrip('/')}/{out.name}" if storage else str(out)


def check_writable(uri: str) -> None:
    """Fail before any work if the URI cannot be resolved or written."""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        fs.create_dir(path, recursive=True)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(f"--storage {uri}: cannot write there ({first})") from None


def upload(local: Path, uri: str) -> None:
    """Copy a local file or directory tree to a URI (pyarrow picks the filesystem from the scheme)."""
    fs, path = pafs.FileSystem.from_uri(uri)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local.resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def materialise(location: str) -> Path:
    """A local directory holding the prepared tiles at `location` (a path, or a URI copied once per node)."""
    if not is_uri(location):
        return Path(location)
    cache = CACHE / hashlib.sha256(location.encode()).hexdigest()[:20]
    if (cache / COMPLETE_MARKER).exists():
        return cache
    fs, path = pafs.FileSystem.from_uri(location)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pafs.copy_files(path, str(partial), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    try:
        partial.rename(cache)  # atomic; a concurrent worker of the same node may have won the race
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return cache


MIRRORED = ("space.yaml", "results.parquet", "best.yaml", "summary.json", "optuna_journal.log", "confirm.parquet",
            "report.html", "report", "pareto")


def mirror_outputs(out: Path, location: str) -> None:
    """Copy the run's outputs to the --storage URI, beside the tiles and Tune results already there."""
    for name in MIRRORED:
        if (out / name).exists():
            upload(out / name, f"{location}/{name}")
