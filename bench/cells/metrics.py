"""Accuracy metrics: small pure numpy functions of (reference, candidate), each with its formula.

Arrays are block outputs (n_requests, seq_len, d_model) unless said otherwise; the reference is
always fp32 torch on the same inputs.
"""

import numpy as np

# A bit-identical candidate has infinite SQNR; JSON has no infinity, so ratios are capped here.
MAX_DB = 200.0
# Readout head size for top1_agreement: a vocabulary large enough that argmax ties are rare.
READOUT_VOCAB = 512


def _db(signal: float, noise: float) -> float | None:
    """None when both are zero (0/0: nothing to compare, not a perfect score)."""
    if signal <= 0 and noise <= 0:
        return None
    if noise <= 0:
        return MAX_DB
    if signal <= 0:
        return -MAX_DB
    return float(min(MAX_DB, 10 * np.log10(signal / noise)))


def sqnr_db(ref: np.ndarray, y: np.ndarray) -> float | None:
    """10·log10(Σ ref² / Σ (ref − y)²), capped at ±200 dB; None for 0/0."""
    ref, y = ref.astype(np.float64), y.astype(np.float64)
    return _db(np.sum(ref**2), np.sum((ref - y) ** 2))


def centered(x: np.ndarray) -> np.ndarray:
    """x minus its mean over tokens (axis −2), per request and feature: the token-varying part."""
    return x - x.mean(axis=-2, keepdims=True)


def centered_sqnr_db(ref: np.ndarray, y: np.ndarray) -> float | None:
    """sqnr_db of the token-varying parts: what the next layer can use once a shared offset is gone.
    None with fewer than 2 tokens a request: one token has no part that varies."""
    if ref.shape[-2] < 2:
        return None
    return sqnr_db(centered(ref.astype(np.float64)), centered(y.astype(np.float64)))


def per_request(ref: np.ndarray, y: np.ndarray) -> dict[str, list[float]] | None:
    """Per request (the first axis), the two sums of centered_sqnr_db: Σ centered ref² and Σ of the
    centered error², so two recipes on the same requests compare paired (the report's mitigations).
    None where centered_sqnr_db is, or where y is not finite."""
    if ref.shape[-2] < 2 or nonfinite_rate(y) > 0:
        return None
    ref, y = centered(ref.astype(np.float64)), centered(y.astype(np.float64))
    axes = tuple(range(1, ref.ndim))
    return {"centered_signal": np.sum(ref**2, axis=axes).tolist(),
            "centered_noise": np.sum((ref - y) ** 2, axis=axes).tolist()}


def cosine(ref: np.ndarray, y: np.ndarray) -> float:
    """Mean over tokens of ⟨ref_t, y_t⟩ / (‖ref_t‖·‖y_t‖), t indexing the last-axis vectors. A zero
    vector agrees only with a zero vector: 1 when both are zero, 0 when one of them is."""
    ref, y = ref.astype(np.float64), y.astype(np.float64)
    num = np.sum(ref * y, axis=-1)
    ref_norm, y_norm = np.linalg.norm(ref, axis=-1), np.linalg.norm(y, axis=-1)
    den = ref_norm * y_norm
    both_zero = (ref_norm == 0) & (y_norm == 0)
    return float(np.mean(np.where(den > 0, num / np.where(den > 0, den, 1), np.where(both_zero, 1.0, 0.0))))


def rel_l2(ref: np.ndarray, y: np.ndarray) -> float:
    """‖ref − y‖₂ / ‖ref‖₂ over all elements."""
    ref, y = ref.astype(np.float64), y.astype(np.float64)
    return float(np.linalg.norm(ref - y) / max(np.linalg.norm(ref), np.finfo(np.float64).tiny))


def max_abs_err(ref: np.ndarray, y: np.ndarray) -> float:
    """max |ref − y| over all elements."""
    return float(np.max(np.abs(ref.astype(np.float64) - y.astype(np.float64))))


def nonfinite_rate(y: np.ndarray) -> float:
    """Share of elements of y that are NaN or ±Inf."""
    return float(1.0 - np.count_nonzero(np.isfinite(y)) / y.size)


def readout_head(d_model: int, seed: int = 0, vocab: int = READOUT_VOCAB) -> np.ndarray:
    """A fixed (d_model, vocab) Gaussian head, 1/sqrt(d_model) scale, a pure function of its seed."""
    return (np.random.default_rng([seed, 0x70_91]).standard_normal((d_model, vocab)) / np.sqrt(d_model))


