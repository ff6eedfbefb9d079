"""Trials packed onto GPUs by predicted memory: each asks Ray for the share of a GPU its configuration needs.

A trial's share is (predicted peak + the per-process overhead) x (1 + margin) over the GPU's memory,
rounded up to a hundredth (search/plan/sampling.py: gpu_share, computed when Optuna proposes the
trial): Ray schedules fractional GPUs per device and never lets the shares on one GPU exceed 1, so
the predictions (with their overheads and margins) on a GPU never exceed its memory. Light trials
share a GPU; one whose need reaches the GPU's memory gets it alone; one that cannot fit a whole GPU
is infeasible and never trains. The share rides in the trial's config (`gpu_share`), and
`tune.with_resources` turns it into the trial's resources with a function of that config — Ray
Tune's own way to size trials one by one; a custom per-node resource ("gpu_memory_gb") was the
alternative, but it cannot say which GPU of a node a trial may use, so two trials could land on one
device while another sits idle.

A trial that runs out of GPU memory anyway is retried once with twice its share (a whole GPU at
most; search/execution/tuner.py's searcher keeps its Optuna trial open meanwhile, so Optuna hears
only the final outcome).
"""

from __future__ import annotations

from typing import Any

import ray

from search.errors import UserError

MARGIN = 0.10  # above prediction + overhead: about the estimator's spread (README: calibration)


class PackingError(UserError, RuntimeError):
    """GPU packing asked for where the GPUs' memory cannot be known."""


def gpu_share_of(config: dict[str, Any]) -> float | None:
    """A trial config's GPU share (a held-out run carries its method's under `candidate`)."""
    if "gpu_share" in config:
        return config["gpu_share"]
    return (config.get("candidate") or {}).get("gpu_share")


def retry_share(share: float) -> float:
    """The share of a trial's one retry after running out of memory: twice its share, a whole GPU at most."""
    return min(1.0, round(2 * share, 2))


@ray.remote(num_gpus=1, num_cpus=0)
def _device_memory_gb() -> float | None:
    import torch  # on a GPU node only: the driver stays light

    return torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else None


def gpu_memory_gb(override: float | None) -> float:
    """The memory of the cluster's GPUs: `resources.gpu_memory_gb`, or read on one GPU node (a cluster of mixed
    GPUs sets it to its smallest)."""
    if override is not None:
        return override
    found = ray.get(_device_memory_gb.remote())
    if not found:
        raise PackingError("resources.gpu_memory_gb: the cluster declares GPUs but none reports its memory (no "
                           "CUDA device where the probe ran); set it, or resources.pack: whole")
    return found
