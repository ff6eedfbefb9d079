"""`search bench fullscale`: published-size backbones loaded quantized and trained one step, on this host.

For each backbone (InternVL2.5-4B and Granite 4.0 Tiny by default):
1. Random weights are written once as a sharded safetensors checkpoint in Hugging Face's layout
   (config.json + index), one shard at a time from the architecture built on `meta`: the full model
   is never held, at any precision.
2. A fresh process builds the backbone from that directory with NF4 (double quantization) + LoRA
   r16 + gradient checkpointing, loading shard by shard into 4-bit layers (em_backbones/techniques/loading.py),
   then runs one training step (AdamW) at the published input size, batch 1, on Sentinel-1 +
   Sentinel-2 shaped input.
3. Memory is read by an instrument the estimator never saw: the kernel's high-water mark of the
   process's resident set (`VmHWM` in /proc/self/status), reset between phases through
   /proc/self/clear_refs; the baseline (interpreter and libraries, measured before building) is
   subtracted. Each backbone is measured twice: in an ordinary process (no environment set; the loader
   fixes glibc's mmap and trim thresholds itself, em_backbones/techniques/loading.py) and in one
   started with those thresholds in the environment (MALLOC_MMAP_THRESHOLD_, the earlier way). Before
   the loader did it, the ordinary process read +28% at load and +41% at the step (InternVL2.5-4B):
   freed heap that stayed resident. Both are set against the predictions: loading = the quantized model + the largest shard
   (+ one layer's experts), the training step = the estimator's weights + gradients + optimizer
   state + activations + the recomputed checkpointed layer (em_backbones/sizing/estimate.py; the 10% GPU
   allocator overhead is left out on a CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_BACKBONES = ("internvl2_4b", "granite_4_tiny")
SHARD_BYTES = 2_000_000_000
# Freed tensors return to the OS at once, so VmHWM counts live memory only (see the module docstring).
MEASURING_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
TECHNIQUES = {"quantization_bits": 4, "quant_type": "nf4", "double_quant": True, "lora_rank": 16,
              "gradient_checkpointing": True}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the resident set's high-water mark (VmHWM) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def hf_model_on_meta(name: str, scale: str = "full"):
    """The Hugging Face part of a backbone at full scale, parameters on meta."""
    from accelerate import init_empty_weights

    from em_backbones.registry import backbone_class, build_backbone

    with init_empty_weights():
        backbone = build_backbone(name, scale=scale)
    return getattr(backbone, backbone_class(name).hf_attribute)


def random_tensor(key: str, shape: tuple[int, ...], dtype) -> Any:
    import torch

    if key.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in key and len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, dtype=torch.float32) * 0.02).to(dtype)


def write_random_checkpoint(name: str, directory: Path, shard_bytes: int = SHARD_BYTES,
                            scale: str = "full") -> dict[str, Any]:
    """Random bf16 weights for every parameter of the Hugging Face part, written shard by shard."""
    import torch
    from safetensors.torch import save_file

    hf = hf_model_on_meta(name, scale)
    directory.mkdir(parents=True, exist_ok=True)
    hf.config.save_pretrained(directory)
    params = [(k, tuple(p.shape)) for k, p in hf.named_parameters()]
    shards, current, size = [], {}, 0
    for key, shape in params:
        tensor = random_tensor(key, shape, torch.bfloat16)
        current[key] = tensor
        size += tensor.numel() * 2
        if size >= shard_bytes:
            shards.append(current)
            save_file(current, directory / f"shard-{len(shards):05d}.safetensors")
            current, size = {}, 0
            shards[-1] = list(shards[-1])  # keep the names only: the tensors are on disk
    if current:
        shards.append(current)
        save_file(current, directory / f"shard-{len(shards):05d}.safetensors")
        shards[-1] = list(shards[-1])
    weight_map = {key: f"shard-{i + 1:05d}.safetensors" for i, keys in enumerate(shards) for key in keys}
    total = sum(p.numel() * 2 for _, p in hf.named_parameters())
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return {"params": sum(p.numel() for p in hf.parameters()), "shards": len(shards), "bytes": total}


def measure(name: str, directory: Path, scale: str = "full") -> dict[str, Any]:
    """In this (fresh) process: baseline, load, one training step; high-water marks and predictions."""
    import gc

    import torch
    from accelerate import init_empty_weights

    from em_backbones.catalog import get_spec
    from em_backbones.registry import build_backbone
    from em_backbones.sizing.estimate import estimate
    from em_backbones.techniques.config import Techniques
    from em_backbones.techniques.loading import ShardLoader, release_heap

    techniques = Techniques(**TECHNIQUES)
    size = get_spec(name).native_img_size if scale == "full" else 112
    modalities = ("S1RTC", "S2L2A")
    with init_empty_weights():  # the same backbone on meta, to predict what loading needs before it starts
        loader = ShardLoader(build_backbone(name, scale=scale, img_size=size), techniques)
    predicted_load = loader.predicted_bytes(directory)
    del loader
    gc.collect()
    torch.manual_seed(0)
    batch = {"S1RTC": torch.randn(1, 2, size, size), "S2L2A": torch.randn(1, 12, size, size)}
    baseline = status_kb("VmRSS")
    reset_peak()
    started = time.monotonic()
    model = build_backbone(name, scale=scale, img_size=size, ckpt_path=str(directory), **TECHNIQUES)
    load_seconds = time.monotonic() - started
    load_peak = status_kb("VmHWM") - baseline
    gc.collect()
    release_heap()  # what a trial does between loading and training (search/training/worker.py)
    reset_peak()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    started = time.monotonic()
    loss = sum(out.float().square().mean() for out in model(batch))
    loss.backward()
    optimizer.step()
    step_seconds = time.monotonic() - started
    step_peak = status_kb("VmHWM") - baseline
    predicted = estimate(name, scale, techniques, 1, size, "32-true", modalities)
    return {"backbone": name, "img_size": size, "baseline_gb": baseline * 1024 / 1e9,
            "load_seconds": load_seconds, "load_peak_gb": load_peak * 1024 / 1e9, "predicted_load_gb": predicted_load / 1e9,
            "step_seconds": step_seconds, "step_peak_gb": step_peak * 1024 / 1e9,
            "predicted_step_gb": predicted.total / 1e9,
            "predicted_weights_gb": predicted.weights / 1e9,
            "predicted_activation_gb": (predicted.activations + predicted.recompute) / 1e9,
            "trainable_params": predicted.trainable_params, "loss": float(loss)}


def error(measured: float, predicted: float) -> float:
    return (measured - predicted) / measured


PROCESSES = {"ordinary": {}, "thresholds in env": MEASURING_ENV}


def run_fullscale_bench(backbones: list[str], directory: Path, keep: bool, out: Path, echo=print,
                        scale: str = "full") -> list[dict]:
    """Write each checkpoint (once), measure it in fresh processes (ordinary, and with glibc's thresholds in the
    environment), print the table. `scale: tiny` runs the same steps on the tiny architecture in seconds."""
    import shutil

    import pyarrow as pa

    from search.outcome.export import write_results

    rows = []
    for name in backbones:
        ckpt = directory / name
        if not (ckpt / "model.safetensors.index.json").is_file():
            started = time.monotonic()
            written = write_random_checkpoint(name, ckpt, scale=scale)
            echo(f"{name}: wrote {written['params'] / 1e9:.2f} B random bf16 parameters in {written['shards']} shards "
                 f"({written['bytes'] / 1e9:.1f} GB) in {time.monotonic() - started:.0f} s")
        for process, extra_env in PROCESSES.items():
            environment = {k: v for k, v in os.environ.items() if k not in MEASURING_ENV} | extra_env
            done = subprocess.run([sys.executable, "-m", "benchmarks.fullscale", name, str(ckpt), scale],
                                  capture_output=True, text=True, timeout=3600, env=environment)
            if done.returncode != 0:
                raise RuntimeError(f"{name}: measurement failed: {done.stderr.strip().splitlines()[-3:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(process=process, load_error=error(row["load_peak_gb"], row["predicted_load_gb"]),
                       step_error=error(row["step_peak_gb"], row["predicted_step_gb"]))
            rows.append(row)
            echo(f"{name} ({process} process): load peak {row['load_peak_gb']:.2f} GB (predicted "
                 f"{row['predicted_load_gb']:.2f}), training step peak {row['step_peak_gb']:.2f} GB (predicted "
                 f"{row['predicted_step_gb']:.2f}), {row['load_seconds']:.0f} s + {row['step_seconds']:.0f} s")
        if not keep:
            shutil.rmtree(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    write_results(pa.Table.from_pylist(rows), out / "fullscale.parquet")
    echo(fullscale_table(rows))
    return rows


def fullscale_table(rows: list[dict]) -> str:
    header = (f"{'backbone':<15} {'process':<17} {'load peak GB':>12} {'predicted':>9} {'error':>7} {'step peak GB':>12} "
              f"{'predicted':>9} {'error':>7} {'load s':>7} {'step s':>7}")
    lines = ["NF4 + double quantization, LoRA r16, gradient checkpointing; batch 1 at the input size; "
             "peaks = VmHWM minus the baseline before building", header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['backbone']:<15} {r['process']:<17} {r['load_peak_gb']:>12.2f} {r['predicted_load_gb']:>9.2f} "
                     f"{r['load_error']:>+7.1%} {r['step_peak_gb']:>12.2f} {r['predicted_step_gb']:>9.2f} "
                     f"{r['step_error']:>+7.1%} {r['load_seconds']:>7.0f} {r['step_seconds']:>7.0f}")
    return "\n".join(lines)


def fullscale_command(args) -> int:
    """`python -m search bench fullscale`."""
    run_fullscale_bench(args.backbones, args.checkpoints, args.keep, args.out, scale=args.scale)
    return 0


if __name__ == "__main__":  # the measuring process: python -m benchmarks.fullscale NAME CHECKPOINT_DIR
    print(json.dumps(measure(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])))  # NAME DIR [SCALE]
