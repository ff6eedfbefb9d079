"""`search memory`: what each memory technique buys, measured at tiny scale and predicted at full scale.

`--test all` trains two steps of the tiny backbone per technique on real S1+S2 chips (CPU accounting
of em_backbones.sizing.memory) and predicts the full-scale peak with em_backbones.sizing.estimate (bf16 weights
and activations, AdamW, batch 1 at the published input size by default).
`--validate` compares the estimator with the measurement on tiny configurations over every backbone
and technique, in fp32 and bf16, and prints the median and worst relative error of the total and of
the activations alone (recomputation included).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.probe import ProbeResult, probe
from em_backbones.catalog import CATALOG, get_spec
from em_backbones.sizing.estimate import MemoryEstimate, estimate
from em_backbones.sizing.memory import gigabytes
from em_backbones.techniques.config import NAMED_TECHNIQUES
from search.outcome.export import write_results
from search.outcome.plotting import plt

TECHNIQUES = NAMED_TECHNIQUES
TINY_IMG = 112
FULL_PRECISION = "bf16-true"


def check_memory_args(backbone: str | None, tests: list[str], validate: bool) -> None:
    """One line for a command that cannot run: no backbone to test, or a technique name unknown."""
    from search.errors import UserError

    if not validate and backbone is None:
        raise UserError("memory: give --backbone NAME (with --test) or --validate")
    bad = [t for t in tests if t not in TECHNIQUES and t != "all"]
    if bad:
        raise UserError(f"memory --test: unknown technique {bad[0]!r}; known: all, {', '.join(TECHNIQUES)}")


def measured_and_predicted(backbone: str, technique: str, batch: int,
                           precision: str = "32-true") -> tuple[ProbeResult, MemoryEstimate]:
    """Two AdamW steps of the tiny backbone on real chips, and the estimator's figure for the same step."""
    t = TECHNIQUES[technique]
    return (probe(backbone, "tiny", batch, TINY_IMG, techniques=t, precision=precision),
            estimate(backbone, "tiny", t, batch, TINY_IMG, precision))


def technique_rows(backbone: str, names: list[str], tiny_batch: int = 2, full_batch: int = 1,
                   full_img: int | None = None) -> list[dict[str, Any]]:
    full_img = full_img or get_spec(backbone).native_img_size
    rows = []
    for name in names:
        t = TECHNIQUES[name]
        measured, tiny = measured_and_predicted(backbone, name, tiny_batch)
        full = estimate(backbone, "full", t, full_batch, full_img, precision=FULL_PRECISION)
        rows.append({
            "backbone": backbone, "technique": name, **asdict(t),
            "tiny_trainable_params": measured.trainable, "tiny_weight_gb": gigabytes(measured.train_step.weights),
            "tiny_measured_gb": gigabytes(measured.train_step.total), "tiny_predicted_gb": gigabytes(tiny.total),
            "full_trainable_params": full.trainable_params, "full_weight_gb": gigabytes(full.weights),
            "full_optimizer_gb": gigabytes(full.gradients + full.optimizer_state),
            "full_activation_gb": gigabytes(full.activations + full.recompute),
            "full_overhead_gb": gigabytes(full.overhead),
            "full_predicted_peak_gb": gigabytes(full.peak), "full_batch_size": full_batch, "full_img_size": full_img,
        })
    return rows


def technique_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'technique':<14} {'tiny trainable':>14} {'tiny weights GB':>15} {'tiny measured GB':>16} "
              f"{'tiny predicted GB':>17} | {'full trainable':>14} {'full weights GB':>15} "
              f"{'full grads+opt GB':>17} {'full act GB':>11} {'full peak GB':>12}")
    lines = [f"{rows[0]['backbone']}: full scale = bf16, AdamW, batch {rows[0]['full_batch_size']}, "
             f"{rows[0]['full_img_size']} px", header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['technique']:<14} {r['tiny_trainable_params']:>14,} {r['tiny_weight_gb']:>15.5f} "
            f"{r['tiny_measured_gb']:>16.5f} {r['tiny_predicted_gb']:>17.5f} | {r['full_trainable_params']:>14,} "
            f"{r['full_weight_gb']:>15.2f} {r['full_optimizer_gb']:>17.2f} {r['full_activation_gb']:>11.2f} "
            f"{r['full_predicted_peak_gb']:>12.2f}")
    return "\n".join(lines)


