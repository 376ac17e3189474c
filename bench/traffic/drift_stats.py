"""Drift statistics of hidden states: does a real shift look like the drift the scenarios simulate,
and does it carry the mechanism (a persistent offset the norm keeps or removes, massive channels)?

For states h (requests, tokens, features), the figures docs/design.md names. Where a request's scale must
not count, each request is first divided by its own RMS ("scale-free" below):
- positive_mean_fraction: share of features whose scale-free mean over all tokens is > 0 (0.5 for a
  centred stream; `production` biases 90 % of them);
- abs_mean_shift_std: mean over features of |mean_c| / std_c, scale-free: how far each feature sits
  from zero in units of its own spread, whatever its sign (signs do not cancel);
- token_mean_energy: per token, mean² / mean-square across its features, averaged over tokens: the
  share of a token's energy in the offset all its features share (what LayerNorm removes and RMSNorm
  keeps);
- domain_shift_std: mean over features of |μ_c − μ_ref,c| / σ_ref,c, scale-free, against reference
  states (clean prose through the same model); None without a reference;
- massive_ratio: the largest scale-free |x| over the median |x| (Sun et al.'s massive activations
  reach 10^4 at a few channels);
- massive_channels_stable: share of tokens whose largest-|x| channel is the most common one (near 1
  when a fixed channel carries the massive value);
- rms_spread: the std over requests of log(RMS of the request), as `magnitude_sigma` sets it;
- mean_shift_std_signed: the old signed mean over features of mean_c / std_c of the raw states (signs
  cancel, and the request scale counts), kept for comparison only.
"""

import numpy as np

STATS = ("positive_mean_fraction", "abs_mean_shift_std", "token_mean_energy", "domain_shift_std", "massive_ratio",
         "massive_channels_stable", "rms_spread", "mean_shift_std_signed")


def scale_free(h: np.ndarray) -> np.ndarray:
    """Each request divided by its own RMS over tokens and features."""
    h = np.asarray(h, np.float64)
    rms = np.sqrt(np.mean(h**2, axis=tuple(range(1, h.ndim)), keepdims=True))
    return h / np.where(rms > 0, rms, 1.0)


def moments(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature of the scale-free states: a reference for domain_shift_std."""
    flat = scale_free(h).reshape(-1, np.shape(h)[-1])
    return flat.mean(axis=0), flat.std(axis=0)


def ffn_input_std(taps: dict, n_layers: int) -> np.ndarray:
    """(n_layers, d_model): each feature's std at each FFN input ("ffn_in.N" taps): the unit in which
    a scenario's offsets are given to a whole model."""
    return np.stack([np.asarray(taps[f"ffn_in.{i}"]).reshape(-1, np.shape(taps[f"ffn_in.{i}"])[-1]).std(axis=0)
                     for i in range(n_layers)])


def _per_std(values: np.ndarray, std: np.ndarray) -> np.ndarray:
    return values / np.where(std > 0, std, 1.0)


def drift_stats(h: np.ndarray, reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float | None]:
    """The statistics of (requests, tokens, features) states; rms_spread is None for one request,
    domain_shift_std None without `reference` (moments() of the reference states)."""
    h = np.asarray(h, np.float64)
    width = h.shape[-1]
    mean, std = moments(h)
    tokens = h.reshape(-1, width)
    square = np.mean(tokens**2, axis=1)
    magnitude = np.abs(scale_free(h).reshape(-1, width))
    typical = float(np.median(magnitude))
    top = np.argmax(magnitude, axis=1)
    log_rms = np.log(np.sqrt(np.mean(h**2, axis=(1, 2))))
    return {
        "positive_mean_fraction": float(np.mean(mean > 0)),
        "abs_mean_shift_std": float(np.mean(np.abs(_per_std(mean, std)))),
        "token_mean_energy": float(np.mean(tokens.mean(axis=1) ** 2 / np.where(square > 0, square, 1.0))),
        "domain_shift_std": None if reference is None else
        float(np.mean(np.abs(_per_std(mean - reference[0], reference[1])))),
        "massive_ratio": float(magnitude.max() / typical) if typical > 0 else None,
        "massive_channels_stable": float(np.bincount(top, minlength=width).max() / len(top)),
        "rms_spread": float(np.std(log_rms)) if len(h) > 1 else None,
        "mean_shift_std_signed": float(np.mean(_per_std(tokens.mean(axis=0), tokens.std(axis=0)))),
    }


def massive_activations(h: np.ndarray, top: int = 3) -> dict:
    """Where a layer's massive activations sit and how large and stable they are, on raw states
    (requests, tokens, features): the `top` channels of largest |x| with their largest |x|, the median
    |x| over every value, and for each channel the share of tokens whose largest-|x| channel it is."""
    tokens = np.abs(np.asarray(h, np.float64).reshape(-1, np.shape(h)[-1]))
    peak = tokens.max(axis=0)
    channels = np.argsort(peak)[::-1][:top]
    leader = np.bincount(np.argmax(tokens, axis=1), minlength=tokens.shape[1]) / len(tokens)
    return {"channels": [int(c) for c in channels], "max_abs": [float(peak[c]) for c in channels],
            "median_abs": float(np.median(tokens)), "token_share": [float(leader[c]) for c in channels]}


def per_layer(layers: list[dict]) -> str:
    """One terminal line for a list of per-layer statistics: 'L0 0.53/0.31/0.02/12/0.10  L1 …'
    (positive-mean share / |mean| in std / token mean energy / massive ratio / rms spread)."""
    def one(stats: dict) -> str:
        spread, massive = stats["rms_spread"], stats["massive_ratio"]
        return (f"{stats['positive_mean_fraction']:.2f}/{stats['abs_mean_shift_std']:.2f}/"
                f"{stats['token_mean_energy']:.2f}/{'–' if massive is None else f'{massive:.0f}'}/"
                f"{'–' if spread is None else f'{spread:.2f}'}")

    return "  ".join(f"L{i} {one(stats)}" for i, stats in enumerate(layers))


PER_LAYER_LEGEND = "positive-mean share/|mean| in std/token mean energy/massive ratio/rms spread"
