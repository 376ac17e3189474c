"""Whole-model (lm) metrics: a candidate's next-byte predictions against fp32 of the same design on
the same text and drift, plus activation spikes at each FFN's down-projection input.

Logits are (requests, tokens, vocabulary: 256 bytes for the pair); targets the next tokens (requests,
tokens).
"""

import math

import numpy as np

from ffnbench.bench.cells.cell_record import finite

# The figures llama.cpp's perplexity tool reports for a quantization (KL divergence per position:
# mean, 99th and 99.9th percentile, maximum; "same top p"; the change of a token's probability),
# so that users can set ours beside theirs: kld_mean is kl_to_fp32, same_top1 top1_agreement.
LLAMA_CPP_METRICS = ("kld_mean", "kld_p99", "kld_p999", "kld_max", "same_top1", "delta_p_mean", "delta_p_rms")
LM_METRICS = ("bits_per_byte", "delta_bpb", "kl_to_fp32", "top1_agreement", *LLAMA_CPP_METRICS, "nonfinite_rate",
              "spike_ratio", "spike_token_share")
# A token whose largest down-projection input is this many times a typical token's takes two bits of
# a per-tensor int8 range from every other token of its call: it "carries a spike".
SPIKE_FACTOR = 4.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


# Windows a log-softmax takes at once: over a 49,152-token vocabulary (a user's model) a whole cell's
# logits in float64 are gigabytes, and each figure needs only its own window.
CHUNK = 4


def _chunks(n: int):
    return (slice(i, i + CHUNK) for i in range(0, n, CHUNK))


def window_bits(logits: np.ndarray, targets: np.ndarray, target_bytes: np.ndarray | None = None) -> np.ndarray:
    """(requests,): each window's bits per byte: its mean −log2 p(next token) where a token is a byte,
    else its summed −log2 p over the UTF-8 bytes its targets cover (`target_bytes`, one per window)."""
    bits = np.concatenate([
        -np.take_along_axis(log_softmax(logits[c]), targets[c][..., None].astype(np.int64), axis=-1)[..., 0]
        .reshape(len(targets[c]), -1) / math.log(2) for c in _chunks(len(logits))])
    return bits.mean(axis=1) if target_bytes is None else bits.sum(axis=1) / target_bytes


