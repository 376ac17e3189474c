"""u8s8_saturation_rate: how often ONNX Runtime's AVX2 U8S8 int8 GEMM clips, on a cell's own tensors.

Without VNNI, MLAS multiplies uint8 activations by int8 weights with `vpmaddubsw`, which adds the
products of adjacent K elements (k, k+1 within each packed group of four) into a *saturating* int16
before widening (QgemmU8S8KernelAvx2: vpmaddubsw, then vpmaddwd by ones). Activations enter raw
(0-255; zero points are corrected afterwards from row and column sums), so a pair sum is
a[k]·w[k] + a[k+1]·w[k+1] and clips outside [-32768, 32767]. With `reduce_range` the weights lie in
[-64, 64], so |pair| ≤ 2·255·64 = 32640 and nothing clips; full-range weights reach 127.

The rate is a property of the tensors, computed here from the quantized model's int8 weights and the
cell's activations quantized as the model does: DynamicQuantizeLinear's range a call (dynamic), or
the calibrated scale and zero point (QDQ). On a
VNNI machine (vpdpbusd accumulates in int32) the same rate costs nothing; the record's machine class
says which applies.
"""

import numpy as np
import onnx
from onnx import numpy_helper

INT16_MIN, INT16_MAX = -32768, 32767
MAX_TOKENS = 256  # tokens sampled a MatMul, spread over the calls: the pair sums grow as tokens × K/2 × N
# Pair sums evaluated a MatMul and call, at most: past it, evenly spaced output columns (all of them up
# to the `default` size; 256 of 16384 at llama-7b, 64 tokens, where every column took 10 s a MatMul).
MAX_PAIRS = 2**25


def dynamic_quantize(x: np.ndarray) -> np.ndarray:
    """uint8 values as DynamicQuantizeLinear computes them (ONNX spec): the range includes 0."""
    x = x.astype(np.float32)
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((high - low) / 255) if high > low else np.float32(1.0)
    zero_point = np.clip(np.round(-low / scale), 0, 255)
    return np.clip(np.round(x / scale) + zero_point, 0, 255).astype(np.int32)


def pair_sums_clipped(a: np.ndarray, w: np.ndarray, max_pairs: int | None = None) -> tuple[int, int]:
    """(clipped, total) adjacent-K pair sums for uint8 rows a (T, K) against int8 weights w (K, N);
    with `max_pairs`, against as many evenly spaced columns of w as keep T·K/2·columns within it."""
    if a.shape[1] % 2:  # the kernel pads K with zeros
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)))
    if max_pairs is not None:
        columns = max(1, min(w.shape[1], max_pairs // (a.shape[0] * (a.shape[1] // 2))))
        w = w[:, np.linspace(0, w.shape[1] - 1, columns).astype(int)]
    w = w.astype(np.int32)
    even, odd = np.ascontiguousarray(w[0::2]), np.ascontiguousarray(w[1::2])
    # A pair can leave int16 only where a[k]·max|w[k]| + a[k+1]·max|w[k+1]| does: none can with
    # reduce_range's 7-bit weights, and few can in most rows of a full-range GEMM.
    reach_even, reach_odd = np.abs(even).max(axis=1), np.abs(odd).max(axis=1)
    clipped = 0
    for row in a:
        live = np.flatnonzero(row[0::2] * reach_even + row[1::2] * reach_odd > INT16_MAX)
        if 2 * live.size > len(even):  # most of the row can clip: all of it costs less than gathering
            live = slice(None)
        pairs = row[0::2][live, None] * even[live] + row[1::2][live, None] * odd[live]  # (pairs, N)
        clipped += int(np.count_nonzero((pairs > INT16_MAX) | (pairs < INT16_MIN)))
    return clipped, a.shape[0] * (a.shape[1] // 2) * w.shape[1]


def saturation_rate(model_path, calls: list[dict[str, np.ndarray]]) -> float | None:
    """Share of clipped pair sums over every int8 MatMul of the model, for the activations of each call
    (`calls`: per call, the tapped tensors by name; a SwiGLU's down-projection input, not a graph
    output, is act_out·up). Dynamic models quantize each call's range (MatMulInteger after
    DynamicQuantizeLinear); QDQ models use their calibrated uint8 scale and zero point (a MatMul of
    DequantizeLinear inputs, which ONNX Runtime runs as one U8S8 GEMM). None when there is neither."""
    model = onnx.load(str(model_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    gemms = []  # (names the activation may be tapped under, its quantizer, int8 weights (K, N))
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and getattr(producer.get(node.input[0]), "op_type", "") == \
                "DynamicQuantizeLinear":
            gemms.append(([producer[node.input[0]].input[0]], dynamic_quantize, weights[node.input[1]]))
        elif node.op_type == "MatMul" and (static := _qdq_gemm(node, producer, weights)):
            gemms.append(static)
    if not gemms:
        return None
    clipped, total = 0, 0
    per_call = max(1, MAX_TOKENS // len(calls))
    for names, quantizer, w in gemms:
        sampled = []
        for tensors in calls:  # each call quantized on its own (a dynamic range is a call's)
            x = _activation(tensors, names, w.shape[0])
            rows = x.reshape(-1, x.shape[-1])
            sampled.append(quantizer(rows)[np.linspace(0, len(rows) - 1, min(per_call, len(rows))).astype(int)])
        c, t = pair_sums_clipped(np.concatenate(sampled), w, MAX_PAIRS * len(calls))
        clipped, total = clipped + c, total + t
    return clipped / total


def _qdq_gemm(node, producer: dict, weights: dict):
    """A QDQ MatMul whose activation is uint8 (U8S8) and whose weights are an int8 initializer, or None."""
    act, weight = producer.get(node.input[0]), producer.get(node.input[1])
    if not (act and weight and act.op_type == weight.op_type == "DequantizeLinear"):
        return None
    w, zero_point = weights.get(weight.input[0]), weights.get(act.input[2]) if len(act.input) > 2 else None
    if w is None or w.dtype != np.int8 or zero_point is None or zero_point.dtype != np.uint8:
        return None
    scale = np.float32(weights[act.input[1]])
    source = producer.get(act.input[0])
    names = [node.input[0]] + ([source.input[0]] if source is not None and source.op_type == "QuantizeLinear" else [])

    def static(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x.astype(np.float32) / scale) + int(zero_point), 0, 255).astype(np.int32)

    return names, static, w


def _activation(tensors: dict, names: list[str], k: int) -> np.ndarray:
    for name in names:
        if name in tensors:
            return tensors[name]
    if "act_out" in tensors and "up" in tensors and tensors["up"].shape[-1] == k:
        return tensors["act_out"] * tensors["up"]  # the SwiGLU product feeding the down projection
    raise KeyError(f"no tapped tensor for the quantized input {names} (width {k})")
