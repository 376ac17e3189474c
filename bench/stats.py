"""Statistics for latency, from scipy.stats: a one-sided Mann-Whitney U test and bootstrap intervals.

Rank-based, so one stalled call cannot make or break a verdict; asv judges its benchmarks the same
way when it has the raw samples. The bootstrap is the percentile kind: a median has no smooth
jackknife for BCa to lean on, and timing samples are full of ties at the timer's resolution.
"""

from collections.abc import Callable

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000


def mann_whitney_greater(new: np.ndarray, old: np.ndarray) -> float:
    """p-value of H1 'new tends to be larger than old' (e.g. slower): exact where there are no
    ties (the exact null distribution assumes none), else the tie-corrected normal approximation."""
    new, old = np.asarray(new, float), np.asarray(old, float)
    if len(new) == 0 or len(old) == 0:
        return 1.0
    pooled = np.concatenate([new, old])
    method = "exact" if len(np.unique(pooled)) == len(pooled) else "asymptotic"
    return float(stats.mannwhitneyu(new, old, alternative="greater", method=method).pvalue)


def bootstrap_ci(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray],
                 seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of statistic(*samples, axis); several samples are resampled
    as pairs (index i of each together: rounds of one interleaved loop)."""
    result = stats.bootstrap(samples, statistic, paired=len(samples) > 1, vectorized=True,
                             n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95, method="percentile",
                             rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilcoxon_greater(new: np.ndarray, old: np.ndarray) -> float:
    """p-value of H1 'new is slower than old' from paired rounds (new[i] and old[i] timed in round i):
    a one-sided Wilcoxon signed-rank test on log(new/old), so the round's shared load cancels."""
    diff = np.log(np.asarray(new, float)) - np.log(np.asarray(old, float))
    if len(diff) == 0 or not np.any(diff):
        return 1.0
    return float(stats.wilcoxon(diff, alternative="greater").pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: rejecting where adjusted < alpha keeps the chance of any
    false rejection in the whole family at most alpha (here: all latency cells of one gate)."""
    order = np.argsort(pvalues, kind="stable")
    adjusted, running, m = [0.0] * len(pvalues), 0.0, len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
