"""Command line: `python -m search run SPACE`, `report DIR`, `check BACKBONE`, `bench backbones|asha|peer ...`,
`memory ...`, `capacity`, `load`.

Each command imports what it needs when it runs, so `run` does not pay for the model stack and a
bad argument is reported in a second. Bad input of any command (a `search.errors.UserError`) is
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights only ever come from local paths


def add_run(commands) -> None:
    run = commands.add_parser("run", help="search a space file with Ray Tune")
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


def add_bench(commands) -> None:
    benches = commands.add_parser("bench", help="benchmarks: `bench backbones ...`, `bench asha SPACE`, `bench peer`")
    kinds = benches.add_subparsers(dest="bench", required=True)
    asha = kinds.add_parser("asha", help="trial-epochs ASHA and full budgets need to reach the best")
    asha.add_argument("space", help="search-space YAML")
    asha.add_argument("--out", type=Path, default=None, help="default: runs/asha-bench-<time>")
    asha.add_argument("--address", default=None, help="Ray cluster to join (default: embedded local Ray)")
    peer = kinds.add_parser("peer", help="terratorch-iterate and the same search here, back to back: wall times")
    peer.add_argument("--peer-dir", type=Path, default=None,
                      help="folder with the peer's `run` and `em-search-equivalent.yaml` "
                           "(default: ../shared/bench/terratorch-iterate beside the repo)")
    peer.add_argument("--rounds", type=int, default=1, help="alternating rounds (peer, ours) to run")
    peer.add_argument("--out", type=Path, default=Path("runs/peer-bench"))
    full = kinds.add_parser("fullscale", help="published-size backbones loaded in 4 bits and trained one step: "
                                              "memory against the predictions")
    full.add_argument("--backbones", nargs="+", default=["internvl2_4b", "granite_4_tiny"])
    full.add_argument("--checkpoints", type=Path, default=Path("runs/fullscale-checkpoints"),
                      help="where the random sharded checkpoints are written (7-14 GB each)")
    full.add_argument("--keep", action="store_true", help="keep the checkpoints for the next run")
    full.add_argument("--out", type=Path, default=Path("runs/fullscale"))
    backbones = kinds.add_parser("backbones", help="parameters, memory, throughput and outputs per backbone")
    backbones.add_argument("--backbones", nargs="+", required=True)
    backbones.add_argument("--scales", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    backbones.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2])
    backbones.add_argument("--img-size", type=int, default=112)
    backbones.add_argument("--out", type=Path, default=Path("runs/bench"))
    backbones.add_argument("--measure-full", action="store_true",
                           help="also build full scale for real (needs the memory)")


def add_tools(commands) -> None:
    check = commands.add_parser("check", help="build a backbone and run real S1+S2 chips through it")
    check.add_argument("backbone")
    check.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    check.add_argument("--batch-size", type=int, default=2)
    check.add_argument("--img-size", type=int, default=112)
    report = commands.add_parser("report", help="HTML report (plus PNGs) of a finished run directory")
    report.add_argument("run_dir", type=Path)
    memory = commands.add_parser("memory", help="memory per technique (measured tiny, predicted full) or --validate")
    memory.add_argument("--backbone", help="backbone for --test")
    memory.add_argument("--test", nargs="+", default=["all"],
                        help="techniques: all or any of none 8bit 4bit lora checkpointing qlora qlora_ckpt")
    memory.add_argument("--validate", action="store_true",
                        help="estimator vs measurement on tiny configurations of every backbone and technique")
    memory.add_argument("--full-batch-size", type=int, default=1)
    memory.add_argument("--full-img-size", type=int, default=None, help="default: the backbone's published size")
    memory.add_argument("--out", type=Path, default=Path("runs/memory"))
    capacity = commands.add_parser("capacity", help="tier-3 QLoRA trials per GPU and per node, from the estimator")
    capacity.add_argument("--gpu-gb", type=float, default=80.0)
    capacity.add_argument("--gpus-per-node", type=int, default=8)
    capacity.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    load = commands.add_parser("load", help="many-trial search with trivial budgets: memory, leftovers, rate")
    load.add_argument("--trials", type=int, default=200)
    load.add_argument("--out", type=Path, default=Path("runs/load"))
    load.add_argument("--data-root", default=None, help="chips folder (default: the packaged TerraMesh sample)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m search", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    add_run(commands)
    add_bench(commands)
    add_tools(commands)
    return top


def check_backbone_names(args: argparse.Namespace) -> None:
    from em_backbones.catalog import CATALOG, did_you_mean
    from search.errors import UserError

    names = {"check": [getattr(args, "backbone", None)], "bench": getattr(args, "backbones", None) or [],
             "memory": [args.backbone] if getattr(args, "backbone", None) else []}.get(args.command, [])
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise UserError(f"unknown backbone {unknown[0]!r}{did_you_mean(unknown[0], CATALOG)}; "
                        f"known: {', '.join(sorted(CATALOG))}")


def run_command(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; returns its exit code."""
    if args.command == "run":
        import psutil

        from search.run import run_search

        run_search(args.space, args.out, args.address, args.storage, args.resume,
                   imports_seconds=time.time() - psutil.Process().create_time(), mlflow=args.mlflow, base=args.base)
    elif args.command == "report":
        from search.report import write_report

        print(f"report: {write_report(args.run_dir)}")
    elif args.command == "check":
        from search.check import check_backbone

        return 0 if check_backbone(args.backbone, args.scale, args.batch_size, args.img_size) else 1
    elif args.command == "bench":
        return run_bench_command(args)
    elif args.command == "load":
        from search.load_bench import run_load

        return 0 if run_load(args.trials, args.out, args.data_root).leftover_processes == 0 else 1
    elif args.command == "capacity":
        from search.capacity import capacity_rows, capacity_table

        print(capacity_table(capacity_rows(args.gpu_gb, args.gpus_per_node, tuple(args.batch_sizes)), args.gpu_gb,
                             args.gpus_per_node))
    elif args.command == "memory":
        from search.memory_bench import check_memory_args, run_memory

        check_memory_args(args.backbone, args.test, args.validate)
        run_memory(args.backbone, args.test, args.validate, args.out, args.full_batch_size, args.full_img_size)
    return 0


def run_bench_command(args: argparse.Namespace) -> int:
    if args.bench == "asha":
        from search.asha_bench import run_asha_bench

        run_asha_bench(Path(args.space), args.out or Path("runs") / f"asha-bench-{time.strftime('%Y%m%d-%H%M%S')}",
                       args.address)
    elif args.bench == "fullscale":
        from search.fullscale_bench import run_fullscale_bench

        run_fullscale_bench(args.backbones, args.checkpoints, args.keep, args.out)
    elif args.bench == "peer":
        from search.peer_bench import run_peer_bench

        run_peer_bench(args.peer_dir, args.rounds, args.out)
    else:
        from search.bench import run_bench

        run_bench(args.backbones, args.scales, args.batch_sizes, args.img_size, args.out, args.measure_full)
    return 0


def main(argv: list[str] | None = None) -> int:
    from search.errors import UserError

    args = parser().parse_args(argv)
    try:
        check_backbone_names(args)
        return run_command(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
