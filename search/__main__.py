"""Command line: `python -m search run SPACE`, `report DIR`, `check BACKBONE`, `bench backbones|asha ...`,
`memory ...`, `capacity`, `load`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights only ever come from local paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="search a space file with Ray Tune")
    run.add_argument("space", help="search-space YAML, e.g. spaces/tier2.yaml")
    run.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<name>-<time>)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join ('auto' or host:port); default: start embedded local Ray")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out: finished trials are kept, the study goes on")
    run.add_argument("--storage", default=None,
                     help="URI every node can reach (s3://, gs://, file://...) for Tune's results, the tiles and a "
                          "mirror of the run directory; default: the run directory itself")
    check = commands.add_parser("check", help="build a backbone and run real S1+S2 chips through it")
    check.add_argument("backbone")
    check.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    check.add_argument("--batch-size", type=int, default=2)
    check.add_argument("--img-size", type=int, default=112)
    report = commands.add_parser("report", help="HTML report (plus PNGs) of a finished run directory")
    report.add_argument("run_dir", type=Path)
    benches = commands.add_parser("bench", help="benchmarks: `bench backbones ...`, `bench asha SPACE`")
    bench_kinds = benches.add_subparsers(dest="bench", required=True)
    asha = bench_kinds.add_parser("asha", help="trial-epochs ASHA and full budgets need to reach the best")
    asha.add_argument("space", help="search-space YAML")
    asha.add_argument("--out", type=Path, default=None, help="default: runs/asha-bench-<time>")
    asha.add_argument("--address", default=None, help="Ray cluster to join (default: embedded local Ray)")
    bench = bench_kinds.add_parser("backbones", help="parameters, memory, throughput and outputs per backbone")
    bench.add_argument("--backbones", nargs="+", required=True)
    bench.add_argument("--scales", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    bench.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2])
    bench.add_argument("--img-size", type=int, default=112)
    bench.add_argument("--out", type=Path, default=Path("runs/bench"))
    bench.add_argument("--measure-full", action="store_true", help="also build full scale for real (needs the memory)")
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
    load = commands.add_parser("load", help="many-trial search with trivial budgets: driver memory, leftovers, rate")
    load.add_argument("--trials", type=int, default=200)
    load.add_argument("--out", type=Path, default=Path("runs/load"))
    load.add_argument("--data-root", default=None, help="chips folder (default: the packaged sample)")
    args = parser.parse_args(argv)

    from search.cluster import ClusterError
    from search.data import DataError
    from search.report import ReportError
    from search.run import RunError, run_search
    from search.space import SpaceError
    from search.storage import StorageError
    from search.tuner import ResourceError

    from em_backbones.catalog import CATALOG

    names = [args.backbone] if args.command == "check" else getattr(args, "backbones", [])
    if args.command == "memory":
        from search.memory_bench import TECHNIQUES

        if not args.validate and args.backbone is None:
            print("error: memory: give --backbone NAME (with --test) or --validate", file=sys.stderr)
            return 2
        bad = [t for t in args.test if t not in TECHNIQUES and t != "all"]
        if bad:
            print(f"error: memory --test: unknown technique {bad[0]!r}; known: all, {', '.join(TECHNIQUES)}",
                  file=sys.stderr)
            return 2
        names = [args.backbone] if args.backbone else []
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        print(f"error: unknown backbone {unknown[0]!r}; known: {', '.join(sorted(CATALOG))}", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            run_search(args.space, args.out, args.address, args.storage, args.resume)
        elif args.command == "check":
            from search.check import check_backbone

            return 0 if check_backbone(args.backbone, args.scale, args.batch_size, args.img_size) else 1
        elif args.command == "report":
            from search.report import write_report

            print(f"report: {write_report(args.run_dir)}")
        elif args.command == "bench" and args.bench == "asha":
            from search.asha_bench import run_asha_bench

            out = args.out or Path("runs") / f"asha-bench-{time.strftime('%Y%m%d-%H%M%S')}"
            run_asha_bench(Path(args.space), out, args.address)
        elif args.command == "bench":
            from search.bench import run_bench

            run_bench(args.backbones, args.scales, args.batch_sizes, args.img_size, args.out, args.measure_full)
        elif args.command == "load":
            from search.load_bench import run_load

            return 0 if run_load(args.trials, args.out, args.data_root).leftover_processes == 0 else 1
        elif args.command == "capacity":
            from search.capacity import capacity_rows, capacity_table

            rows = capacity_rows(args.gpu_gb, args.gpus_per_node, tuple(args.batch_sizes))
            print(capacity_table(rows, args.gpu_gb, args.gpus_per_node))
        elif args.command == "memory":
            from search.memory_bench import run_memory

            run_memory(args.backbone, args.test, args.validate, args.out, args.full_batch_size, args.full_img_size)
    except (SpaceError, DataError, RunError, ResourceError, ClusterError, StorageError, ReportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
