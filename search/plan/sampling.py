"""Optuna's define-by-run function (tier, then a backbone of that tier, then the knobs) and the memory prediction.

Light at import (no torch): Ray Tune pickles `DefineByRun` into its experiment checkpoint. The
prediction imports the model stack when it is first asked for, in the driver only where a memory
budget or GPU packing needs it before a trial starts.
"""

from __future__ import annotations

from typing import Any

from em_backbones.catalog import get_spec
from em_backbones.techniques.config import knob_default, searched_knobs
from search.plan.schema import Space

BUDGET_CONSTRAINT = "predicted_gb_over_budget"  # Optuna constraint: predicted peak minus the memory budget


def backbone_param(tier: int) -> str:
    """Optuna needs one parameter per tier: a categorical's choices may not change between trials."""
    return f"backbone_tier{tier}"


def predicted_peak_gb(space: Space, backbone: str, params: dict[str, Any]) -> float:
    """The estimator's peak for one worker of this trial at the run's scale, over the same modules the
    trial measures: backbone, decoder, head and loss (imports the model stack)."""
    from em_backbones.sizing.estimate import estimate
    from em_backbones.sizing.head_estimate import decoder_head_memory

    spec, batch, modalities = get_spec(backbone), int(params["batch_size"]), tuple(space.data.modalities)
    decoder_args = () if spec.decoder else (("decoder_channels", space.decoder.channels),)
    on_top = decoder_head_memory(backbone, space.scale, space.data.tile_size, modalities,
                                 spec.decoder or space.decoder.name, decoder_args, space.data.num_classes, batch,
                                 space.training.precision)
    predicted = estimate(backbone, space.scale, space.techniques.of(params), batch, space.data.tile_size,
                         space.training.precision, modalities).plus(on_top)
    return predicted.peak / 1e9


class DefineByRun:
    """What OptunaSearch calls per trial: tier first, then a backbone of that tier, then the knobs.

    With a memory budget, the predicted peak becomes an Optuna constraint (feasible when <= 0), so
    TPE learns which regions do not fit before any of them trains; that prediction needs the model
    stack in the driver, so without a budget each trial predicts its own peak where it trains.

    A class rather than a closure so Ray Tune can pickle the searcher into its experiment
    checkpoint (needed to resume a search).
    """

    def __init__(self, space: Space) -> None:
        self.space = space

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
        if space.resources.memory_budget_gb is not None:
            predicted = predicted_peak_gb(space, backbone, {**trial.params, **constants})
            trial.set_constraint(BUDGET_CONSTRAINT, predicted - space.resources.memory_budget_gb)
            constants["predicted_gb"] = predicted
        return constants


SEARCHED_PARAMS = ("tier", "backbone", *searched_knobs(), "learning_rate", "batch_size")
