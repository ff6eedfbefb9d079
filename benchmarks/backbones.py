"""`search bench`: backbones x scales x batch sizes → table, Parquet, bar chart.

Tiny scale is measured: a real forward pass and two training steps on real S1+S2 chips (memory by
the CPU accounting of em_backbones.sizing.memory, time by wall clock). Full scale is counted on the meta
device (parameters, weight GB at 16 and 32 bits) and measured only with `--measure-full`, which
needs the memory to hold it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.probe import full_scale_counts, probe
from em_backbones.catalog import get_spec
from em_backbones.sizing.memory import gigabytes
from search.outcome.export import write_results
from search.outcome.plotting import plt


def bench_rows(backbones: list[str], scales: list[str], batch_sizes: list[int], img_size: int,
               measure_full: bool) -> list[dict[str, Any]]:
    rows = []
    for name in backbones:
        published, as_backbone = full_scale_counts(name)
        for scale in scales:
            counted_only = scale == "full" and not measure_full
            for batch in ([None] if counted_only else batch_sizes):  # a meta count has no batch
                row: dict[str, Any] = {"backbone": name, "tier": get_spec(name).tier, "scale": scale,
                                       "batch_size": batch, "img_size": img_size,
                                       "params_published": published, "params_backbone": as_backbone}
                if counted_only:
                    row.update(measured=False, params=as_backbone, trainable=as_backbone,
                               weight_gb_16bit=gigabytes(2 * as_backbone), weight_gb_32bit=gigabytes(4 * as_backbone))
                else:
                    result = probe(name, scale, batch, img_size)
                    step = result.train_step
                    row.update(
                        measured=True, params=result.params, trainable=result.trainable,
                        weight_gb_16bit=gigabytes(2 * result.params), weight_gb_32bit=gigabytes(step.weights),
                        forward_activation_gb=gigabytes(step.activations),
                        train_step_gb=gigabytes(step.total),
                        forward_images_per_s=batch / result.forward_seconds,
                        train_images_per_s=batch / result.train_seconds,
                        output_shape=str(list(result.shapes[-1])), output_dtype=result.dtype,
                        output_min=result.value_min, output_max=result.value_max, finite=result.finite,
                    )
                rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(row, key, spec):
        value = row.get(key)
        return format(value, spec) if value is not None else format("-", spec.split(".")[0].rstrip("df"))

    header = (f"{'backbone':<15} {'scale':<5} {'bs':>3} {'params':>10} {'weights GB16':>12} {'train step GB':>13} "
              f"{'fwd act GB':>10} {'fwd img/s':>9} {'train img/s':>11} {'output':<18} {'range':<18}")
    lines = [header, "-" * len(header)]
    for r in rows:
        rng = f"{r['output_min']:.2g}..{r['output_max']:.2g}" if r.get("measured") else "(meta count only)"
        lines.append(f"{r['backbone']:<15} {r['scale']:<5} {cell(r, 'batch_size', '>3')} {r['params'] / 1e6:>9.1f}M "
                     f"{r['weight_gb_16bit']:>12.3f} {cell(r, 'train_step_gb', '>13.4f')} "
                     f"{cell(r, 'forward_activation_gb', '>10.4f')} {cell(r, 'forward_images_per_s', '>9.1f')} "
                     f"{cell(r, 'train_images_per_s', '>11.1f')} {r.get('output_shape', '-'):<18} {rng:<18}")
    return "\n".join(lines)


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    """Two panels: full-scale weight GB (16-bit) per backbone; measured train-step GB per configuration."""
    full = {r["backbone"]: gigabytes(2 * r["params_backbone"]) for r in rows}
    measured = [r for r in rows if r.get("measured")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].bar(list(full), list(full.values()), color="#4c72b0")
    axes[0].set_ylabel("GB"), axes[0].set_title("Full scale: backbone weights at 16 bits")
    axes[0].tick_params(axis="x", rotation=30)
    labels = [f"{r['backbone']}\n{r['scale']} bs{r['batch_size']}" for r in measured]
    axes[1].bar(labels, [r["train_step_gb"] for r in measured], color="#dd8452")
    axes[1].set_ylabel("GB"), axes[1].set_title("Measured training step (CPU accounting)")
    axes[1].tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(backbones: list[str], scales: list[str], batch_sizes: list[int], img_size: int, out: Path,
              measure_full: bool = False, echo=print) -> list[dict[str, Any]]:
    rows = bench_rows(backbones, scales, batch_sizes, img_size, measure_full)
    out.mkdir(parents=True, exist_ok=True)
    write_results(pa.Table.from_pylist(rows), out / "bench.parquet")
    draw(rows, out / "bench.png")
    echo(format_table(rows))
    echo(f"\nwrote {out / 'bench.parquet'} and {out / 'bench.png'}")
    return rows


def backbones_command(args) -> int:
    """`python -m search bench backbones`."""
    run_bench(args.backbones, args.scales, args.batch_sizes, args.img_size, args.out, args.measure_full)
    return 0