def bits_per_byte(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean −log2 p(next byte) over every position."""
    return float(np.mean(window_bits(logits, targets)))


def position_figures(ref_logits: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Per position (requests, tokens): KL(p_fp32 ‖ p_candidate) in nats, whether the candidate's most
    likely token is fp32's, and delta_p: the probability of fp32's most likely token, candidate minus fp32."""
    parts = [_position_figures(ref_logits[c], logits[c]) for c in _chunks(len(logits))]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _position_figures(ref_logits: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    ref, got = log_softmax(ref_logits), log_softmax(logits)
    top = np.argmax(ref, axis=-1)[..., None]

    def p_top(logp: np.ndarray) -> np.ndarray:
        return np.exp(np.take_along_axis(logp, top, -1)[..., 0])

    return {"kl": np.sum(np.exp(ref) * (ref - got), axis=-1), "same_top1": top[..., 0] == np.argmax(got, axis=-1),
            "delta_p": p_top(got) - p_top(ref)}


def kl_to_fp32(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(p_fp32 ‖ p_candidate), in nats."""
    return float(np.mean(position_figures(ref_logits, logits)["kl"]))


def window_metrics(per_position: dict[str, np.ndarray], logits: np.ndarray, bits: np.ndarray,
                   undrifted_bits: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per window, from a cell's position_figures, logits and window_bits: kl_to_fp32,
    bits_per_byte and delta_bpb (against fp32 on the same window without synthetic drift),
    same_top1 and delta_p_mean; None where a logit is not finite. Windows are of equal length in
    tokens, so each metric's mean over windows is the cell's figure (bits per byte: the mean of the
    windows', where a tokenizer gives them different byte counts)."""
    if not np.all(np.isfinite(logits)):
        return None

    def by_window(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).mean(axis=1)

    return {"kl_to_fp32": by_window(per_position["kl"]), "bits_per_byte": bits, "delta_bpb": bits - undrifted_bits,
            "same_top1": by_window(per_position["same_top1"].astype(np.float64)),
            "delta_p_mean": by_window(per_position["delta_p"])}


def llama_cpp_metrics(per_position: dict[str, np.ndarray]) -> dict[str, float]:
    """The LLAMA_CPP_METRICS over every position of a cell (finite logits), from its position_figures."""
    kl, delta_p = per_position["kl"].ravel(), per_position["delta_p"].ravel()
    return {"kld_mean": float(np.mean(kl)), "kld_p99": float(np.percentile(kl, 99)),
            "kld_p999": float(np.percentile(kl, 99.9)), "kld_max": float(np.max(kl)),
            "same_top1": float(np.mean(per_position["same_top1"])), "delta_p_mean": float(np.mean(delta_p)),
            "delta_p_rms": float(np.sqrt(np.mean(delta_p**2)))}


def order0_bits_per_byte(train: np.ndarray, targets: np.ndarray, vocab: int = 256,
                         target_bytes: np.ndarray | None = None) -> float:
    """Cross-entropy of `targets` (windows, tokens) under the token (byte) frequencies of `train`
    (add-one smoothed), per byte of text (`target_bytes` per window where tokens are not bytes; the
    mean of the windows' figures, as a model's bits per byte are): the figure a model that ignores
    context reaches."""
    counts = np.bincount(np.asarray(train, np.int64), minlength=vocab) + 1.0
    bits = -np.log2(counts[np.asarray(targets, np.int64)] / counts.sum())
    if target_bytes is None:
        return float(np.mean(bits))
    return float(np.mean(bits.reshape(len(target_bytes), -1).sum(axis=1) / target_bytes))


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


# fp16's largest finite value is 65504: a norm that squares in half precision (torch-fp16 spells it
# out) overflows on a token whose largest |x| (|x − mean| for LayerNorm) passes its square root.
HALF_SQUARE_LIMIT = math.sqrt(65504.0)


def half_norm_overflow(ffn_in: np.ndarray, centred: bool) -> float:
    """Share of tokens of (…, tokens, d_model) states whose norm's squares would overflow in fp16:
    LayerNorm squares x − mean (`centred`), RMSNorm x itself. The states decide it, not the recipe."""
    x = ffn_in.reshape(-1, ffn_in.shape[-1]).astype(np.float64)
    if centred:
        x = x - x.mean(axis=-1, keepdims=True)
    return float(np.mean(np.max(np.abs(x), axis=-1) > HALF_SQUARE_LIMIT))


def relative_error(ref: np.ndarray, got: np.ndarray) -> float | None:
    """‖got − ref‖ / ‖ref‖ over a whole tensor; None where the reference is all zeros."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(got - ref)) / norm if norm > 0 else None


def prediction_metrics(per_position: dict[str, np.ndarray], logits: np.ndarray, per_window: dict | None) -> dict:
    """bits_per_byte, delta_bpb, kl_to_fp32 (means of the per-window figures), top1_agreement (the
    share of positions whose most likely next byte is fp32's), the LLAMA_CPP_METRICS, nonfinite_rate;
    with non-finite logits only the rate."""
    rate = float(1.0 - np.count_nonzero(np.isfinite(logits)) / logits.size)
    if per_window is None:
        return {**dict.fromkeys(("bits_per_byte", "delta_bpb", "kl_to_fp32", "top1_agreement", *LLAMA_CPP_METRICS)),
                "nonfinite_rate": rate}
    means = {k: float(np.mean(v)) for k, v in per_window.items() if k in ("bits_per_byte", "delta_bpb", "kl_to_fp32")}
    figures = llama_cpp_metrics(per_position)
    return {**means, "top1_agreement": figures["same_top1"], **figures, "nonfinite_rate": rate}


def down_inputs(taps: dict, layers: int) -> list[np.ndarray]:
    """Each layer's down-projection input: GELU's output (A), or the SwiGLU product swish(gate)·up (B)."""
    return [taps[f"act_out.{i}"] * taps[f"up.{i}"] if f"up.{i}" in taps else taps[f"act_out.{i}"]
            for i in range(layers)]


def pooled_taps(taps: dict, layers: int) -> dict[str, np.ndarray]:
    """Each tapped stage's values over every layer, flattened into one array (the tap metrics' input)."""
    return {name: np.concatenate([taps[f"{name}.{i}"].ravel() for i in range(layers)])
            for name in ("norm_out", "act_in", "act_out")}


def stage_errors(ref_taps: dict, taps: dict, layers: int) -> dict[str, list]:
    """Per layer, where a recipe's error enters the FFN: the relative error of the norm's output,
    the pre-activation and the down-projection's input against fp32's, on the tapped windows."""
    ref_down, down = down_inputs(ref_taps, layers), down_inputs(taps, layers)
    return {"norm_out_rel_err": finite([relative_error(ref_taps[f"norm_out.{i}"], taps[f"norm_out.{i}"])
                                        for i in range(layers)]),
            "act_in_rel_err": finite([relative_error(ref_taps[f"act_in.{i}"], taps[f"act_in.{i}"])
                                      for i in range(layers)]),
            "down_in_rel_err": finite([relative_error(r, d) for r, d in zip(ref_down, down, strict=True)])}
