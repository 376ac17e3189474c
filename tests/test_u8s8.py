"""u8s8_saturation_rate: ORT's activation quantization reproduced exactly, pair sums clipped where the
int16 range ends, and reduce_range provably never clipping, on any machine class."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ffnbench.bench import RunConfig, run
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.cells.runnables import OrtRunnable
from ffnbench.bench.machine import u8s8
from ffnbench.bench.machine.isa import u8s8_saturates
from ffnbench.bench.report import report
from ffnbench.bench.traffic.scenarios import NAMED
from ffnbench.quant import Calibration, load_artifact, quantize


def test_activations_quantize_as_onnx_runtime_does(tmp_path):
    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [None, None]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("z", TensorProto.UINT8, [])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), tmp_path / "q.onnx")
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    for shift in (0.0, 3.0, -2.0):
        x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32) + shift
        assert np.array_equal(u8s8.dynamic_quantize(x), session.run(["y"], {"x": x})[0].astype(np.int32))


def test_pair_sums_clip_outside_int16():
    a = np.full((3, 5), 255)  # odd K: the kernel pads a zero
    assert u8s8.pair_sums_clipped(a, np.full((5, 4), 127, np.int8)) == (3 * 2 * 4, 3 * 3 * 4)
    assert u8s8.pair_sums_clipped(a, np.full((5, 4), 64, np.int8)) == (0, 3 * 3 * 4)  # 2·255·64 = 32640
    assert u8s8.pair_sums_clipped(a, np.full((5, 4), -128, np.int8))[0] == 3 * 2 * 4


def test_reduce_range_never_clips_and_full_range_can(seed_exports, tmp_path):
    """A property of the tensors, the same on every machine class: 7-bit weights keep every pair
    sum inside int16; 8-bit weights under a large shift do not."""
    x = NAMED["shift-8"].generate(4, 16, 64, seed=0)
    rates = {}
    for reduce_range in (True, False):
        artifact = quantize(seed_exports.exports["A"], "ort-int8-dynamic", tmp_path / str(reduce_range),
                            reduce_range=reduce_range)
        runnable = OrtRunnable(artifact.path)
        calls = [runnable.taps(x[i:i + 1]) for i in range(len(x))]
        rates[reduce_range] = u8s8.saturation_rate(artifact.path, calls)
    assert rates[True] == 0.0 and 0 < rates[False] < 0.05, rates
    assert u8s8.saturation_rate(seed_exports.exports["A"], []) is None  # fp32: no MatMulInteger


@pytest.mark.parametrize("k", [8, 9, 64])
def test_the_rate_counts_every_pair_once(k):
    """Against every pair summed by einsum. Weights of small reach in some K rows and activations
    high in half the rows make rows where few pairs can clip (those pairs are gathered) beside rows
    where most can (the whole row is summed)."""
    a = np.random.default_rng(1).integers(0, 256, (40, k))
    a[:20] = np.random.default_rng(3).integers(160, 256, (20, k))
    w = np.random.default_rng(2).integers(-128, 128, (k, 16)).astype(np.int8)
    w[::3] //= 4
    clipped, total = u8s8.pair_sums_clipped(a, w)
    padded_a, padded_w = np.pad(a, ((0, 0), (0, k % 2))), np.pad(w.astype(int), ((0, k % 2), (0, 0)))
    pairs = np.einsum("tk,kn->tkn", padded_a, padded_w).reshape(40, -1, 2, 16).sum(axis=2)
    assert clipped > 0
    assert total == pairs.size and clipped == int(np.count_nonzero((pairs > 32767) | (pairs < -32768)))


def test_runs_record_the_rate_and_the_report_states_what_it_costs(seed_exports, tmp_path):
    """The rate a run records for a cell is the rate of that cell's own tensors: recomputed here from
    its artifact and its requests, one call each as the run makes them. Under shift-8 full-range
    weights clip (B: RMSNorm keeps the shift, so activations sit high in uint8); reduce_range never does."""
    config = RunConfig(models=["tiny"], designs=["B"], scenarios=["clean", "shift-8"], n_requests=2, seq_len=8,
                       recipes=["fp32", "ort-int8-dynamic", "ort-int8-dynamic-fullrange"],
                       latency=LatencyConfig(enabled=False))
    records = run(config, seed_exports(tmp_path / "run"), progress=False)
    cells = {(c["recipe"], c["scenario"]): c for c in records}
    assert cells[("fp32", "clean")]["metrics"]["u8s8_saturation_rate"] is None
    full_cell = cells[("ort-int8-dynamic-fullrange", "shift-8")]
    full = full_cell["metrics"]["u8s8_saturation_rate"]
    artifact = load_artifact(tmp_path / "run" / full_cell["artifact"]["dir"])
    x = config.scenario("shift-8").generate(config.n_requests, config.seq_len, 64, seed=config.seed)
    runnable = OrtRunnable(artifact.path)
    assert 0 < full < 0.05
    assert full == u8s8.saturation_rate(artifact.path, [runnable.taps(x[i:i + 1]) for i in range(len(x))])
    if cells[("ort-int8-dynamic", "shift-8")]["artifact"]["params"]["reduce_range"]:
        assert cells[("ort-int8-dynamic", "shift-8")]["metrics"]["u8s8_saturation_rate"] == 0.0
    text = report.write(tmp_path / "run").read_text()
    assert f"ISA, model `tiny`, design B: centered SQNR of `ort-int8-dynamic` (reduce_range {u8s8_saturates()})" in text
    assert f"({full:.3%} of pair sums out of int16)" in text


def test_qdq_models_count_with_their_calibrated_scales(seed_exports, tmp_path):
    """QDQ: the activation's uint8 scale is the calibration's; reduce_range again provably never clips."""
    x = NAMED["shift-8"].generate(4, 16, 64, seed=0)
    calibration = Calibration("shift-8", NAMED["shift-8"].generate(4, 16, 64, seed=1))
    rates = {}
    for reduce_range in (True, False):
        artifact = quantize(seed_exports.exports["B"], "ort-int8-qdq-minmax", tmp_path / str(reduce_range),
                            calibration=calibration, reduce_range=reduce_range)
        runnable = OrtRunnable(artifact.path)
        rates[reduce_range] = u8s8.saturation_rate(artifact.path, [runnable.taps(x[i:i + 1]) for i in range(4)])
    assert rates[True] == 0.0 and 0 < rates[False] < 0.05, rates
