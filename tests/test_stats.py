"""Mann-Whitney U and bootstrap intervals (scipy.stats) against values worked out by hand and their
known behaviour."""

import math

import numpy as np
import pytest

from ffnbench.bench.stats import bootstrap_ci, holm, mann_whitney_greater, wilcoxon_greater


def test_complete_separation_without_ties_is_exact():
    # Every new above every old, 5 and 5: only 1 of the C(10, 5) = 252 equally likely rank splits
    # is this extreme, so the exact one-sided p is 1/252.
    assert mann_whitney_greater(np.arange(6.0, 11.0), np.arange(1.0, 6.0)) == pytest.approx(1 / 252)


def test_ties_take_the_tie_corrected_normal_approximation():
    # new = [2, 2, 3], old = [1, 1, 2]: U = 2.5 + 2.5 + 3 = 8 of 9; tie groups of sizes 2 and 3 give
    # var = 3*3/12 * (7 - (6 + 24) / 30) = 4.5; continuity-corrected z = (8 - 4.5 - 0.5) / sqrt(4.5).
    z = 3 / math.sqrt(4.5)
    p = mann_whitney_greater(np.array([2.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0]))
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))


def test_same_distribution_is_not_significant():
    rng = np.random.default_rng(0)
    ps = [mann_whitney_greater(rng.normal(size=30), rng.normal(size=30)) for _ in range(200)]
    assert 0.01 < np.mean(np.array(ps) < 0.05) < 0.12  # about the nominal 5 %


def test_a_faster_new_is_never_a_slowdown():
    assert mann_whitney_greater(np.arange(1.0, 11.0), np.arange(11.0, 21.0)) > 0.99


def test_an_empty_sample_is_never_significant():
    assert mann_whitney_greater(np.array([]), np.arange(3.0)) == 1.0


def test_bootstrap_interval_covers_the_median_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits = []
    for seed in range(100):
        low, high = bootstrap_ci((rng.lognormal(0.0, 0.3, 60),), np.median, seed=seed)
        hits.append(low <= 1.0 <= high)  # the median of lognormal(0, s) is exactly 1
    assert 0.85 <= np.mean(hits) <= 1.0


def test_paired_bootstrap_keeps_rounds_together():
    """A shared per-round drift cancels in a paired ratio: the interval stays tight around 2."""
    rng = np.random.default_rng(2)
    drift = rng.lognormal(0.0, 0.5, 100)  # the machine's noise, shared by both in each round
    low, high = bootstrap_ci((2 * drift, drift), lambda a, b, axis: np.median(a, axis) / np.median(b, axis))
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_holm_adjusts_by_rank_and_keeps_the_order():
    # m = 4: sorted p 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 0.5)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])


def test_holm_controls_the_family_wise_false_alarm_rate():
    """34 true nulls (the gate's latency cells), 2,000 families: the share of families with any
    rejection at alpha 0.05 stays near or below 0.05; unadjusted, it is 1 - 0.95^34 = 0.83."""
    rng = np.random.default_rng(3)
    families = rng.uniform(size=(2000, 34))
    any_holm = np.mean([min(holm(list(p))) < 0.05 for p in families])
    any_raw = np.mean(families.min(axis=1) < 0.05)
    assert any_holm <= 0.065 and any_raw > 0.75


def test_wilcoxon_sees_a_paired_slowdown_through_shared_noise():
    rng = np.random.default_rng(4)
    load = rng.lognormal(0.0, 0.5, 30)  # each round's load, shared by both sides
    jitter = rng.lognormal(0.0, 0.01, (2, 30))
    assert wilcoxon_greater(1.05 * load * jitter[0], load * jitter[1]) < 0.001
    assert wilcoxon_greater(load * jitter[0], 1.05 * load * jitter[1]) > 0.99
    assert wilcoxon_greater(load, load) == 1.0
