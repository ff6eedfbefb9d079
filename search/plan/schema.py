"""The search space as typed values (`Space` and its sections), nested like the space file.

Plain dataclasses with documented defaults, like a transformers configuration: the parser
(search/plan/space.py) builds them, every other module reads them. The `techniques:` section is
derived from `Techniques` (em_backbones/techniques/config.py): a searched knob is a tuple of
choices, a fixed one a value. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from em_backbones.sizing.device import CUDA_CONTEXT_BYTES
from em_backbones.techniques.config import Techniques, knob_default, searched_knobs, technique_knobs
from search.data.spec import DataSpec
from search.plan.faults import Fault

OBJECTIVES = ("accuracy_per_gb", "pareto")
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class ResourceSpec:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 if the cluster has GPUs, else 0
    max_concurrent_trials: int | None = None  # None: as many as the cluster's resources hold
    memory_budget_gb: float | None = None  # per worker; configurations predicted over it never train
    max_failures: int = 2  # restarts of a trial after its worker or node dies
    # `memory`: every trial asks for the GPU share its predicted peak needs (search/execution/packing.py);
    # `whole`: gpus_per_worker each. None: memory where the cluster has GPUs (CPU-only clusters: no GPU at all).
    pack: str | None = None
    gpu_memory_gb: float | None = None  # None: read from a GPU node


@dataclass(frozen=True)
class EvaluationSpec:
    """After the search: k-fold cross-validation over chips of the winner, its runner-up, the reference CNN and
    every baseline, each fitted on a fold's training chips and scored on its test chips (search/execution/held_out.py).

    5 folds by default: each chip is tested once, with 80% of the chips to train on (the search's own
    train:val share), and 5 paired fold differences for the interval; fewer where there are fewer chips.
    One seed per (method, fold) by default: the spread that decides a verdict is across folds (chips), which
    seeds do not narrow; more seeds average training luck within each fold.
    """

    folds: int = 5  # 0 = off
    seeds: int = 1  # per (method, fold); every (fold, seed) trains with its own seed
    top_k: int | None = None  # an earlier version's field, read only as a switch: 0 turns the held-out stage off
    reference_cnn: bool = True  # the tier-0 U-Net beside them: the best searched em_cnn trial, or one tuned on val


@dataclass(frozen=True)
class ObjectiveSpec:
    """What ranks trials. `accuracy_per_gb`: val mIoU / (peak GB + memory.overhead_gb); `pareto`: (val mIoU, GB).

    `min_val_miou`: a trial below it cannot win whatever its memory; None = the best non-deep baseline
    (constants, thresholds, pixel classifier) on the same validation split, computed before the first trial.
    """

    name: str = "accuracy_per_gb"
    min_val_miou: float | None = None


@dataclass(frozen=True)
class MemorySpec:
    """`overhead_gb`: what every trial occupies beside its measured peak on its target device; the measured CUDA
    context of one process (694 MiB, torch 2.11 + CUDA 13 on an H200: em_backbones/sizing/device.py)."""

    overhead_gb: float = CUDA_CONTEXT_BYTES / 1e9
    # `search calibrate`'s corrections on the user's own GPU (em_backbones/sizing/calibration.py); None: a
    # calibration.json in the working directory when there is one, else the estimator as it stands.
    calibration: str | None = None


@dataclass(frozen=True)
class TrainingSpec:
    learning_rate: tuple[float, float] = (1e-4, 3e-3)  # sampled log-uniformly
    batch_size: tuple[int, ...] = (4,)
    epochs: int = 4
    grace_period: int = 1
    reduction_factor: int = 2
    num_samples: int = 8
    seed: int = 0
    precision: str = "32-true"
    scheduler: str = "asha"  # or "fifo": every trial runs all its epochs


@dataclass(frozen=True)
class DecoderSpec:
    name: str = "UperNetDecoder"
    channels: int = 64


@dataclass(frozen=True)
class TechniqueSpace:
    """Searched knobs as tuples of choices, fixed knobs as values (both keyed by Techniques' field names)."""

    choices: dict[str, tuple] = field(default_factory=lambda: {k: (knob_default(k),) for k in searched_knobs()})
    fixed: dict[str, Any] = field(default_factory=lambda: {k: knob_default(k) for k in technique_knobs()
                                                           if k not in searched_knobs()})

    def of(self, params: dict[str, Any]) -> Techniques:
        """The techniques of one sampled configuration: its searched values and the run's fixed ones."""
        return Techniques(**self.fixed, **{name: params[name] for name in self.choices})


@dataclass(frozen=True)
class Space:
    name: str
    scale: str
    tiers: dict[int, tuple[str, ...]]
    techniques: TechniqueSpace = field(default_factory=TechniqueSpace)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    decoder: DecoderSpec = field(default_factory=DecoderSpec)
    objective: str = "accuracy_per_gb"  # or "pareto": maximise val mIoU and minimise peak GB together
    min_val_miou: float | None = None  # the accuracy floor (ObjectiveSpec); None: the best non-deep baseline
    memory: MemorySpec = field(default_factory=MemorySpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    data: DataSpec = field(default_factory=DataSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    faults: tuple[Fault, ...] = ()  # testing aid (search/plan/faults.py); empty = off
    weights: dict[str, str] = field(default_factory=dict)  # backbone → local weights; the others: random init
    base: str | None = None  # a `terratorch fit` config to search around (search/data/base_config.py); None: `data`
    source: str = ""

    def fault_for(self, trial_number: int | None) -> Fault | None:
        return next((f for f in self.faults if f.trial == trial_number), None)

    @property
    def backbones(self) -> list[str]:
        return [name for names in self.tiers.values() for name in names]


def objective_value(val_miou: float, occupied_gb: float) -> float:
    """Accuracy per GB: validation mIoU over what the trial occupies on its device (peak + memory.overhead_gb)."""
    return val_miou / occupied_gb if occupied_gb > 0 and math.isfinite(val_miou) else float("nan")
