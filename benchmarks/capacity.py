"""`search capacity`: how many tier-3 QLoRA trials fit per GPU and per node, on paper.

Figures come from the analytic estimator of em_backbones.sizing.estimate (full scale, the published input
size, bf16 weights and activations, AdamW), the same numbers that prune infeasible trials, plus each
trial's own CUDA context (measured: em_backbones.sizing.device.CUDA_CONTEXT_BYTES). Memory is the only
limit counted: trials that share a GPU also share its compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from em_backbones.catalog import CATALOG
from em_backbones.sizing.estimate import estimate
from em_backbones.sizing.memory import gigabytes
from em_backbones.techniques.config import Techniques

TIER3 = ("internvl2_26b", "internvl2_40b")
SETTINGS = {
    "QLoRA r16": Techniques(quantization_bits=4, lora_rank=16),
    "QLoRA r16 + ckpt": Techniques(quantization_bits=4, lora_rank=16, gradient_checkpointing=True),
}


@dataclass(frozen=True)
class CapacityRow:
    backbone: str
    setting: str
    batch_size: int
    peak_gb: float
    per_gpu: int
    per_node: int


def capacity_rows(gpu_gb: float = 80.0, gpus_per_node: int = 8, batch_sizes: tuple[int, ...] = (1, 4),
                  precision: str = "bf16-true") -> list[CapacityRow]:
    rows = []
    for name in TIER3:
        img = CATALOG[name].native_img_size
        for setting, techniques in SETTINGS.items():
            for batch in batch_sizes:
                peak = gigabytes(estimate(name, "full", techniques, batch, img, precision).gpu_footprint)
                per_gpu = math.floor(gpu_gb / peak) if peak <= gpu_gb else 0
                rows.append(CapacityRow(name, setting, batch, peak, per_gpu, per_gpu * gpus_per_node))
    return rows


def capacity_table(rows: list[CapacityRow], gpu_gb: float, gpus_per_node: int) -> str:
    """Markdown, so the same text goes to the terminal and into clusters/README.md."""
    lines = [f"| backbone | technique | batch | predicted peak + CUDA context GB | trials per {gpu_gb:g} GB GPU "
             f"| trials per {gpus_per_node}-GPU node | `gpus_per_worker` |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{1 / r.per_gpu:.2f}" if r.per_gpu else "does not fit"
        lines.append(f"| {r.backbone} | {r.setting} | {r.batch_size} | {r.peak_gb:.2f} | {r.per_gpu} "
                     f"| {r.per_node} | {share} |")
    return "\n".join(lines)


def capacity_command(args) -> int:
    """`python -m search capacity [--simulate SPACE]`."""
    if args.simulate:
        from benchmarks.simulate import simulate

        simulate(Path(args.simulate), args.gpus_per_node, args.gpu_gb, args.repeats,
                 batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None, time_scale=args.time_scale)
        return 0
    print(capacity_table(capacity_rows(args.gpu_gb, args.gpus_per_node, tuple(args.batch_sizes or (1, 4))), args.gpu_gb,
                         args.gpus_per_node))
    return 0
