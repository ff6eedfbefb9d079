"""Memory of what TerraTorch puts on top of a backbone: decoder, head, and the loss on the logits.

The trial's measured peak covers the whole task, so the prediction must too. These modules are
small beside the backbone and have no analytic model here: they are built for real with
TerraTorch's own factory (the backbone on `meta`, free at any scale) and traced once, fed zero
feature maps of the backbone's output shapes, through TerraTorch's own `PixelWiseModel.forward`
and a cross-entropy loss, under the same saved-tensor count the trials use. Feature-map sides
depend on the input size and patching only, so they are read from the tiny backbone at the same size.
"""

from __future__ import annotations

import functools

import torch
from accelerate import init_empty_weights
from terratorch.models import EncoderDecoderFactory
from torch import nn

import em_backbones.registered  # noqa: F401  (TerraTorch's factory builds the project's backbones by name)
from em_backbones.bands import bands_of
from em_backbones.registry import build_backbone
from em_backbones.sizing.estimate import adamw_state_bytes
from em_backbones.sizing.memory import MemoryBreakdown, SavedActivationCounter
from em_backbones.techniques.config import PRECISION_BYTES

TRACE_BATCH = 2  # BatchNorm in training mode needs more than one value per channel


@functools.lru_cache(maxsize=64)
def feature_sides(name: str, img_size: int, modalities: tuple[str, ...]) -> tuple[int, ...]:
    """Side of each feature map the backbone returns (the tiny model: same patching as the full one)."""
    backbone = build_backbone(name, scale="tiny", img_size=img_size, modalities=list(modalities)).eval()
    with torch.no_grad():
        return tuple(f.shape[-1] for f in backbone(zero_batch(1, img_size, modalities)))


def zero_batch(batch: int, img_size: int, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {m: torch.zeros(batch, len(bands_of(m)), img_size, img_size) for m in modalities}


class FixedFeatures(nn.Module):
    """Stands in for the encoder: the feature maps the backbone would return, requiring grad as they do."""

    def __init__(self, features: list[torch.Tensor]) -> None:
        super().__init__()
        self.features = features

    def forward(self, x, **kwargs) -> list[torch.Tensor]:
        return self.features


@functools.lru_cache(maxsize=64)
def decoder_head_memory(name: str, scale: str, img_size: int, modalities: tuple[str, ...], decoder: str,
                        decoder_args: tuple[tuple[str, object], ...], num_classes: int, batch_size: int,
                        precision: str = "32-true") -> MemoryBreakdown:
    """One training step of decoder + head + loss at `batch_size` (AdamW): exact parameter bytes, traced
    activations (linear in the batch: traced at TRACE_BATCH and scaled)."""
    with init_empty_weights(include_buffers=False):
        model = EncoderDecoderFactory().build_model(
            task="segmentation", backbone=name, backbone_scale=scale, backbone_img_size=img_size,
            backbone_modalities=list(modalities), decoder=decoder, num_classes=num_classes, **dict(decoder_args))
    channels = model.encoder.out_channels
    model.encoder = FixedFeatures([torch.zeros(TRACE_BATCH, c, s, s, requires_grad=True)
                                   for c, s in zip(channels, feature_sides(name, img_size, modalities))])
    model.to_empty(device="cpu")  # the encoder is gone: this materialises decoder, head and neck only
    params = list(model.parameters())
    with SavedActivationCounter(exclude=model) as counter:
        logits = model(zero_batch(TRACE_BATCH, img_size, modalities)).output
        loss = nn.functional.cross_entropy(logits, torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long))
    del loss
    scale_bytes = PRECISION_BYTES[precision] / 4
    n_params = sum(p.numel() for p in params)
    n_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return MemoryBreakdown(weights=(n_params + n_buffers) * PRECISION_BYTES[precision],
                           gradients=n_params * PRECISION_BYTES[precision],
                           optimizer_state=adamw_state_bytes(n_params, len(params), PRECISION_BYTES[precision]),
                           activations=counter.bytes * scale_bytes * batch_size / TRACE_BATCH)
