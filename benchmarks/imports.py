"""`search bench imports`: what a trial process pays to import its model stack (`--module`, default the
trial's `search.training.worker`), with Python's garbage collector running as usual and paused as trial
processes and commands import it (`search.imports.import_heavy`).

Each measurement is a fresh interpreter (as a new trial process is), rounds alternate the two modes so a
shared machine's drift hits both. Per process: wall and CPU seconds of the import, the modules it loaded,
how many collections the collector ran meanwhile, and the CPU of one full collection right after (what
the first full collection in a trial costs; with the import frozen out of the collector, that is small).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from search.outcome.export import write_results

MODES = ("collector on", "collector paused")

DEFAULT_MODULE = "search.training.worker"
# Runs in the fresh interpreter; "collector paused" imports through the project's own import_heavy.
PROBE = """
import gc, importlib, json, resource, sys, time
from search.imports import import_heavy
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
before_modules, before_collections = len(sys.modules), sum(s["collections"] for s in gc.get_stats())
wall, started = time.perf_counter(), cpu()
(import_heavy if {paused} else importlib.import_module)({module!r})
wall, used = time.perf_counter() - wall, cpu() - started
collections = sum(s["collections"] for s in gc.get_stats()) - before_collections
started = cpu()
gc.collect()
print(json.dumps({{"import_wall_s": wall, "import_cpu_s": used, "modules": len(sys.modules) - before_modules,
                  "collections_during_import": collections, "full_collection_cpu_s": cpu() - started,
                  "collector_enabled_after": gc.isenabled(), "frozen_objects": gc.get_freeze_count()}}))
"""


@dataclass(frozen=True)
class ImportRun:
    mode: str
    round: int
    import_wall_s: float
    import_cpu_s: float
    modules: int
    collections_during_import: int
    full_collection_cpu_s: float
    collector_enabled_after: bool
    frozen_objects: int


def measure(module: str, mode: str, round_number: int) -> ImportRun:
    """One fresh interpreter importing `module` in `mode`."""
    code = PROBE.format(paused=mode == "collector paused", module=module)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"bench imports: the {mode} probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return ImportRun(mode, round_number, **json.loads(done.stdout.strip().splitlines()[-1]))


def table(runs: list[ImportRun]) -> str:
    """Per mode: every round's import CPU and the medians; then what the pause saves."""
    rounds = sorted({r.round for r in runs})
    lines = [f"| mode | {' | '.join(f'round {n} cpu s' for n in rounds)} | median cpu s | median wall s | "
             "collections | modules | full collection after, cpu s |",
             "| --- |" + " ---: |" * (len(rounds) + 5)]
    medians = {}
    for mode in MODES:
        mine = [r for r in runs if r.mode == mode]
        medians[mode] = statistics.median(r.import_cpu_s for r in mine)
        lines.append(f"| {mode} | " + " | ".join(f"{r.import_cpu_s:.2f}" for r in mine) +
                     f" | {medians[mode]:.2f} | {statistics.median(r.import_wall_s for r in mine):.2f} | "
                     f"{statistics.median(r.collections_during_import for r in mine):.0f} | {mine[0].modules} | "
                     f"{statistics.median(r.full_collection_cpu_s for r in mine):.3f} |")
    on, paused = medians[MODES[0]], medians[MODES[1]]
    lines.append(f"\npaused / on (median import CPU): {paused / on:.2f}")
    return "\n".join(lines)


def run_imports_bench(rounds: int, out: Path, module: str = DEFAULT_MODULE, echo=print) -> list[ImportRun]:
    runs = [measure(module, mode, n) for n in range(rounds) for mode in MODES]
    out.mkdir(parents=True, exist_ok=True)
    write_results(pa.Table.from_pylist([asdict(r) for r in runs]), out / "imports.parquet")
    echo(table(runs))
    return runs


def imports_command(args) -> int:
    """`python -m search bench imports`."""
    run_imports_bench(args.rounds, args.out, args.module or DEFAULT_MODULE)
    return 0
