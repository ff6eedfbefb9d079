"""`search capacity --simulate SPACE`: a search of SPACE at full scale replayed on a simulated GPU node, packed
by predicted memory against one GPU per trial.

What is real: Ray's scheduler, placing Tune trials over declared resources (default 8 GPUs of 80 GB
on one node, `ray.init(num_gpus=8)`), each trial asking for its GPU share exactly as a packed search
does (search/plan/sampling.py: gpu_share; prediction = the estimator at full scale, the published
input size, bf16, plus the per-process overhead, times 1.1). What is modelled: the training itself.
A trial runs `STEPS` steps; a step alone takes 6·N·T FLOPs (N the backbone's parameters, T the
tokens of a batch: forward 2NT, backward 4NT, LoRA's few trainable weights aside) at `EFFECTIVE_TFLOPS`
times its GPU utilisation u = min(1, T / SATURATION_TOKENS) (a batch-1 QLoRA step keeps a large
GPU mostly idle); trials sharing a GPU slow each other once their utilisations sum past 1 (each
step takes max(1, Σu) times as long). Simulated seconds run `time_scale` (default 200) times faster than
real ones, from the moment every trial Ray admitted first (a placement group it created) has its process
started: starting 27 trial processes took 8 s on 2 CPUs, which real trials of hours never notice but a replay
200 times faster counted as 0.45 simulated hours, and the first trials ended before the last of their wave
had started ("most in flight" then measured process start-up, not the scheduler). Later trials mostly reuse
a finished trial's process (`reuse_actors`). Printed: trials in flight (most and mean), simulated wall
time, the fullest GPU's memory, and the packed / one-GPU ratios; no simulated GPU may exceed its memory.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory

EFFECTIVE_TFLOPS = 400.0  # bf16 an H100-class GPU sustains on large matmuls (about 40% of its dense peak)
SATURATION_TOKENS = 8192  # tokens per step from which one trial keeps the GPU busy
STEPS = 200
CHUNK = 20  # steps between two looks at how loaded the GPU is
FIRST_WAVE_TIMEOUT_S = 120.0  # the clock starts then even if an admitted trial never started


@dataclass(frozen=True)
class SimTrial:
    label: str
    predicted_gb: float
    share: float
    utilisation: float
    step_seconds: float  # alone


@ray.remote(num_cpus=0)
class GpuLoad:
    """Which trial runs on which GPU, with what utilisation and memory; the most in flight at once."""

    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale
        self.running: dict[str, tuple[str, float, float]] = {}
        self.most, self.samples, self.fullest = 0, [], {}
        self.first = self.clock_started = self.last = None

    def start(self, trial: str, gpu: str, utilisation: float, need_gb: float) -> None:
        self.first = self.first or time.monotonic()
        self.running[trial] = (gpu, utilisation, need_gb)
        self.most = max(self.most, len(self.running))
        used = sum(n for g, _, n in self.running.values() if g == gpu)
        self.fullest[gpu] = max(self.fullest.get(gpu, 0.0), used)

    def clock_running(self) -> bool:
        """Whether simulated time runs: once every placement group Ray created holds a started trial."""
        if self.clock_started is None:
            admitted = sum(pg["state"] == "CREATED" for pg in ray.util.placement_group_table().values())
            if len(self.running) >= admitted or time.monotonic() - self.first > FIRST_WAVE_TIMEOUT_S:
                self.clock_started = time.monotonic()
        return self.clock_started is not None

    def load(self, gpu: str) -> float:
        self.samples.append(len(self.running))
        return sum(u for g, u, _ in self.running.values() if g == gpu)

    def stop(self, trial: str) -> None:
        self.running.pop(trial, None)
        self.last = time.monotonic()

    def report(self) -> dict:
        """Wall time from the clock's start to the last trial's end, in simulated hours."""
        return {"most": self.most, "mean": sum(self.samples) / max(1, len(self.samples)),
                "fullest_gb": max(self.fullest.values(), default=0.0),
                "wall_hours": (self.last - self.clock_started) * self.time_scale / 3600}


def simulated_trial(config: dict) -> None:
    """One trial: on its GPU for STEPS steps, each as slow as the GPU's load makes it."""
    load = ray.get_actor("gpu_load", namespace="simulate")
    gpu = str(ray.get_gpu_ids()[0]) if ray.get_gpu_ids() else "?"
    trial = tune.get_context().get_trial_id()
    ray.get(load.start.remote(trial, gpu, config["utilisation"], config["need_gb"]))
    while not ray.get(load.clock_running.remote()):  # the rest of the first wave is still starting
        time.sleep(0.2)
    for _ in range(STEPS // CHUNK):
        slowdown = max(1.0, ray.get(load.load.remote(gpu)))
        time.sleep(CHUNK * config["step_seconds"] * slowdown / config["time_scale"])
    ray.get(load.stop.remote(trial))
    tune.report({"done": 1})


def configurations(space_path: Path, gpu_gb: float, overhead_gb: float, qlora_only: bool = True,
                   batch_sizes: tuple[int, ...] | None = None) -> list[SimTrial]:
    """Every configuration of the space's grid at full scale (bf16, published input size); `qlora_only`: the
    QLoRA ones (4-bit + LoRA + gradient checkpointing), the only way tier 3 fits a GPU at full scale."""
    from em_backbones.catalog import get_spec
    from em_backbones.sizing.counting import backbone_params
    from em_backbones.sizing.estimate import estimate
    from search.plan.sampling import gpu_share
    from search.plan.space import load_space

    space = load_space(space_path)
    knobs = list(space.techniques.choices)
    trials = []
    for backbone in space.backbones:
        img = get_spec(backbone).native_img_size
        params = backbone_params(backbone)
        for values in itertools.product(*space.techniques.choices.values(), batch_sizes or space.training.batch_size):
            *knob_values, batch = values
            techniques = space.techniques.of(dict(zip(knobs, knob_values)))
            if qlora_only and not (techniques.quantization_bits == 4 and techniques.lora_rank > 0
                                   and techniques.gradient_checkpointing):
                continue
            peak = estimate(backbone, "full", techniques, batch, img, "bf16-true").peak / 1e9
            tokens = batch * (img // get_spec(backbone).patch_size * 2) ** 2  # the vision tower's 14 px patches
            utilisation = min(1.0, tokens / SATURATION_TOKENS)
            step = 6 * params * tokens / (EFFECTIVE_TFLOPS * 1e12 * utilisation)
            label = f"{backbone} {'/'.join(str(v) for v in knob_values)} bs{batch}"
            trials.append(SimTrial(label, peak, gpu_share(peak, overhead_gb, gpu_gb, 0.10), utilisation, step))
    return trials


def replay(trials: list[SimTrial], packed: bool, time_scale: float, overhead_gb: float) -> dict:
    """One simulated search: every trial through Tune, on the local Ray `simulate` started."""
    load = GpuLoad.options(name="gpu_load").remote(time_scale)
    try:
        configs = [{"share": t.share if packed else 1.0, "utilisation": t.utilisation, "step_seconds": t.step_seconds,
                    "need_gb": (t.predicted_gb + overhead_gb) * 1.1, "time_scale": time_scale} for t in trials]
        trainable = tune.with_resources(simulated_trial, lambda c: PlacementGroupFactory([{"CPU": 1, "GPU": c["share"]}]))
        tune.Tuner(trainable, param_space=tune.grid_search(configs),
                   tune_config=tune.TuneConfig(max_concurrent_trials=len(configs), reuse_actors=True),
                   run_config=tune.RunConfig(verbose=0, storage_path=str(Path("/tmp") / "em-search-simulate"))).fit()
        return ray.get(load.report.remote())
    finally:
        ray.kill(load)  # frees the name for the next mode


def simulate(space_path: Path, gpus: int = 8, gpu_gb: float = 80.0, repeats: int = 24,
             overhead_gb: float = 694 * 2**20 / 1e9, batch_sizes: tuple[int, ...] | None = None,
             echo=print, time_scale: float = 200.0) -> dict[str, dict]:
    grid = [t for t in configurations(space_path, gpu_gb, overhead_gb, batch_sizes=batch_sizes) if t.share <= 1.0]
    for t in grid:
        echo(f"  {t.label}: predicted {t.predicted_gb:.1f} GB, GPU share {t.share:.2f}, utilisation {t.utilisation:.2f}")
    trials = [t for _ in range(repeats) for t in grid]
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's quiet output engine, as the search uses
    # A private local Ray with `gpus` declared GPUs, one start for both modes; its start-up notices (token,
    # instance started) say nothing here.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(num_cpus=len(trials) + 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             namespace="simulate", logging_level="WARNING")
    try:
        results = {mode: replay(trials, mode == "packed", time_scale, overhead_gb)
                   for mode in ("one GPU each", "packed")}
    finally:
        ray.shutdown()
    echo(simulation_table(results, len(trials), gpus, gpu_gb))
    return results


def simulation_table(results: dict[str, dict], trials: int, gpus: int, gpu_gb: float) -> str:
    lines = [f"{trials} QLoRA trials on {gpus} x {gpu_gb:g} GB GPUs (Ray's scheduler over declared GPUs; training "
             "modelled: see benchmarks/simulate.py)",
             f"{'mode':<14} {'most in flight':>14} {'mean in flight':>14} {'wall h':>7} {'fullest GPU GB':>14}"]
    for mode, r in results.items():
        lines.append(f"{mode:<14} {r['most']:>14} {r['mean']:>14.1f} {r['wall_hours']:>7.2f} {r['fullest_gb']:>14.1f}")
    whole, packed = results["one GPU each"], results["packed"]
    lines.append(f"packed / one GPU each: {packed['most'] / whole['most']:.1f}x trials in flight, "
                 f"{packed['wall_hours'] / whole['wall_hours']:.2f}x wall time")
    return "\n".join(lines)
