"""Build a backbone and run it on a real S1+S2 batch: the shared core of `search check` and `search bench`.

The batch comes from the packaged TerraMesh chips (real Sentinel-1 RTC + Sentinel-2 L2A),
normalised per band, centre-cropped to the requested size.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import rasterio
import torch

from em_backbones.registry import build_backbone
from em_backbones.sizing.counting import backbone_params, published_params
from em_backbones.sizing.memory import MemoryBreakdown, account_training_step, weight_bytes
from em_backbones.techniques.config import Techniques
from search.data.spec import LAYOUTS
from search.data.tiles import SAMPLE_DATA


def real_batch(batch_size: int, size: int, modalities: tuple[str, ...] = ("S1RTC", "S2L2A")) -> dict[str, torch.Tensor]:
    """`batch_size` chips (repeated if needed), centre-cropped to `size`, each band standardised."""
    chips = sorted(p.stem for p in (SAMPLE_DATA / LAYOUTS["terramesh"]["label"]).glob("*.tif"))
    out = {}
    for modality in modalities:
        arrays = []
        for i in range(batch_size):
            with rasterio.open(SAMPLE_DATA / modality / f"{chips[i % len(chips)]}.tif") as src:
                data = src.read().astype(np.float32)
            top = max(0, (data.shape[1] - size) // 2)
            crop = data[:, top:top + size, top:top + size]
            if crop.shape[1] < size:
                crop = np.pad(crop, ((0, 0), (0, size - crop.shape[1]), (0, size - crop.shape[2])), mode="reflect")
            mean, std = crop.mean(axis=(1, 2), keepdims=True), crop.std(axis=(1, 2), keepdims=True) + 1e-6
            arrays.append((crop - mean) / std)
        out[modality] = torch.from_numpy(np.stack(arrays))
    return out


@dataclass
class ProbeResult:
    """What one forward and one training step of a backbone showed."""

    shapes: list[tuple[int, ...]]
    dtype: str
    value_min: float
    value_max: float
    value_mean: float
    finite: bool
    params: int
    trainable: int
    train_step: MemoryBreakdown
    forward_seconds: float
    train_seconds: float


def probe(name: str, scale: str, batch_size: int, img_size: int, train_step: bool = True,
          techniques: Techniques = Techniques(), precision: str = "32-true") -> ProbeResult:
    """`precision` "bf16-true" converts the built model and the batch as Lightning's true-half precision does."""
    model = build_backbone(name, scale=scale, img_size=img_size, **asdict(techniques))
    batch = real_batch(batch_size, img_size)
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
        batch = {k: v.to(torch.bfloat16) for k, v in batch.items()}
    model.eval()
    with torch.no_grad():
        started = time.perf_counter()
        outputs = model(batch)
        forward_seconds = time.perf_counter() - started
    stacked = torch.cat([o.detach().flatten().float() for o in outputs])
    memory, train_seconds = MemoryBreakdown(weight_bytes(model), 0, 0, 0), float("nan")
    if train_step:
        started = time.perf_counter()
        memory = account_training_step(model, batch)
        train_seconds = (time.perf_counter() - started) / 2  # two steps
    return ProbeResult(
        shapes=[tuple(o.shape) for o in outputs], dtype=str(outputs[0].dtype).replace("torch.", ""),
        value_min=float(stacked.min()), value_max=float(stacked.max()), value_mean=float(stacked.mean()),
        finite=bool(torch.isfinite(stacked).all()),
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        train_step=memory, forward_seconds=forward_seconds, train_seconds=train_seconds,
    )


def full_scale_counts(name: str) -> tuple[int, int]:
    """(as published, as backbone) at full scale, counted on the meta device."""
    return published_params(name), backbone_params(name)
