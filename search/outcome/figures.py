"""The report's figures: one matplotlib PNG per question a reader asks of a run.

Accuracy against memory with the Pareto front and the baselines, the objective by each searched
choice, Optuna's parameter importances, learning curves with ASHA's rungs, the held-out scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna

from em_backbones.techniques.config import searched_knobs, technique_knobs
from search.outcome.plotting import plt
from search.outcome.results import STATUS_STOPPED, scored
from search.outcome.study import JOURNAL, load_study
from search.plan.sampling import BUDGET_CONSTRAINT
from search.plan.schema import Space

COLOURS = plt.get_cmap("tab10").colors


def colour_of(backbones: list[str]) -> dict[str, tuple]:
    return {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(sorted(set(backbones)))}


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def baseline_marks(ax, baselines: list[dict]) -> float:
    """Baselines' validation mIoU as dashed lines; returns the highest mark."""
    styles = iter([(0, (5, 3)), (0, (2, 2)), (0, (6, 2, 1, 2)), (0, (8, 4)), (0, (1, 3))])
    highest = 0.0
    for baseline in baselines:
        if baseline.get("val_miou") is not None:
            ax.axhline(baseline["val_miou"], color="grey", lw=1, ls=next(styles, (0, (4, 4))),
                       label=f"{baseline['name']} ({baseline['val_miou']:.3f})")
            highest = max(highest, baseline["val_miou"])
    return highest


def occupied(row: dict) -> float:
    """What a trial occupies on its device; a run from before the overhead was counted has its peak only."""
    return row["occupied_gb"] if row.get("occupied_gb") is not None else row["peak_gb"]


def accuracy_vs_memory(rows: list[dict], front: list[dict], best: dict | None, path: Path,
                       baselines: list[dict] = ()) -> Path:
    """Every scored trial against what it occupies on its device (peak + the per-process overhead); the front as
    a staircase; the best accuracy per GB labelled, with its iso-line; the baselines as marks to beat."""
    points = scored(rows)
    colours = colour_of([r["backbone"] for r in points])
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, colour in colours.items():
        for status, marker in (("completed", "o"), (STATUS_STOPPED, "^")):
            mine = [r for r in points if r["backbone"] == name and r["status"] == status]
            if mine:
                ax.scatter([occupied(r) for r in mine], [r["val_miou"] for r in mine], color=colour, marker=marker,
                           s=45, alpha=0.85, label=f"{name} ({'stopped by ASHA' if status != 'completed' else status})")
    if front:
        ax.step([occupied(r) for r in front], [r["val_miou"] for r in front], where="post", color="black", lw=1.2,
                label="Pareto front")
        ax.scatter([occupied(r) for r in front], [r["val_miou"] for r in front], s=140, facecolors="none",
                   edgecolors="black", lw=1.2)
    if best is not None:
        xs = np.linspace(0, max(occupied(r) for r in points) * 1.05, 50)
        ax.plot(xs, best["objective"] * xs, ls=":", color="grey", lw=1, label="equal mIoU per GB as the best")
        ax.annotate(f"best mIoU/GB: {best['objective']:.3g}\n{best['backbone']} ({best['trial_id']})",
                    (occupied(best), best["val_miou"]), xytext=(12, -28), textcoords="offset points", fontsize=9,
                    arrowprops={"arrowstyle": "->", "color": "black"})
    highest = baseline_marks(ax, list(baselines))
    if best is not None:
        ax.set_ylim(0, min(1.0, max(highest, *(r["val_miou"] for r in points)) * 1.15))
        ax.set_xlim(0, max(occupied(r) for r in points) * 1.08)
    ax.set_xlabel("GB occupied on its device: measured peak per worker + per-process overhead")
    ax.set_ylabel("validation mIoU")
    ax.set_title("Accuracy vs memory")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return save(fig, path)


