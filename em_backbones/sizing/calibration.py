"""Corrections of the memory estimate measured on the user's own GPU (`search calibrate`), and applying them.

calibration.json holds, for the device it was measured on (GPU model, driver, torch), two ratios
of measured to predicted bytes over a grid of training steps: `weights` (what the model holds once
built and moved to the device) and `step` (what one AdamW step adds on top: gradients, optimizer
state, activations, the recomputed checkpointed unit), and the allocator's `reserved_over_allocated`
at the step's peak, which replaces the estimator's stated 10% overhead. Feasibility pruning and GPU
packing use the corrected peak when a calibration is present (`memory.calibration`, or a
calibration.json in the working directory). Light: no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    device: str  # GPU model, or "cpu" for the CPU accounting
    driver: str
    torch: str
    weights: float  # measured / predicted weight bytes (median over the grid)
    step: float  # measured / predicted bytes one training step adds
    reserved_over_allocated: float  # the caching allocator's reserve at the peak (1.0 on a CPU)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the grid, as measured

    def peak_bytes(self, weights: float, step: float) -> float:
        """The corrected peak a trial's process would reserve, from the estimate's weights and step terms."""
        return (weights * self.weights + step * self.step) * self.reserved_over_allocated

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def load_calibration(path: str | Path | None) -> Calibration | None:
    """The named calibration, or calibration.json in the working directory, or None."""
    path = Path(path) if path else Path(DEFAULT_FILE)
    if not path.is_file():
        return None
    return Calibration(**json.loads(path.read_text()))
