"""How busy a trial kept its machine: its process's CPU and resident memory, and its GPU, sampled over time.

A daemon thread in the trial's process samples every `interval` seconds while the trial trains:
- CPU: this process's CPU time (user + system, `psutil.Process().cpu_times()`) per second of wall time
  between samples, in percent (100 = one core busy; a trial given 2 CPUs can reach 200), and its
  resident set (RSS) in GB;
- GPU, where NVML is present (`nvidia-ml-py`, module `pynvml`) and the trial was given GPUs: the device's
  utilisation (NVML's per-device "GPU busy" percentage, shared with any trial packed beside it) and the
  memory NVML counts for this process on that device (what `nvidia-smi` shows per process).

Each epoch's report carries mean and peak so far (the last report is the trial's; results columns
`cpu_percent_mean` ... `gpu_mem_gb_peak`, and MLflow logs them per epoch as it does every reported
metric). While it runs, the same samples are published as Ray gauges tagged with the search's name and
the trial id, so a Grafana panel can plot each trial over time (clusters/grafana/search-dashboard.json).

Why not MLflow's own system-metrics monitor: it samples the whole host from the process that owns the
MLflow run, which here is the driver (Tune's MLflow callback), not the trial's Ray actor, and trials
packed on one node would blend into one host figure.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

GB = 1e9
SAMPLE_SECONDS = 0.5
TRIAL_GAUGES = {  # Ray gauge -> (sample key, description)
    "search_trial_cpu_percent": ("cpu_percent", "CPU of the trial's process (100 = one core)"),
    "search_trial_rss_gb": ("rss_gb", "resident memory of the trial's process, GB"),
    "search_trial_gpu_util_percent": ("gpu_util_percent", "utilisation of the trial's GPU (NVML)"),
    "search_trial_gpu_mem_gb": ("gpu_mem_gb", "GPU memory NVML counts for the trial's process, GB"),
}
COLUMNS = tuple(f"{key}_{stat}" for key, _ in TRIAL_GAUGES.values() for stat in ("mean", "peak"))


@dataclass
class Series:
    """Time-weighted mean and peak of one quantity (the samples themselves are not kept): samples may come
    at uneven intervals on a loaded machine, and an epoch's report adds one of its own.

    `peak_min_seconds`: a rate (CPU percent) measured over a shorter interval is left out of the peak, though
    not out of the mean, which stays exact. The kernel counts CPU time in 10 ms ticks, so a report's sample
    taken a millisecond after the thread's reads one tick as 760% on 2 CPUs (seen on CI)."""

    peak_min_seconds: float = 0.0
    weighted: float = 0.0
    seconds: float = 0.0
    peak: float = float("-inf")

    def add(self, value: float, seconds: float) -> None:
        self.weighted += value * seconds
        self.seconds += seconds
        if seconds >= self.peak_min_seconds:
            self.peak = max(self.peak, value)

    def stats(self, key: str) -> dict[str, float]:
        if not self.seconds:
            return {}
        mean = self.weighted / self.seconds
        return {f"{key}_mean": mean, f"{key}_peak": max(self.peak, mean)}


class NvmlReader:
    """The trial's GPUs through NVML; `available` is False where NVML or its library is missing."""

    def __init__(self, gpu_ids: list[str], pid: int) -> None:
        self.pid = pid
        self.handles: list[Any] = []
        if not gpu_ids:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            # Ray's GPU ids are the physical device indices it exported in CUDA_VISIBLE_DEVICES.
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(int(g)) for g in gpu_ids]
        except Exception:  # noqa: BLE001 - no NVML (no driver, no package, a MIG id): no GPU figures, no failure
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def sample(self) -> dict[str, float]:
        busy = [self.nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
        mine = sum(
            p.usedGpuMemory or 0
            for h in self.handles
            for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(h)
            if p.pid == self.pid
        )
        return {"gpu_util_percent": float(max(busy)), "gpu_mem_gb": mine / GB}


@dataclass
class SystemSampler:
    """Samples this process (and its GPUs) on a thread from `start` to `stop`; `summary` is mean and peak."""

    gpu_ids: list[str]
    tags: dict[str, str] | None = None  # {"search": name, "trial": id}: published as Ray gauges with these tags
    interval: float = SAMPLE_SECONDS
    series: dict[str, Series] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.process = psutil.Process()
        self.gpu = NvmlReader(self.gpu_ids, self.process.pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last = (time.monotonic(), self.cpu_seconds())
        self.series["cpu_percent"] = Series(peak_min_seconds=self.interval / 2)
        self.gauges = trial_gauges(tuple(self.tags)) if self.tags else {}

    def start(self) -> SystemSampler:
        self._last = (time.monotonic(), self.cpu_seconds())
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_once()

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def sample_once(self) -> dict[str, float]:
        with self._lock:
            now, cpu = time.monotonic(), self.cpu_seconds()
            seconds = max(now - self._last[0], 1e-6)
            sample = {
                "cpu_percent": 100 * (cpu - self._last[1]) / seconds,
                "rss_gb": self.process.memory_info().rss / GB,
            }
            if self.gpu.available:
                sample.update(self.gpu.sample())
            self._last = (now, cpu)
            for key, value in sample.items():
                self.series.setdefault(key, Series()).add(value, seconds)
            if seconds < self.series["cpu_percent"].peak_min_seconds:
                sample.pop("cpu_percent")  # too short to read as a rate (see Series): not plotted either
        for name, (key, _) in TRIAL_GAUGES.items():
            if key in sample and name in self.gauges:
                self.gauges[name].set(sample[key], tags=self.tags)
        return sample

    def summary(self) -> dict[str, float]:
        """Mean and peak of every quantity up to now (a sample is taken now, so the figures reach this moment)."""
        self.sample_once()
        with self._lock:
            return {k: v for key, series in self.series.items() for k, v in series.stats(key).items()}


def trial_gauges(tag_keys: tuple[str, ...]) -> dict[str, Any]:
    """Ray gauges for the per-trial samples; none outside a Ray worker (a plain process has no exporter)."""
    import ray

    if not ray.is_initialized():
        return {}
    from ray.util.metrics import Gauge

    return {name: Gauge(name, description=text, tag_keys=tag_keys) for name, (_, text) in TRIAL_GAUGES.items()}
