"""Mann-Whitney U against values worked out by hand and against its known behaviour."""

import math

import numpy as np
import pytest

from ffnbench.bench.stats import _ranks, mann_whitney_greater


def test_ranks_average_ties():
    assert list(_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]


def test_complete_separation_is_significant():
    # U = 25 (every new above every old): z = (25 - 12.5 - 0.5) / sqrt(5*5*11/12) = 2.507
    p = mann_whitney_greater(np.arange(6.0, 11.0), np.arange(1.0, 6.0))
    assert p == pytest.approx(0.5 * math.erfc(12 / math.sqrt(25 * 11 / 12) / math.sqrt(2)))
    assert p == pytest.approx(0.00609, abs=1e-5)


def test_same_distribution_is_not_significant():
    rng = np.random.default_rng(0)
    ps = [mann_whitney_greater(rng.normal(size=30), rng.normal(size=30)) for _ in range(200)]
    assert 0.01 < np.mean(np.array(ps) < 0.05) < 0.12  # about the nominal 5 %


def test_a_faster_new_is_never_a_slowdown():
    assert mann_whitney_greater(np.arange(1.0, 11.0), np.arange(11.0, 21.0)) > 0.99
