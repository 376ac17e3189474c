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


def window_bits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(requests,): each window's mean −log2 p(next byte)."""
    logp = np.take_along_axis(log_softmax(logits), targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return -logp.reshape(len(logp), -1).mean(axis=1) / math.log(2)


def bits_per_byte(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean −log2 p(next byte) over every position."""
    return float(np.mean(window_bits(logits, targets)))


def window_kl(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """(requests,): each window's mean over positions of KL(p_fp32 ‖ p_candidate), in nats."""
    ref, got = log_softmax(ref_logits), log_softmax(logits)
    kl = np.sum(np.exp(ref) * (ref - got), axis=-1)
    return kl.reshape(len(kl), -1).mean(axis=1)


def kl_to_fp32(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(p_fp32 ‖ p_candidate), in nats."""
    return float(np.mean(window_kl(ref_logits, logits)))


def window_metrics(ref_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray,
                   undrifted_bits: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per window: kl_to_fp32, bits_per_byte and delta_bpb (against fp32 on the same window without
    synthetic drift); None where a logit is not finite. Windows are of equal length, so each
    metric's mean over windows is the cell's figure."""
    if not np.all(np.isfinite(logits)):
        return None
    bits = window_bits(logits, targets)
    return {"kl_to_fp32": window_kl(ref_logits, logits), "bits_per_byte": bits, "delta_bpb": bits - undrifted_bits}


def order0_bits_per_byte(train_bytes: np.ndarray, targets: np.ndarray) -> float:
    """Cross-entropy of `targets` under the byte frequencies of `train_bytes` (add-one smoothed): the
    figure a model that ignores context reaches."""
    counts = np.bincount(np.asarray(train_bytes, np.int64), minlength=256) + 1.0
    return float(-np.mean(np.log2(counts[np.asarray(targets, np.int64)] / counts.sum())))


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


def prediction_metrics(ref_logits: np.ndarray, logits: np.ndarray, per_window: dict | None) -> dict:
    """bits_per_byte, delta_bpb, kl_to_fp32 (means of the per-window figures), top1_agreement,
    nonfinite_rate; with non-finite logits only the rate."""
    rate = float(1.0 - np.count_nonzero(np.isfinite(logits)) / logits.size)
    if per_window is None:
        return {"bits_per_byte": None, "delta_bpb": None, "kl_to_fp32": None, "top1_agreement": None,
                "nonfinite_rate": rate}
    return {**{k: float(np.mean(v)) for k, v in per_window.items()},
            "top1_agreement": top1_agreement(ref_logits, logits), "nonfinite_rate": rate}