def draw_techniques(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: predicted full-scale peak split into weights / grads+optimizer / activations. Right: tiny measured."""
    labels = [r["technique"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = [0.0] * len(rows)
    for key, colour, label in (("full_weight_gb", "#4c72b0", "weights"),
                               ("full_optimizer_gb", "#dd8452", "gradients + AdamW"),
                               ("full_activation_gb", "#55a868", "activations"),
                               ("full_overhead_gb", "#c4c4c4", "overhead (10%)")):
        values = [r[key] for r in rows]
        axes[0].bar(labels, values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    axes[0].set_ylabel("GB"), axes[0].legend()
    axes[0].set_title(f"{rows[0]['backbone']} full scale, predicted (bf16, batch {rows[0]['full_batch_size']})")
    axes[1].bar(labels, [r["tiny_measured_gb"] * 1e3 for r in rows], color="#8172b3", label="measured")
    axes[1].plot(labels, [r["tiny_predicted_gb"] * 1e3 for r in rows], "k_", markersize=22, label="predicted")
    axes[1].set_ylabel("MB"), axes[1].legend(), axes[1].set_title("tiny scale, one training step on CPU")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def validation_configs(backbones: list[str] | None = None) -> list[tuple[str, str, int, str]]:
    """Every backbone x every technique, batch sizes 1, 2 and 4 in turn, in fp32 and in bf16: 112 tiny
    configurations (InternVL's three tiny shapes keep the published FFN/hidden and KV/hidden ratios)."""
    configs = []
    for i, backbone in enumerate(backbones or CATALOG):
        for j, technique in enumerate(TECHNIQUES):
            if get_spec(backbone).tier == 0 and technique != "none":
                continue  # the reference CNN takes no memory technique
            for precision in ("32-true", "bf16-true"):
                configs.append((backbone, technique, (1, 2, 4)[(i + j) % 3], precision))
    return configs


def relative(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def validation_rows(configs: list[tuple[str, str, int, str]]) -> list[dict[str, Any]]:
    rows = []
    for backbone, technique, batch, precision in configs:
        result, predicted = measured_and_predicted(backbone, technique, batch, precision)
        measured = result.train_step
        rows.append({"backbone": backbone, "technique": technique, "batch_size": batch, "precision": precision,
                     "measured_gb": gigabytes(measured.total), "predicted_gb": gigabytes(predicted.total),
                     "measured_activation_gb": gigabytes(measured.activations + measured.recompute),
                     "predicted_activation_gb": gigabytes(predicted.activations + predicted.recompute),
                     "measured_recompute_gb": gigabytes(measured.recompute),
                     "predicted_recompute_gb": gigabytes(predicted.recompute),
                     "relative_error": relative(predicted.total, measured.total),
                     "activation_error": relative(predicted.activations + predicted.recompute,
                                                  measured.activations + measured.recompute)})
    return rows


def error_summary(rows: list[dict[str, Any]], key: str) -> str:
    errors = [abs(r[key]) for r in rows]
    worst = max(rows, key=lambda r: abs(r[key]))
    return (f"median |error| {statistics.median(errors):.1%}, worst {max(errors):.1%} "
            f"({worst['backbone']}, {worst['technique']}, batch {worst['batch_size']})")


def validation_table(rows: list[dict[str, Any]]) -> str:
    """Total error (what the search ranks by) and activation-only error (what the per-layer terms predict)."""
    header = (f"{'backbone':<15} {'technique':<14} {'bs':>3} {'precision':<9} {'measured MB':>12} {'predicted MB':>12} "
              f"{'error':>7} {'act MB':>9} {'act error':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['backbone']:<15} {r['technique']:<14} {r['batch_size']:>3} {r['precision']:<9} "
                     f"{r['measured_gb'] * 1e3:>12.3f} {r['predicted_gb'] * 1e3:>12.3f} {r['relative_error']:>+7.1%} "
                     f"{r['measured_activation_gb'] * 1e3:>9.3f} {r['activation_error']:>+9.1%}")
    lines.append("")
    for precision in sorted({r["precision"] for r in rows}):
        subset = [r for r in rows if r["precision"] == precision]
        lines.append(f"{precision}, {len(subset)} configurations: total {error_summary(subset, 'relative_error')}; "
                     f"activations only {error_summary(subset, 'activation_error')}")
    lines.append("goal: median total |error| <= 10%")
    return "\n".join(lines)


def run_memory(backbone: str | None, tests: list[str], validate: bool, out: Path, full_batch: int = 1,
               full_img: int | None = None, echo=print, backbones: list[str] | None = None) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    if validate:
        rows = validation_rows(validation_configs(backbones))
        write_results(pa.Table.from_pylist(rows), out / "memory_validation.parquet")
        echo(validation_table(rows))
        echo(f"\nwrote {out / 'memory_validation.parquet'}")
        return rows
    names = list(TECHNIQUES) if tests == ["all"] else tests
    rows = technique_rows(backbone, names, full_batch=full_batch, full_img=full_img)
    stem = f"memory_{backbone}"
    write_results(pa.Table.from_pylist(rows), out / f"{stem}.parquet")
    draw_techniques(rows, out / f"{stem}.png")
    echo(technique_table(rows))
    echo(f"\nwrote {out / f'{stem}.parquet'} and {out / f'{stem}.png'}")
    return rows


def memory_command(args) -> int:
    """`python -m search memory`."""
    check_memory_args(args.backbone, args.test, args.validate)
    run_memory(args.backbone, args.test, args.validate, args.out, args.full_batch_size, args.full_img_size,
               backbones=args.backbones)
    return 0
