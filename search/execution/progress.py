"""What the console shows while Tune runs: one line when a trial starts and one when it ends, under 80 columns.

Tune's own progress output (tables as wide as every config key, "View detailed results" and
TensorBoard hints, a status block every 30 s) is turned off (`RunConfig(verbose=0)`); this Tune
callback prints what a user watches a search for: which configuration started, and what it scored,
how much memory it took and whether ASHA stopped it. The dashboard and the report hold the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ray.tune import Callback

from em_backbones.techniques.config import technique_knobs

WIDTH = 79


def knob_text(config: dict[str, Any]) -> str:
    """The searched technique knobs of a trial, short: `16b r0 ckpt`."""
    parts = []
    for name, spec in technique_knobs().items():
        value = config.get(name)
        if spec.searched and value is not None:
            parts.append((spec.short or name) if value is True else "" if value is False else f"{spec.short or name}{value}")
    return " ".join(p for p in parts if p)


def describe(config: dict[str, Any]) -> str:
    """A trial's configuration in a few words (a held-out run: its method, fold and seed)."""
    if "candidate" in config:
        run, candidate = config.get("run", {}), config["candidate"]
        if run.get("evaluate_test") is False:  # choosing the reference's learning rate on the search's split
            return f"{candidate.get('role', '')} {candidate['backbone']} lr {candidate['learning_rate']:.1e} on validation"
        fold = f" fold {run['fold']}" if run.get("fold") is not None else ""
        return f"{config['candidate'].get('role', '')} {config['candidate']['backbone']}{fold} seed {run.get('seed')}"
    if "backbone" not in config:
        return ""
    lr = config.get("learning_rate")
    return f"{config['backbone']} {knob_text(config)} lr {lr:.1e} bs {config.get('batch_size')}" if lr else \
        config["backbone"]


def outcome(result: dict[str, Any]) -> str:
    if result.get("fault"):
        return f"FAILED ({result['fault']})"
    if result.get("infeasible"):
        return f"infeasible: predicted {result.get('predicted_gb', math.nan):.2f} GB over the budget"
    parts = []
    for key, text in (("val_miou", "val {:.3f}"), ("test_miou", "test {:.3f}"), ("peak_gb", "{:.3f} GB"),
                      ("objective", "{:.2f}/GB")):
        value = result.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(text.format(value))
    return ", ".join(parts)


class TrialLines(Callback):
    """One line per trial start and end, numbered in the order Tune started them."""

    def __init__(self, label: str, total: int | None = None, echo: Callable[[str], None] = print,
                 epochs: int | None = None) -> None:
        self.label, self.total, self.echo, self.epochs = label, total, echo, epochs
        self.numbers: dict[str, int] = {}
        self.last: dict[str, dict] = {}

    def number(self, trial) -> str:
        n = self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)
        return f"{self.label} {n}" + (f"/{self.total}" if self.total else "")

    def say(self, text: str) -> None:
        self.echo(text if len(text) <= WIDTH else text[:WIDTH - 1] + "…")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.say(f"{self.number(trial)} started: {describe(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = self.last.pop(trial.trial_id, {}) or trial.last_result or {}
        epochs = result.get("epoch")
        stopped = self.epochs and epochs and not result.get("fault") and epochs < self.epochs
        when = f" (stopped by ASHA at epoch {epochs})" if stopped else ""
        self.say(f"{self.number(trial)} done{when}: {outcome(result)}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.last.pop(trial.trial_id, None)
        self.say(f"{self.number(trial)} FAILED: its process died (node lost or out of memory); see results")
