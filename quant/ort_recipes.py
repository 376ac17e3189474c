"""ONNX Runtime recipes: graph rewrites from an fp32 model.onnx to a quantized one, file to file."""

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    HQQWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

from ffnbench.quant.recipes import OrtBnb4, OrtDynamicInt8, OrtInt4, OrtStaticQdq

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
BNB4_TYPES = {"nf4": MatMulBnb4Quantizer.NF4, "fp4": MatMulBnb4Quantizer.FP4}


@contextlib.contextmanager
def _quiet():
    """ORT's quantizers log a line per node, and advise pre-processing for CNNs; keep errors."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def dynamic_int8(src: Path, dst: Path, cfg: OrtDynamicInt8, nodes: list[str] | None = None) -> None:
    """`nodes`: the MatMuls to quantize (None: every one). MatMul only either way: ORT's default
    list would rewrite a whole model's opset-23 Attention into a QAttention that does not load."""
    with _quiet():
        quantize_dynamic(src, dst, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         extra_options={"MatMulConstBOnly": True})


def histogram_options(cfg: OrtStaticQdq) -> dict:
    """Calibrator settings, recorded in the manifest.

    quantize_static does not pass histogram sizes through, and ORT's entropy default (128 bins
    into 128 quantized bins) leaves KL nothing to choose, which reproduces min-max exactly. ORT
    histograms signed x over [-T, T] and counts bins across both sides (TensorRT, where the method
    comes from, histograms |x|), so int8's 128 levels a side are 256 quantized bins here; 2048/128
    searched a 7-bit quantizer. 2048 bins (1024 a side) rather than TensorRT's 2048 a side: 4096/256
    measured within 0.3 dB of it at twice the calibration time (README, "Entropy calibration").
    """
    if cfg.method == "entropy":
        return {"num_bins": 2048, "num_quantized_bins": 256}
    if cfg.method == "percentile":
        return {"num_bins": 2048, "percentile": cfg.percentile, "symmetric": True}
    return {}


def static_qdq(src: Path, dst: Path, cfg: OrtStaticQdq, reader: CalibrationDataReader,
               nodes: list[str] | None = None) -> None:
    """Calibrate on what `reader` feeds, then quantize `nodes` (None: every node of cfg.op_types)."""
    method = CALIBRATION_METHODS[cfg.method]
    # The histogram calibrators print their progress; the manifest records what they were given.
    with _quiet(), contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as tmp:
        op_types = [op.strip() for op in cfg.op_types.split(",") if op.strip()]
        calibrator = create_calibrator(src, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method, extra_options=histogram_options(cfg))
        calibrator.collect_data(reader)
        if nodes and hasattr(calibrator, "collector"):
            _histograms_only_for(calibrator, _node_tensors(src, nodes))
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibrator.compute_data(), ranges)
        quantize_static(src, dst, None, calibration_cache_path=ranges, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types, nodes_to_quantize=nodes,
                        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, extra_options={"MatMulConstBOnly": True})


