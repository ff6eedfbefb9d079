"""Per-trial system metrics against a second instrument: Python's own process clock and a known allocation."""

from __future__ import annotations

import os
import time

import numpy as np

from search.training.system_metrics import COLUMNS, SystemSampler


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_cpu_and_rss_agree_with_the_process_clock_and_a_known_allocation():
    sampler = SystemSampler(gpu_ids=[], interval=0.1).start()
    wall, cpu = time.monotonic(), time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: not psutil's /proc reading
    spin(1.5)
    rss_before = sampler.summary()["rss_gb_peak"]
    block = np.ones(500_000_000 // 8)  # 0.5 GB, every page touched
    spin(0.5)
    clock_percent = 100 * (time.process_time() - cpu) / (time.monotonic() - wall)
    sampler.stop()
    stats = sampler.summary()
    del block
    # The time-weighted mean over the same span is what the process clock says (psutil reads /proc, Python the clock).
    assert abs(stats["cpu_percent_mean"] - clock_percent) < 15, (stats, clock_percent)
    assert stats["cpu_percent_peak"] >= stats["cpu_percent_mean"] > 50
    assert stats["rss_gb_peak"] - rss_before > 0.45
    assert stats["rss_gb_mean"] < stats["rss_gb_peak"]
    assert set(stats) <= set(COLUMNS) and not any(k.startswith("gpu") for k in stats)  # no NVML on this machine


def test_gpu_ids_without_nvml_give_no_gpu_columns_and_no_error():
    """A worker handed GPU ids on a machine without NVML's library (as here) samples CPU and RSS only."""
    sampler = SystemSampler(gpu_ids=["0"], interval=0.1)
    assert not sampler.gpu.available
    assert set(sampler.summary()) == {"cpu_percent_mean", "cpu_percent_peak", "rss_gb_mean", "rss_gb_peak"}


def test_back_to_back_samples_do_not_read_clock_ticks_as_a_peak_beyond_the_machine():
    """A report's sample can come a millisecond after the thread's: one 10 ms CPU tick over that reads as
    hundreds of percent (CI once recorded 760% on 2 CPUs). The peak must stay within what the CPUs can do,
    and the mean must still agree with the process clock."""
    sampler = SystemSampler(gpu_ids=[], interval=0.2)
    wall, cpu = time.monotonic(), time.process_time()
    end = wall + 1.0
    while time.monotonic() < end:  # busy: ticks accrue, and nearly every sample spans a few microseconds
        sampler.sample_once()
    clock_percent = 100 * (time.process_time() - cpu) / (time.monotonic() - wall)
    stats = sampler.summary()
    assert stats["cpu_percent_peak"] <= 100 * os.cpu_count() + 10, stats
    assert abs(stats["cpu_percent_mean"] - clock_percent) < 15, (stats, clock_percent)
