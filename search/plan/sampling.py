"""Optuna's define-by-run function (tier, then a backbone of that tier, then the knobs) and the memory prediction.

Light at import (no torch): Ray Tune pickles `DefineByRun` into its experiment checkpoint. The
prediction imports the model stack when it is first asked for, in the driver only where a memory
budget or GPU packing needs it before a trial starts.
"""

from __future__ import annotations

import math
from typing import Any

from em_backbones.catalog import get_spec
from em_backbones.sizing.calibration import load_calibration
from em_backbones.techniques.config import knob_default, searched_knobs
from search.plan.schema import Space

SHARE_STEP = 0.01  # GPU shares in hundredths
BUDGET_CONSTRAINT = "predicted_gb_over_budget"  # Optuna constraint: predicted peak minus the memory budget
GPU_FIT_CONSTRAINT = "gpu_share_over_one"  # Optuna constraint: the GPU share a trial needs, minus one GPU


def backbone_param(tier: int) -> str:
    """Optuna needs one parameter per tier: a categorical's choices may not change between trials."""
    return f"backbone_tier{tier}"


def predicted_peak_gb(space: Space, backbone: str, params: dict[str, Any]) -> float:
    """The estimator's peak for one worker of this trial at the run's scale, over the same modules the
    trial measures: backbone, decoder, head and loss (imports the model stack); corrected by `search
    calibrate`'s measurements on this kind of device when a calibration is present."""
    from em_backbones.sizing.estimate import estimate
    from em_backbones.sizing.head_estimate import decoder_head_memory

    spec, batch, modalities = get_spec(backbone), int(params["batch_size"]), tuple(space.data.modalities)
    decoder_args = () if spec.decoder else (("decoder_channels", space.decoder.channels),)
    on_top = decoder_head_memory(backbone, space.scale, space.data.tile_size, modalities,
                                 spec.decoder or space.decoder.name, decoder_args, space.data.num_classes, batch,
                                 space.training.precision)
    predicted = estimate(backbone, space.scale, space.techniques.of(params), batch, space.data.tile_size,
                         space.training.precision, modalities).plus(on_top)
    calibration = load_calibration(space.memory.calibration)
    if calibration is None:
        return predicted.peak / 1e9
    return calibration.peak_bytes(predicted.weights, predicted.total - predicted.weights) / 1e9


def warm_prediction(space: Space) -> None:
    """One prediction ahead of the search, so its first proposal does not pay the model stack's import (about
    10 s cold on 2 CPUs; Ray Tune warns when a define-by-run call takes over a second)."""
    backbone = space.tiers[max(space.tiers)][0]
    defaults = {name: knob_default(name) for name in space.techniques.choices}
    predicted_peak_gb(space, backbone, {**defaults, "batch_size": space.training.batch_size[0]})


def gpu_share(predicted_gb: float, overhead_gb: float, gpu_memory_gb: float, margin: float) -> float:
    """The GPU fraction a trial asks for: (prediction + per-process overhead) x (1 + margin) over the GPU's memory,
    rounded up to a hundredth (search/execution/packing.py); above 1 it cannot fit one GPU."""
    need = (predicted_gb + overhead_gb) * (1 + margin) / gpu_memory_gb
    return math.ceil(round(need / SHARE_STEP, 6)) * SHARE_STEP


class DefineByRun:
    """What OptunaSearch calls per trial: tier first, then a backbone of that tier, then the knobs.

    With a memory budget, the predicted peak becomes an Optuna constraint (feasible when <= 0), so
    TPE learns which regions do not fit before any of them trains; packing trials onto GPUs by memory
    (`gpu_memory_gb` given) turns the same prediction into the trial's GPU share, and a share above one
    GPU into a constraint. Those predictions need the model stack in the driver; without either, each
    trial predicts its own peak where it trains.

    A class rather than a closure so Ray Tune can pickle the searcher into its experiment
    checkpoint (needed to resume a search).
    """

    def __init__(self, space: Space, gpu_memory_gb: float | None = None, margin: float = 0.10) -> None:
        self.space = space
        self.gpu_memory_gb = gpu_memory_gb  # packing by memory: each trial's GPU share from its prediction
        self.margin = margin

    def __call__(self, trial) -> dict[str, Any]:
        space = self.space
        tier = trial.suggest_categorical("tier", sorted(space.tiers))
        backbone = trial.suggest_categorical(backbone_param(tier), list(space.tiers[tier]))
        constants: dict[str, Any] = {"backbone": backbone, "trial_number": trial.number}
        if tier == 0:  # the reference CNN takes no memory technique: its knobs stay at their defaults
            constants.update({name: knob_default(name) for name in space.techniques.choices})
        else:
            for name, options in space.techniques.choices.items():
                trial.suggest_categorical(name, list(options))
        trial.suggest_float("learning_rate", *space.training.learning_rate, log=True)
        trial.suggest_categorical("batch_size", list(space.training.batch_size))
        if self.gpu_memory_gb is not None:
            predicted = predicted_peak_gb(space, backbone, {**trial.params, **constants})
            share = gpu_share(predicted, space.memory.overhead_gb, self.gpu_memory_gb, self.margin)
            trial.set_constraint(GPU_FIT_CONSTRAINT, share - 1.0)
            constants.update(predicted_gb=predicted, gpu_share=share)
        if space.resources.memory_budget_gb is not None:
            predicted = constants.get("predicted_gb") or predicted_peak_gb(space, backbone, {**trial.params, **constants})
            trial.set_constraint(BUDGET_CONSTRAINT, predicted - space.resources.memory_budget_gb)
            constants["predicted_gb"] = predicted
        return constants


SEARCHED_PARAMS = ("tier", "backbone", *searched_knobs(), "learning_rate", "batch_size")
