"""Kernel paths: real ONNX Runtime and torch profiles of tiny artifacts, the attributes that pick a
kernel, and the uint8 zero-point rewrite checked against the MatMulNBits layout."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from ffnbench.bench.cells.ort_runnable import OrtRunnable
from ffnbench.bench.cells.runnables import runnable_for
from ffnbench.bench.machine import kernel_paths
from ffnbench.bench.machine.isa import cpu_info, int8_kernels
from ffnbench.export import export_onnx
from ffnbench.models import FFNConfig, build_model, preset
from ffnbench.quant import quantize
from ffnbench.quant.bnb_recipes import import_bnb
from ffnbench.quant.ort_recipes import uint8_zero_points

X = np.random.default_rng(0).standard_normal((1, 1, 64), np.float32)


@pytest.fixture(scope="module")
def int4(tmp_path_factory, seed_exports):
    tmp = tmp_path_factory.mktemp("kernels")
    return {name: quantize(seed_exports.exports["B"], name, tmp / name).path
            for name in ("ort-int4-rtn", "ort-int4-hqq")}


def test_groups_of_one_width_spread_past_the_threshold_are_found():
    decode = {"a": {"design": "A", "bits": 4, "p50_ms": 1.0}, "b": {"design": "A", "bits": 4, "p50_ms": 3.5},
              "c": {"design": "B", "bits": 4, "p50_ms": 1.0}, "d": {"design": "B", "bits": 4, "p50_ms": 2.9},
              "e": {"design": "A", "bits": 8, "p50_ms": 9.0}}
    assert kernel_paths.spread_groups(decode) == [["a", "b"]]


def test_hqq_float_zero_points_are_named_and_their_weights_are_not_prepacked(int4):
    hqq = kernel_paths.diagnose(OrtRunnable(int4["ort-int4-hqq"]), X)
    rtn = kernel_paths.diagnose(OrtRunnable(int4["ort-int4-rtn"]), X)
    assert hqq["status"] == rtn["status"] == "ok"
    assert {a["zero_points"] for a in hqq["attributes"]} == {"float32"}
    assert {a["zero_points"] for a in rtn["attributes"]} == {"none (symmetric)"}
    assert {a["block_size"] for a in hqq["attributes"]} == {32} and kernel_paths.float_zero_points(hqq)
    prepacked = {name: {n["weights_prepacked"] for n in d["profile"]["nodes"] if n["op"] == "MatMulNBits"}
                 for name, d in (("hqq", hqq), ("rtn", rtn))}
    assert prepacked == {"hqq": {False}, "rtn": {True}}
    assert hqq["profile"]["ops"][0]["op"] == "MatMulNBits" and "cannot prepack" in kernel_paths.explain(hqq)


def test_an_artifact_without_float_zero_points_has_no_uint8_variant(int4, seed_exports, tmp_path):
    with pytest.raises(ValueError, match="no MatMulNBits node with float zero points"):
        kernel_paths.uint8_variant(int4["ort-int4-rtn"], seed_exports.exports["B"], tmp_path / "variant.onnx")
    assert not (tmp_path / "variant.onnx").exists()


def test_an_unreadable_profile_is_a_skipped_diagnosis(int4, tmp_path, monkeypatch):
    empty = tmp_path / "profile.json"
    empty.write_text("")
    monkeypatch.setattr(ort.InferenceSession, "end_profiling", lambda self: str(empty))
    found = kernel_paths.diagnose(OrtRunnable(int4["ort-int4-rtn"]), X)
    assert found["status"] == "skipped" and "no readable profile" in found["reason"]
    assert kernel_paths.explain(found).startswith("not diagnosed:")


def test_a_profile_without_node_events_is_unusable():
    with pytest.raises(kernel_paths.Unusable, match="no node kernel events"):
        kernel_paths.summarize_ort([{"cat": "Session", "name": "model_run", "dur": 5}], onnx.ModelProto())


def test_bitsandbytes_4bit_path_is_profiled_by_operator(tmp_path):
    """Which kernel runs depends on the CPU: the fused bf16 one needs AVX512-BF16 (bitsandbytes' own
    test of the CPU), elsewhere the weight is dequantized every call."""
    artifact = quantize(build_model(preset("tiny", "B")), "bnb-nf4", tmp_path / "nf4")
    found = kernel_paths.diagnose(runnable_for(artifact, threads=1), X) | {"shape": "prefill"}
    names = {o["op"] for o in found["profile"]["ops"]}
    if import_bnb().functional.has_avx512bf16():
        assert "bitsandbytes::gemv_4bit" in names and "bitsandbytes::dequantize_4bit" not in names, names
        assert "32×32 tiles with AVX512-BF16 dot products" in kernel_paths.explain(found)
    else:
        assert "bitsandbytes::dequantize_4bit" in names and "bitsandbytes::gemv_4bit" not in names, names
        assert "dequantizes the 4-bit weight every call" in kernel_paths.explain(found)


@pytest.mark.parametrize(("ratio", "diagnosed"), [
    ({"ratio": 0.5, "ci_low": 0.45, "ci_high": 0.55}, False),
    ({"ratio": 0.97, "ci_low": 0.9, "ci_high": 1.02}, True),
    ({"ratio": 1.3, "ci_low": 1.2, "ci_high": 1.4}, True),
    ({"ratio": 0.99, "ci_low": None, "ci_high": None}, False),
    ({"ratio": 1.0, "ci_low": None, "ci_high": None}, True),
])
def test_a_prefill_ratio_is_diagnosed_unless_shown_below_one(ratio, diagnosed):
    assert kernel_paths.not_shown_faster(ratio) is diagnosed


def test_the_accuracy_level_variant_changes_the_compute_type_and_nothing_else(int4, seed_exports, tmp_path):
    original = onnx.load(str(int4["ort-int4-rtn"]))
    variant = onnx.load(str(kernel_paths.accuracy_level_variant(int4["ort-int4-rtn"], tmp_path / "v.onnx", 0)))
    levels = {n.name: {a.name: a.i for a in n.attribute}["accuracy_level"] for n in variant.graph.node
              if n.op_type == "MatMulNBits"}
    assert len(levels) == 3 and set(levels.values()) == {0}
    assert [i.SerializeToString() for i in variant.graph.initializer] == \
        [i.SerializeToString() for i in original.graph.initializer]
    found = {name: kernel_paths.diagnose(OrtRunnable(path), X) | {"shape": "prefill"}
             for name, path in (("4", int4["ort-int4-rtn"]), ("0", tmp_path / "v.onnx"))}
    assert {name: kernel_paths.accuracy_level(d) for name, d in found.items()} == {"4": 4, "0": 0}
    simd = int8_kernels(cpu_info()["isa"])["matmulnbits"]
    said = kernel_paths.explain(found["4"])
    assert (f"then MLAS's {simd} int8 kernel, a scale per 32-weight block" in said) if simd \
        else "not an x86 CPU" in said
    assert "fp32 compute, each strip of the 4-bit weight dequantized" in kernel_paths.explain(found["0"])
    # Level 4 quantizes activations to int8 where MLAS has the kernel, level 0 computes in fp32:
    # close, not equal; without the kernel both compute in fp32.
    ys = [OrtRunnable(p).run(np.tile(X, (1, 8, 1))) for p in (int4["ort-int4-rtn"], tmp_path / "v.onnx")]
    if simd:
        assert 20 < 10 * np.log10(np.sum(ys[1] ** 2) / np.sum((ys[0] - ys[1]) ** 2)) < 200
    else:
        np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="has no MatMulNBits node"):
        kernel_paths.accuracy_level_variant(seed_exports.exports["B"], tmp_path / "none.onnx", 0)
    assert not (tmp_path / "none.onnx").exists()


def test_uint8_zero_points_follow_the_matmulnbits_layout_with_an_odd_block_count(tmp_path):
    """K = 96 is three blocks of 32: the zero points' last byte holds one nibble. ORT at accuracy
    level 0 must equal (q - zp) * scale applied by hand."""
    block = build_model(FFNConfig(design="A", d_model=96, d_ff=128, residual=False))
    fp32 = export_onnx(block, tmp_path / "fp32").path
    hqq = quantize(fp32, "ort-int4-hqq", tmp_path / "hqq", accuracy_level=0)
    model = onnx.load(str(hqq.path))
    originals = {i.name: i for i in onnx.load(str(fp32)).graph.initializer}
    assert uint8_zero_points(model, originals) == 2
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    up = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and dict(
        (a.name, a.i) for a in n.attribute)["K"] == 96)
    q_packed, scales, zp_packed = (inits[up.input[i]] for i in (1, 2, 3))
    n = q_packed.shape[0]
    assert zp_packed.dtype == np.uint8 and zp_packed.shape == (n, 2)
    q = np.stack([q_packed & 15, q_packed >> 4], -1).reshape(n, 3, 32).astype(np.float32)
    zp = np.stack([zp_packed & 15, zp_packed >> 4], -1).reshape(n, 4)[:, :3].astype(np.float32)
    weight = ((q - zp[..., None]) * scales.reshape(n, 3)[..., None]).reshape(n, 96).T  # (K, N)
    original = numpy_helper.to_array(originals[up.input[1].removesuffix("_Q4")])
    assert np.abs(weight - original).max() <= scales.max() / 2 + 1e-6  # requantized within half a step
    single = onnx.helper.make_model(
        onnx.helper.make_graph([up], "up", [onnx.helper.make_tensor_value_info(up.input[0], 1, [1, 96])],
                               [onnx.helper.make_tensor_value_info(up.output[0], 1, [1, n])],
                               [numpy_helper.from_array(inits[i], i) for i in up.input[1:4]]),
        opset_imports=[onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    x = np.random.default_rng(1).standard_normal((1, 96), np.float32)
    y = ort.InferenceSession(single.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {up.input[0]: x})
    np.testing.assert_allclose(y[0], x @ weight, rtol=1e-4, atol=1e-4)
    # The record's attributes, through JSON as a run stores them: every MatMulNBits now uint8.
    recorded = json.loads(json.dumps(kernel_paths.attributes(model)))
    assert [(a["op"], a["bits"], a["block_size"], a["zero_points"]) for a in recorded] == \
        [("MatMulNBits", 4, 32, "uint8")] * 2
