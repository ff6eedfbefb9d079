"""Run storage: a local (or shared-mount) run directory, optionally mirrored to a URI every node reaches.

With `--storage URI` (s3://, gs://, hdfs://, file://, anything pyarrow.fs resolves) Ray Tune keeps
its experiment and trial results under URI/<run name>/tune, the prepared tiles are uploaded to
URI/<run name>/data before any trial starts, and the finished run directory is mirrored there, so
the URI holds the same layout as the local run directory. Trial workers on other nodes read the
tiles through `materialise`, which copies them once per node into a local cache.

A local run directory is handed to Ray as `whole_file_storage()`: Tune copies its experiment state
(experiment_state, the pickled searcher, tuner.pkl) from a staging folder into storage with pyarrow,
byte by byte into the final name, so a driver killed mid-copy leaves a truncated file that no resume
can read (seen in CI: `EOFError` restoring the searcher; ray-project/ray #58179 for tuner.pkl). Every
file written through it appears whole or not at all (written beside, renamed on close).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import fsspec.implementations.local
import pyarrow
import pyarrow.fs as pafs

from search.errors import UserError

CACHE = Path(tempfile.gettempdir()) / "em-search-data"
COMPLETE_MARKER = "prepared.json"  # written last by search.data.tiles.prepare
PARTIAL_SUFFIX = ".partial"  # a write cut short by a kill; never read, removed on resume


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


class ReplacedOnClose(io.FileIO):
    """A file written under a hidden partial name in its final folder and renamed onto its name when closed:
    the rename is atomic on POSIX, so a reader sees the old file or the new one, never a part."""

    def __init__(self, final: str):
        folder, name = os.path.split(final)
        descriptor, self.partial = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=PARTIAL_SUFFIX)
        os.fchmod(descriptor, 0o644)  # mkstemp's 0600 would hide a shared run directory from the user's group
        super().__init__(descriptor, "wb", closefd=True)
        self.final = final

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.replace(self.partial, self.final)


class WholeFileHandler(pafs.FSSpecHandler):
    """The local filesystem through pyarrow's fsspec bridge, with every output stream `ReplacedOnClose`."""

    def __init__(self):
        super().__init__(fsspec.implementations.local.LocalFileSystem(auto_mkdir=True))

    def open_output_stream(self, path: str, metadata) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(ReplacedOnClose(path), mode="w")


def whole_file_storage(location: str) -> pafs.FileSystem | None:
    """The `storage_filesystem` for Ray at `location`: whole-file writes for a local run directory; None (Ray
    resolves the URI itself) for object stores, whose uploads are whole objects already."""
    return None if is_uri(location) else pafs.PyFileSystem(WholeFileHandler())


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