def _node_tensors(src: Path, nodes: list[str]) -> set[str]:
    """The activations (inputs and outputs, initializers aside) of the named nodes."""
    model = onnx.load(str(src), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    chosen = [n for n in model.graph.node if n.name in set(nodes)]
    return {t for n in chosen for t in (*n.input, *n.output) if t and t not in weights}


def _histograms_only_for(calibrator, tensors: set[str]) -> None:
    """Drop the histograms of tensors no quantized node uses before the per-tensor threshold search.

    ORT calibrates every node of the op types (a whole model's attention and head too), and its
    entropy search costs about 1.4 s a tensor: a whole LM took 59.5 s, its FFN tensors alone 27.5 s,
    with an identical quantized model (same sha256; measured on the trained B)."""
    histograms = calibrator.collector.histogram_dict
    calibrator.collector.histogram_dict = {k: v for k, v in histograms.items() if k in tensors}


def other_matmuls(model: onnx.ModelProto, nodes: list[str] | None) -> list[str]:
    """The MatMuls not among `nodes` (none where `nodes` is None: every MatMul quantizes), for the
    quantizers that exclude nodes rather than restrict to them."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes] if nodes else []


def int4(src: Path, dst: Path, cfg: OrtInt4, nodes: list[str] | None = None) -> None:
    """`nodes`: the MatMuls to quantize (None: every one). MatMulNBitsQuantizer's nodes_to_include
    adds nodes to those it quantizes anyway (every MatMul with a constant weight), so the others
    are excluded instead."""
    source = onnx.load(str(src))
    others = other_matmuls(source, nodes)
    if cfg.algorithm == "hqq":
        algo = HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=4)
    else:
        algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                            accuracy_level=cfg.accuracy_level)
    # HQQ hands torch a read-only numpy view, which torch warns about once; the data is only read.
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantizer = MatMulNBitsQuantizer(source, algo_config=algo, nodes_to_exclude=others)
        quantizer.process()
    model = quantizer.model.model
    # HQQ's config has no accuracy_level; set it on every node so both algorithms honour the recipe.
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            _set_int_attribute(node, "accuracy_level", cfg.accuracy_level)
    if cfg.algorithm == "hqq" and cfg.zero_points == "uint8":
        originals = {i.name: i for i in onnx.load(str(src)).graph.initializer}
        uint8_zero_points(model, originals)
    onnx.save(model, str(dst))


def quantized_matmuls(source: onnx.ModelProto, quantized: onnx.ModelProto) -> list[str]:
    """The source's weight-bearing MatMuls that the quantized graph no longer runs in fp32, read
    from the graph: each quantizer either replaces the node (MatMulInteger, MatMulNBits, MatMulBnb4,
    under new names) or feeds its weight through DequantizeLinear (QDQ); one left alone keeps its
    name and its float initializer."""
    def fp32_matmuls(model: onnx.ModelProto) -> set[str]:
        weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        return {n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1
                and n.input[1] in weights}

    candidates, kept = fp32_matmuls(source), fp32_matmuls(quantized)
    return [n.name for n in source.graph.node if n.name in candidates and n.name not in kept]


def uint8_zero_points(model: onnx.ModelProto, originals: dict[str, onnx.TensorProto]) -> int:
    """Give every MatMulNBits with float zero points (ORT's HQQ output) uint8 ones, in place: each
    zero point rounded to 0..15 and the block's weights requantized from the fp32 `originals`
    (initializers by name, as the quantizer's `NAME_Q4` came from `NAME`) with the block's scale.
    Returns how many nodes changed. Layout (MatMulNBits spec): B (N, blocks, block/2) two weights a
    byte, low nibble first; zero points (N, ceil(blocks/2)), even block in the low nibble."""
    inits = {i.name: i for i in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 4 or node.input[3] not in inits:
            continue
        zp_init = inits[node.input[3]]
        if zp_init.data_type != onnx.TensorProto.FLOAT:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("bits", 4) != 4:
            continue
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        blocks = -(-k // block)
        weight = numpy_helper.to_array(originals[node.input[1].removesuffix("_Q4")]).astype(np.float32)  # (K, N)
        scale = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks).astype(np.float32)
        zero = np.clip(np.round(numpy_helper.to_array(zp_init).reshape(n, blocks)), 0, 15)
        padded = np.zeros((n, blocks * block), np.float32)
        padded[:, :k] = weight.T
        grid = padded.reshape(n, blocks, block)
        q = np.clip(np.round(grid / scale[..., None] + zero[..., None]), 0, 15).astype(np.uint8)
        packed_b = q[..., 0::2] | (q[..., 1::2] << 4)
        zp = np.zeros((n, 2 * -(-blocks // 2)), np.uint8)
        zp[:, :blocks] = zero.astype(np.uint8)
        packed_zp = zp[:, 0::2] | (zp[:, 1::2] << 4)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(packed_b, node.input[1]))
        zp_init.CopyFrom(numpy_helper.from_array(packed_zp, node.input[3]))
        changed += 1
    return changed


def bnb4(src: Path, dst: Path, cfg: OrtBnb4, nodes: list[str] | None = None) -> None:
    model = onnx.load(str(src))
    others = other_matmuls(model, nodes)
    with _quiet():
        quantizer = MatMulBnb4Quantizer(model, BNB4_TYPES[cfg.quant_type], cfg.block_size, nodes_to_exclude=others)
        quantizer.process()
    onnx.save(quantizer.model.model, str(dst))


def _set_int_attribute(node: onnx.NodeProto, name: str, value: int) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))
