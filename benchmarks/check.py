"""`search check BACKBONE`: build it, run real S1+S2 chips through it, print what came out."""

from __future__ import annotations

from benchmarks.probe import full_scale_counts, probe
from em_backbones.catalog import get_spec
from em_backbones.sizing.memory import gigabytes


def check_backbone(name: str, scale: str = "tiny", batch_size: int = 2, img_size: int = 112, echo=print) -> bool:
    """True when every output value is finite."""
    spec = get_spec(name)
    result = probe(name, scale, batch_size, img_size)
    published, as_backbone = full_scale_counts(name)
    echo(f"{name} (tier {spec.tier}, {spec.family}): {spec.description}")
    echo(f"  input: S1RTC [{batch_size}, 2, {img_size}, {img_size}] + S2L2A [{batch_size}, 12, {img_size}, {img_size}] "
         f"(real TerraMesh chips)")
    for i, shape in enumerate(result.shapes):
        echo(f"  feature map {i}: {list(shape)} {result.dtype}")
    echo(f"  values: min {result.value_min:.4g}, max {result.value_max:.4g}, mean {result.value_mean:.4g}, "
         f"finite: {'yes' if result.finite else 'NO'}")
    echo(f"  parameters at {scale}: {result.params:,} ({result.trainable:,} trainable)")
    echo(f"  parameters at full scale (meta): {published / 1e9:.3f} B as published, "
         f"{as_backbone / 1e9:.3f} B as backbone")
    echo(f"  training step memory at {scale} (CPU accounting): {gigabytes(result.train_step.total):.4f} GB")
    return result.finite


def check_command(args) -> int:
    """`python -m search check BACKBONE`: exit 1 when an output is not finite."""
    return 0 if check_backbone(args.backbone, args.scale, args.batch_size, args.img_size) else 1
