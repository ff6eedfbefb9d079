"""`search bench peer`: IBM's terratorch-iterate and the same search here, back to back on one machine.

The peer's folder (../shared/bench/terratorch-iterate by default) holds its `run` script (it
installs terratorch-iterate once into a cache and prints `terratorch-iterate: trials=N wall_s=S
best_val_mIoU=M`) and `em-search-equivalent.yaml`, the same search as a space. Rounds alternate
peer, ours, so slow drift of a shared machine hits both; each side's wall time is the whole
command, as a user would time it (ours includes Ray's start and the baselines). When the peer
cannot be installed or run here, it is skipped with one line saying why.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from search.errors import UserError
from search.outcome.export import write_results

DEFAULT_PEER_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "terratorch-iterate"
PEER_LINE = re.compile(r"terratorch-iterate: trials=(\d+) wall_s=(\d+(?:\.\d+)?) best_val_mIoU=(\d+(?:\.\d+)?)?")


@dataclass(frozen=True)
class Side:
    tool: str
    round: int
    wall_s: float | None  # None: did not run
    trials: int | None
    best_val_miou: float | None
    note: str = ""


def run_peer(peer_dir: Path) -> Side:
    """The peer's own script; its wall_s is the time of its search command (installation excluded)."""
    try:
        done = subprocess.run(["bash", str(peer_dir / "run")], capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Side("terratorch-iterate", 0, None, None, None, f"could not run: {err}")
    match = PEER_LINE.search(done.stdout)
    if not match:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        return Side("terratorch-iterate", 0, None, None, None, f"skipped: exit {done.returncode}: {tail[0][:200]}")
    trials, wall, best = match.groups()
    return Side("terratorch-iterate", 0, float(wall), int(trials), float(best) if best else None)


def run_ours(space: Path, out: Path) -> Side:
    """`python -m search run SPACE --out OUT` as a subprocess, timed from the outside; what it printed (stdout,
    then stderr) is kept beside the run directory as OUT-console.txt, to compare with the peer's console."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "search", "run", str(space), "--out", str(out)],
                          capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    console_of(out).write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return Side("em-search", 0, None, None, None, f"failed: {done.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((out / "summary.json").read_text())
    return Side("em-search", 0, wall, summary["trials"], summary["best_val_miou"],
                "; ".join(f"{k} {v:.1f} s" for k, v in summary["timings"].items()))


def console_of(run_dir: Path) -> Path:
    return run_dir.with_name(f"{run_dir.name}-console.txt")


def run_peer_bench(peer_dir: Path | None, rounds: int, out: Path, echo=print) -> list[Side]:
    peer_dir = Path(peer_dir or DEFAULT_PEER_DIR)
    space = peer_dir / "em-search-equivalent.yaml"
    if not (peer_dir / "run").is_file() or not space.is_file():
        raise UserError(f"--peer-dir {peer_dir}: expected its `run` script and em-search-equivalent.yaml there")
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sides = []
    for i in range(rounds):
        peer = run_peer(peer_dir)
        sides.append(Side(**{**asdict(peer), "round": i}))
        echo(f"round {i}: terratorch-iterate " + (f"{peer.wall_s:.1f} s" if peer.wall_s else peer.note))
        ours = run_ours(space, out / f"{stamp}-round{i}")
        sides.append(Side(**{**asdict(ours), "round": i}))
        echo(f"round {i}: em-search {ours.wall_s:.1f} s ({ours.note})" if ours.wall_s else f"round {i}: {ours.note}")
    write_results(pa.Table.from_pylist([asdict(s) for s in sides]), out / f"{stamp}-peer-bench.parquet")
    echo(peer_table(sides))
    return sides


def peer_table(sides: list[Side]) -> str:
    def median(tool: str) -> float | None:
        walls = [s.wall_s for s in sides if s.tool == tool and s.wall_s is not None]
        return statistics.median(walls) if walls else None

    lines = [f"{'tool':<20} {'round':>5} {'trials':>6} {'wall s':>8} {'best val mIoU':>13}"]
    for s in sides:
        wall = f"{s.wall_s:>8.1f}" if s.wall_s is not None else f"{'-':>8}"
        best = f"{s.best_val_miou:>13.4f}" if s.best_val_miou is not None else f"{'-':>13}"
        lines.append(f"{s.tool:<20} {s.round:>5} {s.trials if s.trials is not None else '-':>6} {wall} {best}")
    peer, ours = median("terratorch-iterate"), median("em-search")
    if peer and ours:
        lines.append(f"median wall: terratorch-iterate {peer:.1f} s, em-search {ours:.1f} s; "
                     f"ratio em-search / peer = {ours / peer:.2f}")
    else:
        lines.append("ratio: not available (" + next((s.note for s in sides if s.wall_s is None), "") + ")")
    return "\n".join(lines)


def peer_command(args) -> int:
    """`python -m search bench peer`."""
    run_peer_bench(args.peer_dir, args.rounds, args.out)
    return 0
