"""Drift statistics of hidden states: does a real shift look like the drift the scenarios simulate?

For states h (requests, tokens, features), the three numbers DESIGN.md names:
- positive_mean_fraction: share of features whose mean over all tokens is > 0 (0.5 for a centred
  stream; the `production` scenario biases 90 % of them);
- mean_shift_std: the mean over features of mean_c / std_c, the offset in units of each feature's
  spread (what a scenario's `mean_shift` sets, times its `shift_fraction`);
- rms_spread: the std over requests of log(RMS of the request), as `magnitude_sigma` sets it.
"""

import numpy as np

STATS = ("positive_mean_fraction", "mean_shift_std", "rms_spread")


def drift_stats(h: np.ndarray) -> dict[str, float | None]:
    """The statistics of (requests, tokens, features) states; rms_spread is None for one request."""
    h = np.asarray(h, np.float64)
    flat = h.reshape(-1, h.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    log_rms = np.log(np.sqrt(np.mean(h**2, axis=(1, 2))))
    return {
        "positive_mean_fraction": float(np.mean(mean > 0)),
        "mean_shift_std": float(np.mean(mean / np.where(std > 0, std, 1.0))),
        "rms_spread": float(np.std(log_rms)) if len(h) > 1 else None,
    }


def per_layer(layers: list[dict]) -> str:
    """One terminal line for a list of per-layer statistics: 'L0 0.53/+0.01/0.10  L1 …' (positive-mean
    share / mean shift in std / rms spread)."""
    def one(stats: dict) -> str:
        spread = stats["rms_spread"]
        return (f"{stats['positive_mean_fraction']:.2f}/{stats['mean_shift_std']:+.2f}/"
                f"{'–' if spread is None else f'{spread:.2f}'}")

    return "  ".join(f"L{i} {one(stats)}" for i, stats in enumerate(layers))
