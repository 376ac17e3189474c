"""Significance for latency: a one-sided Mann-Whitney U test (normal approximation, tie-corrected).

Rank-based, so one stalled call cannot make or break a verdict; asv judges its benchmarks the same
way when it has the raw samples.
"""

import math

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1  # average rank of a tie group
        i = j + 1
    return ranks


def mann_whitney_greater(new: np.ndarray, old: np.ndarray) -> float:
    """p-value of H1 'new tends to be larger than old' (e.g. slower)."""
    new, old = np.asarray(new, float), np.asarray(old, float)
    n1, n2 = len(new), len(old)
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = np.concatenate([new, old])
    ranks = _ranks(pooled)
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    _, counts = np.unique(pooled, return_counts=True)
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - np.sum(counts**3 - counts) / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)  # continuity-corrected
    return 0.5 * math.erfc(z / math.sqrt(2))
