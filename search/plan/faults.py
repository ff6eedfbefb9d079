"""Trial failures: a NaN-loss stop, causes for results.parquet, and fault injection for testing.

Fault injection is a documented testing aid, off unless a space lists `faults:`; each entry makes
one trial (Optuna's trial number, the order trials are proposed in, from 0) raise, produce a NaN
loss, or run out of memory at the first batch of a chosen epoch, so the search's handling of
failures can be exercised for real.

Why a single-worker trial catches its own failure and reports it instead of raising: Ray Train
restarts a worker group after *any* worker error (FailureConfig.max_failures), which is what a
lost node needs, but a NaN loss or an OOM would fail again the same way. Reporting the fault ends
the trial at once, recorded as failed with its cause (search/outcome/results.py).

Light (no torch): the driver validates `faults:` with it. The training-side callback that fires the
faults and stops a NaN loss is search/training/fault_guard.py.
"""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = ("raise", "nan", "oom")
CAUSE_EXCEPTION = "exception"
CAUSE_NAN = "nan_loss"
CAUSE_OOM = "out_of_memory"
CAUSE_NODE = "node_lost"
CAUSE_INFEASIBLE = "over_memory_budget"
CAUSE_WORKERS_NOT_STARTED = "workers_not_started"  # Ray Train's worker group never started (search/execution/trial.py)


@dataclass(frozen=True)
class Fault:
    trial: int  # Optuna trial number
    kind: str  # one of FAULT_KINDS
    epoch: int = 1  # 1-based; the fault fires at this epoch's first training batch
    attempts: int = 1  # it fires on the trial's first `attempts` runs (an out-of-memory retry is a second run)


def cause_of(error: BaseException | str) -> str:
    """A short cause for results.parquet from an exception or its text."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    if "WorkerGroupStartupTimeoutError" in text or "worker group startup timed out" in text:
        return CAUSE_WORKERS_NOT_STARTED
    if "NonFiniteLoss" in text:
        return CAUSE_NAN
    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return CAUSE_OOM
    if any(marker in text for marker in ("ActorDiedError", "NodeDiedError", "RayActorError", "node died",
                                         "ActorUnavailableError")):
        return CAUSE_NODE
    return CAUSE_EXCEPTION