def top1_agreement(ref: np.ndarray, y: np.ndarray, head: np.ndarray) -> float:
    """Share of tokens where argmax(ref_t · head) == argmax(y_t · head)."""
    a = np.argmax(ref.astype(np.float64) @ head, axis=-1)
    b = np.argmax(y.astype(np.float64) @ head, axis=-1)
    return float(np.mean(a == b))


def fp32_drift_db(branch_base: np.ndarray, branch_shifted: np.ndarray) -> float | None:
    """sqnr_db of the fp32 FFN branch (output minus residual) on shifted vs unshifted input.

    High means the design's output ignores the drift; a norm that removes a uniform per-token
    shift and scale gives the cap, 200 dB.
    """
    return sqnr_db(branch_base, branch_shifted)


# The seed's prediction, from the taps. `ref` taps come from fp32 torch, `got` from the runtime.

def norm_positive_fraction(norm_out: np.ndarray) -> float:
    """Share of norm-output elements > 0."""
    return float(np.mean(norm_out > 0))


def preact_sign_flip_rate(ref_act_in: np.ndarray, act_in: np.ndarray) -> float:
    """Share of activation-input elements whose sign differs from fp32's (zeros count as positive)."""
    return float(np.mean((ref_act_in >= 0) != (act_in >= 0)))


def act_err_band(ref_act_in: np.ndarray, ref_act_out: np.ndarray, act_out: np.ndarray,
                 low: float, high: float, include_low: bool) -> float | None:
    """RMS of (act_out − ref_act_out) where the fp32 pre-activation lies in the band; None if empty."""
    mask = (ref_act_in >= low if include_low else ref_act_in > low) & (
        ref_act_in < high if include_low else ref_act_in <= high)
    if not np.any(mask):
        return None
    diff = act_out[mask].astype(np.float64) - ref_act_out[mask].astype(np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def act_err_small_neg(ref_act_in, ref_act_out, act_out, delta: float) -> float | None:
    """RMS activation-output error where the fp32 pre-activation lies in [−δ, 0)."""
    return act_err_band(ref_act_in, ref_act_out, act_out, -delta, 0.0, include_low=True)


def act_err_small_pos(ref_act_in, ref_act_out, act_out, delta: float) -> float | None:
    """RMS activation-output error where the fp32 pre-activation lies in (0, δ]."""
    return act_err_band(ref_act_in, ref_act_out, act_out, 0.0, delta, include_low=False)


OUTPUT_METRICS = ("sqnr_db", "centered_sqnr_db", "cosine", "rel_l2", "max_abs_err", "nonfinite_rate",
                  "top1_agreement")
TAP_METRICS = ("norm_positive_fraction", "preact_sign_flip_rate", "act_err_small_neg", "act_err_small_pos")
# u8s8_saturation_rate (bench/machine/u8s8.py): dynamic int8 ORT cells only, a property of their tensors.
ALL_METRICS = (*OUTPUT_METRICS, "fp32_drift_db", *TAP_METRICS, "u8s8_saturation_rate")


def output_metrics(ref: np.ndarray, y: np.ndarray, head: np.ndarray) -> dict[str, float | None]:
    """Every output metric; with non-finite values in y only nonfinite_rate is defined."""
    rate = nonfinite_rate(y)
    if rate > 0:
        return {name: None for name in OUTPUT_METRICS} | {"nonfinite_rate": rate}
    return {
        "sqnr_db": sqnr_db(ref, y),
        "centered_sqnr_db": centered_sqnr_db(ref, y),
        "cosine": cosine(ref, y),
        "rel_l2": rel_l2(ref, y),
        "max_abs_err": max_abs_err(ref, y),
        "nonfinite_rate": rate,
        "top1_agreement": top1_agreement(ref, y, head),
    }


def tap_metrics(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], delta: float) -> dict[str, float | None]:
    return {
        "norm_positive_fraction": norm_positive_fraction(got["norm_out"]),
        "preact_sign_flip_rate": preact_sign_flip_rate(ref["act_in"], got["act_in"]),
        "act_err_small_neg": act_err_small_neg(ref["act_in"], ref["act_out"], got["act_out"], delta),
        "act_err_small_pos": act_err_small_pos(ref["act_in"], ref["act_out"], got["act_out"], delta),
    }
