"""Is the winner ahead? Paired comparisons over cross-validation folds, with a known false-positive rate.

The held-out stage (search/execution/held_out.py) fits every method — the winner, its runner-up,
the reference CNN and the baselines — on the same folds and scores each on the same test chips;
every chip is in exactly one test fold, and each (fold, seed) training uses its own seed. For one
method, `Scores[fold][seed]` is {chip: confusion matrix}.

Which test, and why: a paired t-interval over folds. A method's test score is the mean over folds
of its fold mIoU (the fold's test chips pooled, as TerraTorch pools a split; averaged over the
fold's seeds); the lead is the mean over folds of the winner's fold score minus the other's, on
the same chips, and its 95% interval is `lead ± t(0.975, K-1) * sd / sqrt(K)` of those K paired
differences. Folds are the independent units: each fold's trainings are separate runs with their
own seeds, while the chips inside one fold share one trained model (a chip-level bootstrap or t
would treat the chips of one fold as independent and be too narrow), and seeds are nested in
folds (distinct per fold), so a model's luck with one seed cannot repeat across folds. "ahead" or
"BEHIND" only where the interval excludes zero. (Centring on the lead pooled over every chip, with
a jackknife over folds, was tried: simulated A/A rate 5.8 ± 0.2% with one chip per fold, so the
exact paired t on fold scores it is; the pooled-over-all-chips figure is reported beside it.)
With one fold (a base config's own test split) the seeds are the units: that interval covers
training luck only, not the choice of test chips.

`false_positive_rate` and `power` simulate A/A and A/B comparisons at a run's shapes (folds, chips
per fold, seeds) through this same code, so the 5% is measured, not assumed (tests/test_comparison.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from search.outcome.metrics import mean_iou

Confusions = dict[str, np.ndarray]  # chip → confusion matrix (rows true, columns predicted)
Scores = list[list[Confusions]]  # [fold][seed] → confusions of that fold's test chips
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval; `units`: what the interval's spread was measured over."""

    estimate: float
    low: float | None
    high: float | None
    n: int  # folds (or seeds) the spread came from
    units: str  # "folds" | "seeds" | "none"

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None:
            return "no interval (one fold, one seed)"
        if self.low > 0:
            return "ahead"
        return "BEHIND" if self.high < 0 else "no difference shown"

    @property
    def se(self) -> float | None:
        if self.low is None:
            return None
        return (self.high - self.low) / 2 / float(stats.t.ppf(0.5 + LEVEL / 2, self.n - 1))

    def power(self, lead: float) -> float | None:
        """Chance this test says "ahead" when the true lead is `lead`, at this comparison's own standard error
        (non-central t with n - 1 degrees of freedom)."""
        se = self.se
        if se is None or se <= 0:
            return None
        critical = stats.t.ppf(0.5 + LEVEL / 2, self.n - 1)
        return float(stats.nct.sf(critical, self.n - 1, lead / se))

    def as_dict(self, known_lead: float = 0.05) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, f"power_at_{known_lead}": self.power(known_lead)}

    def text(self) -> str:
        span = "" if self.low is None else f" [{self.low:+.4f}, {self.high:+.4f}]"
        return f"{self.estimate:+.4f}{span}"


def fold_miou(confusions: Confusions) -> float:
    """mIoU over one fold's test chips (their confusion matrices summed), as TerraTorch's test/mIoU pools them."""
    return mean_iou(sum(confusions.values()))


def fold_means(scores: Scores) -> np.ndarray:
    """Per fold: the method's test mIoU averaged over its seeds."""
    return np.array([np.mean([fold_miou(seed) for seed in fold]) for fold in scores])


def pooled_miou(scores: Scores) -> float:
    """Test mIoU over every chip of every fold (each chip tested once), averaged over seed index."""
    seeds = min(len(fold) for fold in scores)
    return float(np.mean([mean_iou(sum(sum(fold[s].values()) for fold in scores)) for s in range(seeds)]))


def per_chip_miou(scores: Scores) -> dict[str, float]:
    """Each test chip's own mIoU, averaged over seeds (the report's per-chip table)."""
    chips: dict[str, list[float]] = {}
    for fold in scores:
        for seed in fold:
            for chip, matrix in seed.items():
                chips.setdefault(chip, []).append(mean_iou(matrix))
    return {chip: float(np.mean(values)) for chip, values in sorted(chips.items())}


def _t_interval(centre: float, units: np.ndarray, kind: str) -> Interval:
    n = len(units)
    if n < 2:
        return Interval(centre, None, None, n, "none")
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1) * units.std(ddof=1) / math.sqrt(n))
    return Interval(centre, centre - half, centre + half, n, kind)


def fold_scores(scores: Scores) -> np.ndarray:
    """Per fold, the method's test mIoU (its chips pooled, as TerraTorch pools a split) averaged over its seeds; with
    one fold, per seed (a deterministic method's one "seed" stands for each of the other's)."""
    if len(scores) >= 2:
        return fold_means(scores)
    return np.array([fold_miou(s) for s in scores[0]])


def method_interval(scores: Scores) -> Interval:
    """A method's test mIoU, the mean of its fold scores, with its 95% t-interval over folds; clipped to [0, 1]."""
    units = fold_scores(scores)
    raw = _t_interval(float(units.mean()), units, "folds" if len(scores) >= 2 else "seeds")
    if raw.low is None:
        return raw
    return Interval(raw.estimate, max(0.0, raw.low), min(1.0, raw.high), raw.n, raw.units)


