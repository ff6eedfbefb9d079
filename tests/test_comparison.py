"""The held-out verdict's test: its false-positive rate and power measured by simulation through the same code
(A/A: two methods drawn from one distribution, at the shapes the packaged runs have), and its arithmetic by hand."""

from __future__ import annotations

import numpy as np
import pytest

from search.outcome.comparison import (
    Noise,
    Shapes,
    false_positive_rate,
    fold_scores,
    method_interval,
    paired_lead,
    pooled_miou,
    power,
    simulation_error,
)
from search.outcome.metrics import mean_iou

RUNS = 2000
ALLOWED = 0.05 + 2 * simulation_error(0.05, RUNS)  # 5% plus two simulation standard errors


@pytest.mark.parametrize("shapes", [
    Shapes(folds=5, chips_per_fold=2, seeds=1),  # spaces/flood.yaml: ten usable chips, 5 folds
    Shapes(folds=5, chips_per_fold=1, seeds=1),  # spaces/tier2.yaml: five chips, leave one out
    Shapes(folds=5, chips_per_fold=2, seeds=3),  # more seeds per fold
    Shapes(folds=3, chips_per_fold=4, seeds=2),
])
def test_two_equal_methods_are_called_different_in_at_most_5_percent_of_runs(shapes):
    rate = false_positive_rate(shapes, runs=RUNS, seed=11)
    assert rate <= ALLOWED, f"A/A false-positive rate {rate:.3f} over {RUNS} runs at {shapes}"


def test_a_seed_only_interval_is_not_a_test_over_chips():
    """With one fold (a base config's own test split) only seeds vary: a configuration's fit to those particular
    chips repeats in every seed, so two equal methods are called different far more often than 5% (the README
    says so): the reason the held-out stage folds chips wherever it can."""
    assert false_positive_rate(Shapes(folds=1, chips_per_fold=10, seeds=3), runs=1000, seed=3) > 0.1


def test_power_to_see_a_known_lead_grows_with_the_lead_and_with_folds():
    five = Shapes(folds=5, chips_per_fold=2, seeds=1)
    at_005, at_02 = power(five, 0.05, runs=1000), power(five, 0.2, runs=1000)
    assert ALLOWED < at_005 < at_02 and at_02 > 0.8
    assert power(Shapes(folds=10, chips_per_fold=2, seeds=1), 0.05, runs=1000) > at_005


def test_the_lead_is_the_pooled_difference_on_the_same_chips_and_its_interval_excludes_zero_when_it_should():
    def chip(tp: int, fn: int, fp: int, tn: int) -> np.ndarray:
        return np.array([[tn, fp], [fn, tp]])

    # Winner better on every chip of every fold, by different amounts: ahead. Equal methods: no lead at all.
    winner = [[{"a": chip(90, 10, 5, 895), "b": chip(40, 10, 10, 940)}], [{"c": chip(80, 20, 0, 900)}],
              [{"d": chip(70, 5, 5, 920)}]]
    other = [[{"a": chip(60, 40, 20, 880), "b": chip(30, 20, 20, 930)}], [{"c": chip(50, 50, 10, 890)}],
             [{"d": chip(40, 35, 15, 910)}]]
    lead = paired_lead(winner, other)
    assert lead.estimate == pytest.approx(float(np.mean(fold_scores(winner) - fold_scores(other))))
    assert fold_scores(winner)[0] == pytest.approx(mean_iou(winner[0][0]["a"] + winner[0][0]["b"]))  # fold pooled
    winner_pooled = mean_iou(sum(m for fold in winner for m in fold[0].values()))
    assert pooled_miou(winner) == pytest.approx(winner_pooled)
    assert lead.low > 0 and lead.verdict == "ahead" and lead.n == 3 and lead.units == "folds"
    assert paired_lead(other, winner).verdict == "BEHIND"
    same = paired_lead(winner, winner)
    assert same.estimate == 0 and same.low == 0 and same.high == 0 and same.verdict == "no difference shown"
    interval = method_interval(winner)
    assert 0 <= interval.low <= interval.estimate <= interval.high <= 1


def test_the_interval_is_a_t_interval_with_k_minus_1_degrees_of_freedom_not_a_normal_one():
    """Five folds: t(0.975, 4) = 2.776, not 1.96; with 1.96 two equal methods would be called different ~12% of
    the time (the A/A test above would catch it)."""
    def chip(tp: int) -> dict:
        return {"x": np.array([[900, 0], [100 - tp, tp]])}

    winner = [[chip(tp)] for tp in (50, 60, 70, 80, 90)]
    other = [[chip(60)] for _ in range(5)]
    differences = fold_scores(winner) - fold_scores(other)
    lead = paired_lead(winner, other)
    half = 2.7764451 * np.std(differences, ddof=1) / np.sqrt(5)
    assert (lead.low, lead.high) == pytest.approx((differences.mean() - half, differences.mean() + half))


def test_the_simulated_noise_covers_chips_that_no_method_can_score():
    """The simulation's chips range from easy to hopeless, as the packaged flood chips do (per-chip mIoU from
    about 0.4 to 0.95): a generator of only easy chips would make the false-positive rate look better than it is."""
    from search.outcome.comparison import _simulated_scores  # noqa: PLC0415  (the generator itself)

    rng = np.random.default_rng(0)
    shapes = Shapes(folds=5, chips_per_fold=2, seeds=1)
    water = rng.beta(1.0, 3.0, (5, 2))
    chips = rng.normal(0.0, Noise().chip, (5, 2))
    scores = _simulated_scores(rng, shapes, Noise(), water, chips, 0.0)
    per_chip = [mean_iou(m) for fold in scores for m in fold[0].values()]
    assert min(per_chip) < 0.6 and max(per_chip) > 0.85
