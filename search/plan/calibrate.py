"""The `calibrate` command: a space's backbones (or every catalogued one) calibrated on this device.

What runs is em_backbones/sizing/calibrate.py; this adapter only reads which backbones, so the path
imports the schema and the model stack, nothing of Ray, TerraTorch, rasterio or Lightning.
"""

from __future__ import annotations

from pathlib import Path

from em_backbones.catalog import CATALOG
from em_backbones.sizing.calibrate import run_calibration
from em_backbones.sizing.calibration import DEFAULT_FILE
from search.plan.space import load_space


def calibrate_command(args) -> int:
    """`python -m search calibrate [SPACE] [--backbones ...] [--techniques ...] [--out calibration.json]`."""
    backbones = args.backbones or (load_space(args.space).backbones if args.space else list(CATALOG))
    run_calibration(backbones, args.out or Path(DEFAULT_FILE), args.techniques)
    return 0