def paired_lead(winner: Scores, other: Scores) -> Interval:
    """The winner's lead over `other`: the mean over folds of the two fold scores' difference on the same chips,
    with its paired 95% t-interval (seeds as the units with one fold)."""
    mine, theirs = fold_scores(winner), fold_scores(other)
    if len(theirs) != len(mine):  # one fold: a deterministic method's single score against each of the seeds
        theirs = np.full(len(mine), theirs.mean())
    differences = mine - theirs
    return _t_interval(float(differences.mean()), differences, "folds" if len(winner) >= 2 else "seeds")


# -- simulation: A/A false-positive rate and the power to see a known lead, at a run's shapes --------------


@dataclass(frozen=True)
class Shapes:
    """What a run's held-out stage looks like: folds, test chips per fold, seeds per (method, fold)."""

    folds: int
    chips_per_fold: int
    seeds: int
    pixels_per_chip: int = 65_536


@dataclass(frozen=True)
class Noise:
    """Spread of a binary segmenter's logit quality; defaults are of the order seen on the packaged flood chips
    (per-chip mIoU from about 0.4 to 0.95, seed-to-seed spread of a fold's mIoU about 0.02)."""

    chip: float = 1.0  # how hard a chip is, shared by both methods (paired)
    method_chip: float = 0.4  # how a configuration suits a chip, beyond the chip itself
    seed: float = 0.15  # a training's luck: one per (method, fold, seed)


def _simulated_scores(rng: np.random.Generator, shapes: Shapes, noise: Noise, water: np.ndarray,
                      chip_effect: np.ndarray, skill: float) -> Scores:
    """One method's [fold][seed] confusions on chips whose hardness and water share the other method sees too
    (every fold, seed and chip drawn at once: the simulations run thousands of comparisons)."""
    method_chip = rng.normal(0.0, noise.method_chip, chip_effect.shape)
    luck = rng.normal(0.0, noise.seed, (shapes.folds, shapes.seeds, 1))  # one per (fold, seed)
    quality = skill + (chip_effect + method_chip)[:, None, :] + luck  # [folds, seeds, chips]
    recall, specificity = 1 / (1 + np.exp(-(quality + 1.0))), 1 / (1 + np.exp(-(quality + 2.5)))
    n = shapes.pixels_per_chip
    wet = n * np.broadcast_to(water[:, None, :], quality.shape)
    tp, tn = wet * recall, (n - wet) * specificity
    matrices = np.stack([tn, (n - wet) - tn, wet - tp, tp], axis=-1).reshape(*quality.shape, 2, 2)
    return [[{f"c{f}_{c}": matrices[f, s, c] for c in range(shapes.chips_per_fold)} for s in range(shapes.seeds)]
            for f in range(shapes.folds)]


def _declared(shapes: Shapes, noise: Noise, lead_skill: float, runs: int, seed: int) -> tuple[float, float]:
    """(share declared ahead, share declared behind) over `runs` simulated comparisons."""
    rng = np.random.default_rng(seed)
    ahead = behind = 0
    for _ in range(runs):
        water = rng.beta(1.0, 3.0, (shapes.folds, shapes.chips_per_fold))
        chip_effect = rng.normal(0.0, noise.chip, (shapes.folds, shapes.chips_per_fold))
        a = _simulated_scores(rng, shapes, noise, water, chip_effect, lead_skill)
        b = _simulated_scores(rng, shapes, noise, water, chip_effect, 0.0)
        verdict = paired_lead(a, b).verdict
        ahead += verdict == "ahead"
        behind += verdict == "BEHIND"
    return ahead / runs, behind / runs


def false_positive_rate(shapes: Shapes, noise: Noise = Noise(), runs: int = 2000, seed: int = 0) -> float:
    """Share of A/A comparisons (both methods drawn from one distribution) declared ahead or behind."""
    ahead, behind = _declared(shapes, noise, 0.0, runs, seed)
    return ahead + behind


def skill_for_lead(lead: float, shapes: Shapes, noise: Noise = Noise(), seed: int = 1) -> float:
    """The logit shift that gives method A an expected pooled lead of `lead` mIoU (bisection on simulated means)."""
    rng = np.random.default_rng(seed)
    draws = [(rng.beta(1.0, 3.0, (shapes.folds, shapes.chips_per_fold)),
              rng.normal(0.0, noise.chip, (shapes.folds, shapes.chips_per_fold)), rng.integers(1 << 31))
             for _ in range(200)]

    reference = [pooled_miou(_simulated_scores(np.random.default_rng(draw_seed + 1), shapes, noise, water,
                                               chip_effect, 0.0)) for water, chip_effect, draw_seed in draws]

    def expected_lead(skill: float) -> float:
        total = 0.0
        for (water, chip_effect, draw_seed), other in zip(draws, reference):
            a = _simulated_scores(np.random.default_rng(draw_seed), shapes, noise, water, chip_effect, skill)
            total += pooled_miou(a) - other
        return total / len(draws)

    low, high = 0.0, 4.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_lead(middle) < lead else (low, middle)
    return (low + high) / 2


def power(shapes: Shapes, lead: float = 0.05, noise: Noise = Noise(), runs: int = 1000, seed: int = 2) -> float:
    """Share of comparisons declared "ahead" when the winner truly leads by `lead` mIoU."""
    ahead, _ = _declared(shapes, noise, skill_for_lead(lead, shapes, noise), runs, seed)
    return ahead


def simulation_error(rate: float, runs: int) -> float:
    """One binomial standard error of a simulated rate."""
    return math.sqrt(rate * (1 - rate) / runs)
