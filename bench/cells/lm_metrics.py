"""Whole-model (lm) metrics: a candidate's next-byte predictions against fp32 of the same design on
the same text and drift, plus activation spikes at each FFN's down-projection input.

Logits are (requests, tokens, 256); targets the next bytes (requests, tokens).
"""

import math

import numpy as np

LM_METRICS = ("bits_per_byte", "delta_bpb", "kl_to_fp32", "top1_agreement", "nonfinite_rate", "spike_ratio",
              "spike_token_share")
# A token whose largest down-projection input is this many times a typical token's takes two bits of
# a per-tensor int8 range from every other token of its call: it "carries a spike".
SPIKE_FACTOR = 4.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def bits_per_byte(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean −log2 p(next byte) over every position."""
    logp = np.take_along_axis(log_softmax(logits), targets[..., None].astype(np.int64), axis=-1)
    return float(-np.mean(logp) / math.log(2))


def kl_to_fp32(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(p_fp32 ‖ p_candidate), in nats."""
    ref, got = log_softmax(ref_logits), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(ref) * (ref - got), axis=-1)))


def top1_agreement(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Share of positions where the candidate's most likely next byte is fp32's."""
    return float(np.mean(np.argmax(ref_logits, axis=-1) == np.argmax(logits, axis=-1)))


def spikes(down_in: np.ndarray) -> tuple[float, float]:
    """(spike_ratio, spike_token_share) of one layer's down-projection input (…, tokens, hidden).

    m_t = max |x| over a token's features; spike_ratio = max_t m_t / median_t m_t, how far the worst
    token sits above a typical one (a per-tensor activation range is set by the worst); the share
    is of tokens with m_t > SPIKE_FACTOR · median_t m_t.
    """
    m = np.max(np.abs(down_in.reshape(-1, down_in.shape[-1]).astype(np.float64)), axis=-1)
    typical = float(np.median(m))
    if typical == 0:
        return (0.0, 0.0) if m.max() == 0 else (math.inf, float(np.mean(m > 0)))
    return float(m.max() / typical), float(np.mean(m > SPIKE_FACTOR * typical))


def prediction_metrics(ref_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> dict:
    """bits_per_byte, kl_to_fp32, top1_agreement, nonfinite_rate; with non-finite logits only the rate."""
    rate = float(1.0 - np.count_nonzero(np.isfinite(logits)) / logits.size)
    if rate > 0:
        return {"bits_per_byte": None, "kl_to_fp32": None, "top1_agreement": None, "nonfinite_rate": rate}
    return {"bits_per_byte": bits_per_byte(logits, targets), "kl_to_fp32": kl_to_fp32(ref_logits, logits),
            "top1_agreement": top1_agreement(ref_logits, logits), "nonfinite_rate": rate}
