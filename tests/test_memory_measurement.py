"""The CPU memory accounting moves with what it claims to measure: model size, batch, checkpointing."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from terratorch.tasks import SemanticSegmentationTask

import em_backbones.registered  # noqa: F401
from search.training.memory_meter import PeakMemoryMeter


def measure(backbone: str, batch_size: int, checkpointing: bool = False):
    torch.manual_seed(0)
    samples = [
        {"image": {"S1RTC": torch.randn(2, 64, 64), "S2L2A": torch.randn(12, 64, 64)},
         "mask": torch.randint(0, 4, (64, 64))}
        for _ in range(2 * batch_size)
    ]
    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size)
    task = SemanticSegmentationTask(
        model_factory="EncoderDecoderFactory",
        model_args={"backbone": backbone, "backbone_scale": "tiny", "backbone_img_size": 64,
                    "backbone_gradient_checkpointing": checkpointing, "decoder": "UperNetDecoder",
                    "decoder_channels": 32, "num_classes": 4},
        optimizer="AdamW", lr=1e-3, plot_on_val=False, ignore_index=-1,
    )
    meter = PeakMemoryMeter()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[meter])
    trainer.fit(task, train_dataloaders=loader)
    return meter, task


def test_breakdown_matches_model_and_optimizer():
    meter, task = measure("em_clay", batch_size=2)
    params = sum(p.numel() * 4 for p in task.parameters())
    buffers = sum(t.numel() * t.element_size() for t in task.buffers())  # e.g. the decoder's BatchNorm statistics
    b = meter.peak_breakdown
    assert b.weights == params + buffers and b.gradients == params
    assert b.optimizer_state >= 2 * params  # AdamW keeps two moments per parameter (measured after step 1)
    assert b.activations > 0 and meter.peak_bytes == b.total
    assert meter.method.startswith("cpu_accounting")


def test_activation_bytes_grow_linearly_with_batch():
    acts = {b: measure("em_clay", batch_size=b)[0].peak_breakdown.activations for b in (2, 4, 8)}
    # Batch-independent saved tensors (Clay's generated patch-embedding weights) cancel in the
    # differences; what is left must scale with the batch: twice the step, twice the bytes.
    assert acts[2] < acts[4] < acts[8]
    assert (acts[8] - acts[4]) == pytest.approx(2 * (acts[4] - acts[2]), rel=0.05)


def test_memory_grows_with_model_size():
    clay, _ = measure("em_clay", batch_size=2)
    prithvi, _ = measure("em_prithvi", batch_size=2)
    assert prithvi.peak_breakdown.weights > 2 * clay.peak_breakdown.weights
    assert prithvi.peak_bytes > clay.peak_bytes


def test_checkpointing_lowers_saved_activations():
    plain, _ = measure("em_terramind", batch_size=2)
    checkpointed, _ = measure("em_terramind", batch_size=2, checkpointing=True)
    assert checkpointed.peak_breakdown.activations < 0.7 * plain.peak_breakdown.activations
    assert checkpointed.peak_breakdown.weights == plain.peak_breakdown.weights


def test_checkpointing_recompute_is_counted():
    """Backward rebuilds one checkpointed block at a time: the trial's CPU figure charges that block.

    Independent check: without checkpointing every block keeps its saved tensors; with it each keeps
    only its input. So the drop in end-of-forward activations, per block, is what one block holds
    beyond its input - which is what rebuilding it in backward adds back (identical blocks)."""
    from em_backbones.sizing.memory import checkpointed_units

    plain, _ = measure("em_prithvi", batch_size=2)
    checkpointed, task = measure("em_prithvi", batch_size=2, checkpointing=True)
    blocks = len(checkpointed_units(task.model.encoder))
    per_block = (plain.peak_breakdown.activations - checkpointed.peak_breakdown.activations) / blocks
    assert plain.peak_breakdown.recompute == 0
    assert checkpointed.peak_breakdown.recompute == pytest.approx(per_block, rel=0.02)
    assert checkpointed.peak_bytes == checkpointed.peak_breakdown.total  # the recompute is part of the peak


@pytest.mark.parametrize("backbone, checkpointing", [("em_prithvi", True), ("em_terramind", False)])
def test_prediction_covers_what_the_trial_measures_decoder_and_head_included(backbone, checkpointing):
    """The trial measures the whole TerraTorch task; the prediction adds decoder, head and loss to the backbone."""
    from em_backbones.sizing.estimate import estimate
    from em_backbones.sizing.head_estimate import decoder_head_memory
    from em_backbones.techniques.config import Techniques

    meter, _ = measure(backbone, batch_size=2, checkpointing=checkpointing)
    head = decoder_head_memory(backbone, "tiny", 64, ("S1RTC", "S2L2A"), "UperNetDecoder", (("decoder_channels", 32),),
                               4, 2)
    alone = estimate(backbone, "tiny", Techniques(gradient_checkpointing=checkpointing), 2, 64)
    predicted = alone.plus(head)
    assert head.total > 0.03 * meter.peak_bytes  # large enough that leaving it out would show
    assert predicted.total == pytest.approx(meter.peak_bytes, rel=0.01)
    assert predicted.weights == pytest.approx(meter.peak_breakdown.weights, rel=0.001)
