"""u8s8_saturation_rate: how often ONNX Runtime's AVX2 U8S8 int8 GEMM clips, on a cell's own tensors.

Without VNNI, MLAS multiplies uint8 activations by int8 weights with `vpmaddubsw`, which adds the
products of adjacent K elements (k, k+1 within each packed group of four) into a *saturating* int16
before widening (QgemmU8S8KernelAvx2: vpmaddubsw, then vpmaddwd by ones). Activations enter raw
(0-255; zero points are corrected afterwards from row and column sums), so a pair sum is
a[k]·w[k] + a[k+1]·w[k+1] and clips outside [-32768, 32767]. With `reduce_range` the weights lie in
[-64, 64], so |pair| ≤ 2·255·64 = 32640 and nothing clips; full-range weights reach 127.

The rate is a property of the tensors, computed here from the quantized model's int8 weights and the
cell's activations quantized as ONNX Runtime's DynamicQuantizeLinear does, one range a call. On a
VNNI machine (vpdpbusd accumulates in int32) the same rate costs nothing; the record's machine class
says which applies.
"""

import numpy as np
import onnx
from onnx import numpy_helper

INT16_MIN, INT16_MAX = -32768, 32767
MAX_TOKENS = 256  # tokens sampled a MatMul, spread over the calls: the pair sums grow as tokens × K/2 × N


def dynamic_quantize(x: np.ndarray) -> np.ndarray:
    """uint8 values as DynamicQuantizeLinear computes them (ONNX spec): the range includes 0."""
    x = x.astype(np.float32)
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((high - low) / 255) if high > low else np.float32(1.0)
    zero_point = np.clip(np.round(-low / scale), 0, 255)
    return np.clip(np.round(x / scale) + zero_point, 0, 255).astype(np.int32)


def pair_sums_clipped(a: np.ndarray, w: np.ndarray) -> tuple[int, int]:
    """(clipped, total) adjacent-K pair sums for uint8 rows a (T, K) against int8 weights w (K, N)."""
    if a.shape[1] % 2:  # the kernel pads K with zeros
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)))
    w = w.astype(np.int32)
    clipped = 0
    for row in a:
        pairs = row[0::2, None] * w[0::2] + row[1::2, None] * w[1::2]  # (K/2, N)
        clipped += int(np.count_nonzero((pairs > INT16_MAX) | (pairs < INT16_MIN)))
    return clipped, a.shape[0] * (a.shape[1] // 2) * w.shape[1]


def saturation_rate(model_path, calls: list[dict[str, np.ndarray]]) -> float | None:
    """Share of clipped pair sums over every MatMulInteger of the model, for the activations of each
    call (`calls`: per call, the tensors the graph quantizes, by name; a SwiGLU's down-projection input,
    not a graph output, is act_out·up). None when the model has no MatMulInteger."""
    model = onnx.load(str(model_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantized_from = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMulInteger" and n.input[0] in quantized_from]
    if not matmuls:
        return None
    clipped, total = 0, 0
    per_call = max(1, MAX_TOKENS // len(calls))
    for node in matmuls:
        w = weights[node.input[1]]
        for tensors in calls:
            x = _activation(tensors, quantized_from[node.input[0]], w.shape[0])
            rows = x.reshape(-1, x.shape[-1])
            a = dynamic_quantize(rows)[np.linspace(0, len(rows) - 1, min(per_call, len(rows))).astype(int)]
            c, t = pair_sums_clipped(a, w)
            clipped, total = clipped + c, total + t
    return clipped / total


def _activation(tensors: dict, name: str, k: int) -> np.ndarray:
    if name in tensors:
        return tensors[name]
    if "act_out" in tensors and "up" in tensors and tensors["up"].shape[-1] == k:
        return tensors["act_out"] * tensors["up"]  # the SwiGLU product feeding the down projection
    raise KeyError(f"no tapped tensor for the quantized input '{name}' (width {k})")
