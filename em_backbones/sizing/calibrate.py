"""`python -m search calibrate [SPACE]`: the memory estimate against the user's own device, and its corrections.

One AdamW training step per configuration of a small grid — every backbone (the space's, or the
catalog's) at tiny scale under each technique, and on a GPU each full-scale backbone that fits —
measured and set beside the estimator's prediction (em_backbones/sizing/estimate.py). On a GPU:
`torch.cuda.max_memory_allocated` (what PyTorch's tensors took), `max_memory_reserved` (what its
caching allocator held) and the process's memory as the driver reports it (nvidia-smi); the weights
are read once the model is on the device, the step's share is the rest. On a CPU the same grid runs
against the CPU accounting (em_backbones/sizing/memory.py), so this path is tested everywhere.
The table is printed and calibration.json written (em_backbones/sizing/calibration.py), which
feasibility pruning and GPU packing then use.

It runs in a bare PyTorch GPU container: torch, transformers, peft and bitsandbytes (accelerate and
safetensors, which they bring) and nothing of Ray, TerraTorch, rasterio or Lightning; backbones
that need TerraTorch are skipped, with that reason, where it is not installed.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from em_backbones.bands import bands_of
from em_backbones.catalog import get_spec
from em_backbones.registry import build_backbone, ensure_registered
from em_backbones.sizing.calibration import Calibration
from em_backbones.sizing.counting import backbone_params
from em_backbones.sizing.estimate import estimate
from em_backbones.sizing.memory import account_training_step
from em_backbones.techniques.config import NAMED_TECHNIQUES, Techniques

TINY_BATCH, TINY_IMG = 2, 112
MODALITIES = ("S1RTC", "S2L2A")
GRID_TECHNIQUES = ("none", "8bit", "4bit", "lora", "checkpointing", "qlora_ckpt")
FULL_SCALE_TECHNIQUE = "qlora_ckpt"  # what full scale trains with on one GPU
FULL_SCALE_HEADROOM = 1.3  # a full-scale point runs only where the prediction, with this headroom, fits
GB = 1e9


def random_batch(batch: int, img: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {m: torch.randn(batch, len(bands_of(m)), img, img, generator=generator).to(device, dtype)
            for m in MODALITIES}


def predicted(name: str, scale: str, techniques: Techniques, batch: int, img: int, precision: str,
              allocator: bool = True) -> dict[str, float]:
    """The estimate's weights and step terms; its peak with the stated GPU allocator overhead, or (on a CPU,
    `allocator` False) the tensor total the CPU accounting measures."""
    est = estimate(name, scale, techniques, batch, img, precision, MODALITIES)
    step = est.gradients + est.optimizer_state + est.activations + est.recompute
    return {"predicted_weights_gb": est.weights / GB, "predicted_step_gb": step / GB,
            "predicted_peak_gb": (est.peak if allocator else est.total) / GB}


def process_gpu_memory_gb() -> float | None:
    """This process's GPU memory as the driver reports it (nvidia-smi), None where there is no nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    mine = [line.split(",") for line in out.splitlines() if line.split(",")[0].strip() == str(os.getpid())]
    return float(mine[0][1]) * 2**20 / GB if mine else None


def measure_cuda(name: str, scale: str, techniques: Techniques, batch: int, img: int) -> dict[str, float]:
    """Weights once on the GPU, then one AdamW step's peak (allocated and reserved) and the process's memory."""
    gc.collect()  # the previous point's model, freed before this one's baseline is read
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    dtype = torch.bfloat16 if scale == "full" else torch.float32
    model = build_backbone(name, scale=scale, img_size=img, modalities=list(MODALITIES), **asdict(techniques))
    model = model.to(dtype).to("cuda")  # bitsandbytes quantizes its layers as they move to the GPU
    weights = torch.cuda.memory_allocated() - base
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = random_batch(batch, img, "cuda", dtype)
    for _ in range(2):  # the second step holds the optimizer state the first created
        torch.cuda.reset_peak_memory_stats()
        loss = sum(o.square().mean().float() for o in model(inputs))  # as the CPU accounting: no fp32 copy
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    row = {"measured_weights_gb": weights / GB,
           "measured_step_gb": (torch.cuda.max_memory_allocated() - base - weights) / GB,
           "allocated_peak_gb": (torch.cuda.max_memory_allocated() - base) / GB,
           "reserved_peak_gb": torch.cuda.max_memory_reserved() / GB,
           "process_gb": process_gpu_memory_gb()}
    del model, optimizer, inputs, loss
    torch.cuda.empty_cache()
    return row


def measure_cpu(name: str, scale: str, techniques: Techniques, batch: int, img: int) -> dict[str, float]:
    """The CPU accounting of the same step (tensor bytes: weights, gradients, optimizer state, activations)."""
    model = build_backbone(name, scale=scale, img_size=img, modalities=list(MODALITIES), **asdict(techniques))
    memory = account_training_step(model, random_batch(batch, img, "cpu", torch.float32))
    step = memory.total - memory.weights
    return {"measured_weights_gb": memory.weights / GB, "measured_step_gb": step / GB,
            "allocated_peak_gb": memory.total / GB, "reserved_peak_gb": memory.total / GB, "process_gb": None}


