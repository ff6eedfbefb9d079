"""Command line: `python -m search COMMAND ...`; every command is one row of `COMMANDS`.

As in Optuna's `cli.py`, the commands are a table: name, help, its arguments, and the function
that runs it, named as `module:function` and imported only when that command runs, so `run`
does not pay for the model stack, a bad argument is reported in a second, and the benchmarks
(the top-level `benchmarks/` package) stay outside the product: nothing in `search/` imports them.
Bad input of any command (a `search.errors.UserError`) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights only ever come from local paths


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    target: str  # "module:function"; the function takes the parsed arguments and returns the exit code
    backbone_args: tuple[str, ...] = ()  # arguments that name backbones, checked against the catalog first


def run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("space", help="search-space YAML, e.g. spaces/flood.yaml")
    run.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<name>-<time>)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join ('auto' or host:port); default: start embedded local Ray")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out: finished trials are kept, the study goes on")
    run.add_argument("--base", default=None, metavar="FIT_YAML",
                     help="search around your own `terratorch fit` config: its datamodule, task settings and trainer "
                          "are kept; backbone, techniques, lr and batch size are searched (also: `base:` in the space)")
    run.add_argument("--mlflow", nargs="?", const="run-dir", default=None, metavar="URI",
                     help="track the study in MLflow (one child run per trial); without URI: a local SQLite store, "
                          "<run directory>/mlflow.db. Needs: pip install -e '.[tracking]'")
    run.add_argument("--storage", default=None,
                     help="URI every node can reach (s3://, gs://, file://...) for Tune's results, the tiles and a "
                          "mirror of the run directory; default: the run directory itself")


def report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("run_dir", type=Path)


def check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("backbone")
    check.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    check.add_argument("--batch-size", type=int, default=2)
    check.add_argument("--img-size", type=int, default=112)


def memory_arguments(memory: argparse.ArgumentParser) -> None:
    memory.add_argument("--backbone", help="backbone for --test")
    memory.add_argument("--test", nargs="+", default=["all"],
                        help="techniques: all or any of none 8bit 4bit lora checkpointing qlora qlora_ckpt")
    memory.add_argument("--validate", action="store_true",
                        help="estimator vs measurement on tiny configurations of every backbone and technique")
    memory.add_argument("--backbones", nargs="+", default=None, help="--validate: only these backbones")
    memory.add_argument("--full-batch-size", type=int, default=1)
    memory.add_argument("--full-img-size", type=int, default=None, help="default: the backbone's published size")
    memory.add_argument("--out", type=Path, default=Path("runs/memory"))


def capacity_arguments(capacity: argparse.ArgumentParser) -> None:
    capacity.add_argument("--gpu-gb", type=float, default=80.0)
    capacity.add_argument("--gpus-per-node", type=int, default=8)
    capacity.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                          help="default: 1 4 for the table, the space's own for --simulate")
    capacity.add_argument("--simulate", metavar="SPACE", default=None,
                          help="replay SPACE's grid at full scale on --gpus-per-node simulated GPUs through Ray's "
                               "scheduler, packed by memory against one GPU per trial")
    capacity.add_argument("--repeats", type=int, default=24, help="--simulate: each configuration this many times")
    capacity.add_argument("--time-scale", type=float, default=200.0,
                          help="--simulate: simulated seconds per real second (higher: quicker, coarser)")


def calibrate_arguments(calibrate: argparse.ArgumentParser) -> None:
    calibrate.add_argument("space", nargs="?", default=None, help="its backbones (default: every catalogued one)")
    calibrate.add_argument("--backbones", nargs="+", default=None, help="these backbones instead")
    calibrate.add_argument("--techniques", nargs="+", default=None,
                           help="none 8bit 4bit lora checkpointing qlora qlora_ckpt (default: all but qlora)")
    calibrate.add_argument("--out", type=Path, default=None, help="default: ./calibration.json")


def load_arguments(load: argparse.ArgumentParser) -> None:
    load.add_argument("--trials", type=int, default=200)
    load.add_argument("--out", type=Path, default=Path("runs/load"))
    load.add_argument("--data-root", default=None, help="chips folder (default: the packaged TerraMesh sample)")


def asha_arguments(asha: argparse.ArgumentParser) -> None:
    asha.add_argument("space", help="search-space YAML")
    asha.add_argument("--out", type=Path, default=None, help="default: runs/asha-bench-<time>")
    asha.add_argument("--address", default=None, help="Ray cluster to join (default: embedded local Ray)")


def peer_arguments(peer: argparse.ArgumentParser) -> None:
    peer.add_argument("--peer-dir", type=Path, default=None,
                      help="folder with the peer's `run` and `em-search-equivalent.yaml` "
                           "(default: ../shared/bench/terratorch-iterate beside the repo)")
    peer.add_argument("--rounds", type=int, default=1, help="alternating rounds (peer, ours) to run")
    peer.add_argument("--out", type=Path, default=Path("runs/peer-bench"))


def imports_arguments(imports: argparse.ArgumentParser) -> None:
    imports.add_argument("--rounds", type=int, default=3, help="alternating rounds (collector on, paused)")
    imports.add_argument("--module", default=None, help="what to import (default: a trial's model stack, "
                                                          "search.training.worker)")
    imports.add_argument("--out", type=Path, default=Path("runs/imports-bench"))


def fullscale_arguments(full: argparse.ArgumentParser) -> None:
    full.add_argument("--backbones", nargs="+", default=["internvl2_4b", "granite_4_tiny"])
    full.add_argument("--checkpoints", type=Path, default=Path("runs/fullscale-checkpoints"),
                      help="where the random sharded checkpoints are written (7-14 GB each)")
    full.add_argument("--keep", action="store_true", help="keep the checkpoints for the next run")
    full.add_argument("--out", type=Path, default=Path("runs/fullscale"))
    full.add_argument("--scale", default="full", choices=["full", "tiny"],
                      help="tiny: the same steps on the tiny architectures, in seconds (what the tests run)")


def backbones_arguments(backbones: argparse.ArgumentParser) -> None:
    backbones.add_argument("--backbones", nargs="+", required=True)
    backbones.add_argument("--scales", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    backbones.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2])
    backbones.add_argument("--img-size", type=int, default=112)
    backbones.add_argument("--out", type=Path, default=Path("runs/bench"))
    backbones.add_argument("--measure-full", action="store_true", help="also build full scale for real (needs the memory)")


COMMANDS: dict[str, Command] = {
    "run": Command("search a space file with Ray Tune", run_arguments, "search.execution.run:run_command"),
    "report": Command("HTML report (plus PNGs) of a finished run directory", report_arguments,
                      "search.outcome.report:report_command"),
    "check": Command("build a backbone and run real S1+S2 chips through it", check_arguments,
                     "benchmarks.check:check_command", ("backbone",)),
    "memory": Command("memory per technique (measured tiny, predicted full) or --validate", memory_arguments,
                      "benchmarks.memory:memory_command", ("backbone", "backbones")),
    "capacity": Command("tier-3 QLoRA trials per GPU and per node, from the estimator (--simulate: a packed search "
                        "replayed)", capacity_arguments,
                        "benchmarks.capacity:capacity_command"),
    "load": Command("many-trial search with trivial budgets: memory, leftovers, rate", load_arguments,
                    "benchmarks.load:load_command"),
    "calibrate": Command("the memory estimate against this device (GPU: allocated, reserved, process): "
                         "calibration.json", calibrate_arguments, "search.plan.calibrate:calibrate_command",
                         ("backbones",)),
}
BENCHES: dict[str, Command] = {
    "asha": Command("trial-epochs ASHA and full budgets need to reach the best", asha_arguments,
                    "benchmarks.asha:asha_command"),
    "peer": Command("terratorch-iterate and the same search here, back to back: wall times", peer_arguments,
                    "benchmarks.peer:peer_command"),
    "imports": Command("a trial process's import of its model stack, garbage collector on and paused",
                       imports_arguments, "benchmarks.imports:imports_command"),
    "fullscale": Command("published-size backbones loaded in 4 bits and trained one step: memory against the "
                         "predictions", fullscale_arguments, "benchmarks.fullscale:fullscale_command", ("backbones",)),
    "backbones": Command("parameters, memory, throughput and outputs per backbone", backbones_arguments,
                         "benchmarks.backbones:backbones_command", ("backbones",)),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m search", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.arguments(commands.add_parser(name, help=command.help))
    benches = commands.add_parser("bench", help="benchmarks: " + ", ".join(f"`bench {name}`" for name in BENCHES))
    kinds = benches.add_subparsers(dest="bench", required=True)
    for name, command in BENCHES.items():
        command.arguments(kinds.add_parser(name, help=command.help))
    return top


def chosen(args: argparse.Namespace) -> Command:
    return BENCHES[args.bench] if args.command == "bench" else COMMANDS[args.command]


def check_backbone_names(args: argparse.Namespace, command: Command) -> None:
    from em_backbones.catalog import CATALOG, did_you_mean
    from search.errors import UserError

    names = []
    for attribute in command.backbone_args:
        value = getattr(args, attribute, None)
        names += value if isinstance(value, list) else [value] if value else []
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise UserError(f"unknown backbone {unknown[0]!r}{did_you_mean(unknown[0], CATALOG)}; "
                        f"known: {', '.join(sorted(CATALOG))}")


def main(argv: list[str] | None = None) -> int:
    from search.errors import UserError
    from search.imports import import_heavy

    args = parser().parse_args(argv)
    command = chosen(args)
    try:
        check_backbone_names(args, command)
        module, _, function = command.target.partition(":")
        return int(getattr(import_heavy(module), function)(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