def objective_by_choice(rows: list[dict], path: Path) -> Path:
    """Accuracy per GB of every scored trial, grouped by backbone and by each technique the run varied."""
    points = scored(rows)
    groups = [("backbone", "backbone")] + [(key, title) for key, title in knob_labels()
                                           if len({r[key] for r in points}) > 1]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups) + 1, 4), sharey=True, squeeze=False)
    axes = axes[0]
    rng = np.random.default_rng(0)
    colours = colour_of([r["backbone"] for r in points])  # dots keep their backbone's colour in every panel
    for ax, (key, title) in zip(axes, groups):
        values = sorted({r[key] for r in points}, key=str)
        for i, value in enumerate(values):
            mine = [r for r in points if r[key] == value]
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(mine)), [r["objective"] for r in mine], s=25, alpha=0.75,
                       color=[colours[r["backbone"]] for r in mine])
            ax.hlines(np.mean([r["objective"] for r in mine]), i - 0.3, i + 0.3, color="black", lw=2)
        ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=20 if key == "backbone" else 0)
        ax.set_title(f"by {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("val mIoU per GB (bar: mean)")
    return save(fig, path)


def importances(space: Space, run_dir: Path) -> tuple[dict[str, dict[str, float]], str | None]:
    """Optuna's fANOVA importances per objective, or why there are none."""
    if not (run_dir / JOURNAL).is_file():
        return {}, f"no Optuna study to read (no {JOURNAL})"
    try:
        study = load_study(run_dir, space.name)
    except (KeyError, FileNotFoundError, ValueError) as err:
        return {}, f"no Optuna study to read ({err})"
    targets = {"val mIoU": lambda t: t.values[0], "peak GB": lambda t: t.values[1]} \
        if space.objective == "pareto" else {"val mIoU per GB": None}
    # Configurations over the memory budget never trained; Optuna holds them with a placeholder objective of 0,
    # which is no measurement, so fANOVA leaves them out (trials below the accuracy floor did train: they count).
    done = [t for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
            if t.constraints.get(BUDGET_CONSTRAINT, 0.0) <= 0]
    # Optuna scores parameters every completed trial has (a tier's backbone exists only in that tier's
    # trials); of those, only the ones that took more than one value can matter.
    common = set.intersection(*(set(t.params) for t in done)) if done else set()
    varied = sorted(name for name in common if len({t.params[name] for t in done}) > 1)
    if not varied:
        return {}, "no parameter shared by the completed trials took more than one value"
    measured = optuna.create_study(directions=study.directions)
    measured.add_trials(done)
    result = {}
    for label, target in targets.items():
        try:
            result[label] = optuna.importance.get_param_importances(
                measured, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varied, target=target)
        except (ValueError, RuntimeError) as err:
            return {}, f"Optuna could not compute importances: {err}"
    return result, None


def display_param(name: str) -> str:
    return f"backbone (tier {name.removeprefix('backbone_tier')})" if name.startswith("backbone_tier") else name


def importance_chart(values: dict[str, dict[str, float]], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(values), figsize=(6 * len(values), 3.6), squeeze=False)
    for ax, (label, scores) in zip(axes[0], values.items()):
        names = list(scores)[::-1]
        ax.barh([display_param(n) for n in names], [scores[n] for n in names], color="#4c72b0")
        ax.set_xlabel(f"fANOVA importance for {label}")
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def asha_rungs(space: Space) -> list[int]:
    """Epochs at which ASHA compares trials: grace period x reduction factor^k, below the last epoch."""
    if space.training.scheduler != "asha":
        return []
    training = space.training
    rungs, rung = [], training.grace_period
    while rung < training.epochs:
        rungs.append(rung)
        rung *= training.reduction_factor
    return rungs


def learning_curves(rows: list[dict], space: Space, path: Path) -> Path:
    """Validation mIoU per epoch of every trial; a cross where ASHA stopped one; dotted rungs."""
    trained = [r for r in rows if r["val_miou_per_epoch"]]
    colours = colour_of([r["backbone"] for r in trained])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in trained:
        curve = r["val_miou_per_epoch"]
        epochs = list(range(1, len(curve) + 1))
        ax.plot(epochs, curve, marker=".", color=colours[r["backbone"]], alpha=0.7, lw=1)
        if r["status"] == STATUS_STOPPED:
            ax.scatter([epochs[-1]], [curve[-1]], marker="x", s=70, color="red", zorder=3)
    for rung in asha_rungs(space):
        ax.axvline(rung, ls=":", color="grey")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in colours.items()]
    handles.append(plt.Line2D([], [], color="red", marker="x", ls="", label="stopped by ASHA"))
    if asha_rungs(space):
        handles.append(plt.Line2D([], [], color="grey", ls=":", label="ASHA rung"))
    ax.legend(handles=handles, fontsize=8)
    ax.set_xticks(range(1, space.training.epochs + 1))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mIoU")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    return save(fig, path)


def held_out_chart(held_out: dict, path: Path) -> Path:
    """Per method: pooled test mIoU with its 95% interval over folds, each test chip's mIoU as a dot."""
    methods = held_out["methods"]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(methods) + 2), 4.2))
    for i, method in enumerate(methods):
        test = method["test_miou"]
        colour = "#dd8452" if method["kind"] == "winner" else "#4c72b0" if method.get("role") else "#999999"
        ax.bar(i, test["estimate"], width=0.6, color=colour, alpha=0.75)
        if test["low"] is not None:
            ax.errorbar(i, test["estimate"], yerr=[[test["estimate"] - test["low"]], [test["high"] - test["estimate"]]],
                        color="black", capsize=4)
        chips = list(method["per_chip"].values())
        ax.scatter(np.full(len(chips), i) + np.linspace(-0.2, 0.2, len(chips)), chips, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(methods)), [m["name"] for m in methods], rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test mIoU (bar: mean of folds; dots: chips)")
    ax.set_title(f"Held-out test over {held_out['shapes']['folds']} folds (95% intervals)")
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def knob_labels() -> list[tuple[str, str]]:
    """(column, label) of every searched technique knob (em_backbones/techniques/config.py)."""
    knobs = technique_knobs()
    return [(name, knobs[name].label) for name in searched_knobs()]
