"""Command line: `python -m search run SPACE [--out DIR] [--address ADDR]`."""

from __future__ import annotations

import argparse
import os
import sys
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
    args = parser.parse_args(argv)

    from search.data import DataError
    from search.run import RunError, run_search
    from search.space import SpaceError
    from search.tuner import ResourceError

    try:
        if args.command == "run":
            run_search(args.space, args.out, args.address)
    except (SpaceError, DataError, RunError, ResourceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