def grid(backbones: list[str], techniques: list[str], cuda: bool) -> list[tuple[str, str, str]]:
    """(backbone, scale, technique): tiny under every technique (the reference CNN takes none), and on a GPU each
    backbone at full scale under QLoRA + checkpointing where it fits."""
    points = [(b, "tiny", t) for b in backbones for t in techniques if get_spec(b).tier != 0 or t == "none"]
    if cuda:
        free = torch.cuda.mem_get_info()[0] / GB
        for b in backbones:
            if get_spec(b).tier == 0:
                continue
            try:
                need = predicted(b, "full", NAMED_TECHNIQUES[FULL_SCALE_TECHNIQUE], 1, get_spec(b).native_img_size,
                                 "bf16-true")["predicted_peak_gb"]
            except ImportError:
                continue
            host_gb = backbone_params(b) * 4 / GB  # built on the host in fp32 before it moves (and quantizes)
            if need * FULL_SCALE_HEADROOM < free and host_gb < host_memory_gb() / 2:
                points.append((b, "full", FULL_SCALE_TECHNIQUE))
    return points


def host_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


def run_point(name: str, scale: str, technique: str, cuda: bool) -> dict[str, Any]:
    techniques = NAMED_TECHNIQUES[technique]
    batch, img = (TINY_BATCH, TINY_IMG) if scale == "tiny" else (1, get_spec(name).native_img_size)
    row: dict[str, Any] = {"backbone": name, "scale": scale, "technique": technique, "batch": batch, "img": img}
    try:
        ensure_registered(name)
    except ImportError as err:
        return {**row, "skipped": f"needs {err.name or err} (not installed here)"}
    precision = "bf16-true" if scale == "full" else "32-true"
    row.update(predicted(name, scale, techniques, batch, img, precision, allocator=cuda))
    try:
        row.update((measure_cuda if cuda else measure_cpu)(name, scale, techniques, batch, img))
    except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as err:  # one point's failure costs only itself
        if cuda:
            torch.cuda.empty_cache()
        return {**row, "skipped": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    row["error"] = (row["allocated_peak_gb"] - row["predicted_peak_gb"]) / row["allocated_peak_gb"]
    return row


def device_facts(cuda: bool) -> tuple[str, str]:
    if not cuda:
        return "cpu", platform.platform()
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        driver = "unknown"
    return torch.cuda.get_device_name(0), driver


def calibration_of(rows: list[dict[str, Any]], cuda: bool) -> Calibration:
    """Median ratios over the full-scale points where there are any (what packing and pruning size), else over all:
    tiny models' fixed allocator pools (about 0.1 GB reserved on an H100) would dominate the reserve ratio."""
    measured = [r for r in rows if "skipped" not in r]
    measured = [r for r in measured if r["scale"] == "full"] or measured
    device, driver = device_facts(cuda)

    def median_ratio(a: str, b: str) -> float:
        ratios = [r[a] / r[b] for r in measured if r.get(a) and r.get(b)]
        return statistics.median(ratios) if ratios else 1.0

    return Calibration(device=device, driver=driver, torch=torch.__version__,
                       weights=median_ratio("measured_weights_gb", "predicted_weights_gb"),
                       step=median_ratio("measured_step_gb", "predicted_step_gb"),
                       reserved_over_allocated=median_ratio("reserved_peak_gb", "allocated_peak_gb"), rows=rows)


def table(rows: list[dict[str, Any]], calibration: Calibration) -> str:
    head = (f"{'backbone':<15} {'scale':<5} {'technique':<13} {'predicted':>9} {'allocated':>9} {'reserved':>9} "
            f"{'process':>8} {'error':>7}")
    lines = [f"device: {calibration.device} (driver {calibration.driver}, torch {calibration.torch}); GB per training "
             "step, error = (allocated - predicted) / allocated", head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['backbone']:<15} {r['scale']:<5} {r['technique']:<13} skipped: {r['skipped']}")
            continue
        process = f"{r['process_gb']:>8.3f}" if r.get("process_gb") is not None else f"{'-':>8}"
        lines.append(f"{r['backbone']:<15} {r['scale']:<5} {r['technique']:<13} {r['predicted_peak_gb']:>9.4f} "
                     f"{r['allocated_peak_gb']:>9.4f} {r['reserved_peak_gb']:>9.4f} {process} {r['error']:>+7.1%}")
    lines.append(f"corrections (median measured / predicted): weights x{calibration.weights:.3f}, step "
                 f"x{calibration.step:.3f}, reserved / allocated x{calibration.reserved_over_allocated:.3f}")
    return "\n".join(lines)


def warm_up_cuda() -> None:
    """cuBLAS and cuDNN allocate their workspaces at their first call: before the first point, not inside it."""
    x = torch.randn(256, 256, device="cuda", requires_grad=True)
    conv = torch.nn.Conv2d(4, 4, 3).cuda()
    (x @ x).sum().backward()
    conv(torch.randn(1, 4, 16, 16, device="cuda")).sum().backward()
    torch.cuda.synchronize()


def run_calibration(backbones: list[str], out: Path, techniques: list[str] | None = None,
                    echo=print) -> Calibration:
    cuda = torch.cuda.is_available()
    if cuda:
        warm_up_cuda()
    names = backbones
    rows = []
    for name, scale, technique in grid(names, techniques or list(GRID_TECHNIQUES), cuda):
        rows.append(run_point(name, scale, technique, cuda))
        echo(f"measured {name} {scale} {technique}: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()
            if k not in ("backbone", "scale", "technique")))
        sys.stdout.flush()  # a long grid shows its rows as they come
    calibration = calibration_of(rows, cuda)
    calibration.save(out)
    echo(table(rows, calibration))
    echo(f"wrote {out}")
    return calibration
