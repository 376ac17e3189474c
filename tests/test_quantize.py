"""Every recipe on tiny shapes: SQNR against fp32 within measured bounds, artifacts, manifests, errors."""

import json

import numpy as np
import onnx
import pytest
import torch

from ffnbench.bench.cells.runnables import runnable_for
from ffnbench.bench.machine.isa import u8s8_saturates
from ffnbench.bench.traffic.scenarios import scenario
from ffnbench.errors import UsageError
from ffnbench.files import sha256_file
from ffnbench.models import build_model, preset
from ffnbench.quant import RECIPES, Calibration, needs_calibration, quantize

# Lower bounds on SQNR (dB) of the FFN output (no residual) vs fp32, on clean seed-0 inputs,
# calibration on clean seed-1 data. Measured on this project's dev machine (AMD EPYC, AVX-512 VNNI,
# onnxruntime 1.31.1, bitsandbytes 0.50.2), lower of A and B, minus about 2 dB of margin:
#   int8 dynamic 35.8/29.3, qdq minmax 30.7/26.1, percentile 30.7/26.2, entropy 29.8/23.7,
#   bnb-int8 36.4/34.1, outlier 36.4/34.3; int4 rtn 18.2/16.6, hqq 19.9/17.4, nf4 17.5/16.0,
#   fp4 15.3/13.5 (ORT and bitsandbytes alike); fp16 62.3/60.4, bf16 44.2/41.9 (norm in half precision).
MIN_SQNR_DB = {
    "fp32": 100, "ort-int8-dynamic": 25, "ort-int8-dynamic-fullrange": 25,
    "ort-int8-qdq-minmax": 24, "ort-int8-qdq-percentile": 24, "ort-int8-qdq-entropy": 21,
    "ort-int4-rtn": 14, "ort-int4-hqq": 15, "ort-nf4": 14, "ort-fp4": 11,
    "bnb-int8": 31, "bnb-int8-outlier": 31, "bnb-nf4": 14, "bnb-fp4": 11, "bnb-nf4-dq": 14,
    "torch-fp16": 55, "torch-bf16": 40,
}
# Where U8S8 saturates, full-range int8 loses its pair sums' top: measured on an AVX2 machine
# (no VNNI), fullrange 28.5/23.4 dB vs reduce_range 33.0/28.2 (A/B); bound with about 2 dB of margin.
SATURATED_FULLRANGE_MIN_SQNR_DB = 21
INT8 = [r for r in RECIPES if "int8" in r and r != "ort-int8-dynamic-fullrange"]
FOUR_BIT = [r for r in RECIPES if any(k in r for k in ("int4", "nf4", "fp4"))]
SATURATES = u8s8_saturates()


def sqnr_db(ref, y):
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - y) ** 2)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, seed_exports):
    """Per design: the fp32 block, its export with taps (the session's), eval inputs and their fp32 output."""
    root = tmp_path_factory.mktemp("quant")
    x = scenario("clean").generate(4, 16, 64, seed=0)
    calibration = Calibration("clean", scenario("clean").generate(16, 64, 64, seed=1))
    out = {}
    for design in ("A", "B"):
        block = build_model(preset("tiny", design, residual=False))
        exported = seed_exports.exports[design]
        assert json.loads((exported.parent / "manifest.json").read_text())["config"] == block.cfg.to_dict()
        ref = block(torch.from_numpy(x)).detach().numpy()
        out[design] = dict(block=block, onnx=exported, ref=ref, root=root / design)
    return out, x, calibration


@pytest.fixture(scope="module")
def measured(setup):
    """SQNR of every recipe for both designs, each quantized from the exported model.onnx."""
    designs, x, calibration = setup
    table = {}
    for design, d in designs.items():
        for recipe in RECIPES:
            artifact = quantize(d["onnx"], recipe, d["root"] / recipe, calibration=calibration)
            table[design, recipe] = (sqnr_db(d["ref"], runnable_for(artifact).run(x)), artifact)
    return table


@pytest.mark.parametrize("design", ["A", "B"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_sqnr_bound(measured, design, recipe):
    sqnr, _ = measured[design, recipe]
    bound = SATURATED_FULLRANGE_MIN_SQNR_DB if recipe == "ort-int8-dynamic-fullrange" and SATURATES \
        else MIN_SQNR_DB[recipe]
    assert sqnr >= bound, f"{recipe} on {design}: {sqnr:.1f} dB"
    if recipe in FOUR_BIT:
        assert sqnr < 25, f"{recipe} is not behaving like a 4-bit format ({sqnr:.1f} dB)"
    elif recipe in INT8:
        assert sqnr < 45, f"{recipe} is not behaving like int8 ({sqnr:.1f} dB)"


@pytest.mark.parametrize("design", ["A", "B"])
def test_int8_recipes_are_clearly_above_4bit(measured, design):
    worst_int8 = min(measured[design, r][0] for r in INT8)
    best_4bit = max(measured[design, r][0] for r in FOUR_BIT)
    assert worst_int8 >= best_4bit + 4, (worst_int8, best_4bit)


def test_ort_and_bnb_4bit_formats_match_in_accuracy(measured):
    for design in ("A", "B"):
        for fmt in ("nf4", "fp4"):
            assert measured[design, f"ort-{fmt}"][0] == pytest.approx(measured[design, f"bnb-{fmt}"][0], abs=0.5)


def test_fullrange_int8_loses_exactly_where_u8s8_saturates(measured):
    """Where the probe saturates (x86 without VNNI), full-range int8 clips its int16 pair sums and
    falls clearly below reduce_range; where it is exact, full range is at least as good."""
    for design in ("A", "B"):
        full, reduced = measured[design, "ort-int8-dynamic-fullrange"][0], measured[design, "ort-int8-dynamic"][0]
        if SATURATES:
            assert full <= reduced - 3, (design, full, reduced)
        else:
            assert full >= reduced - 0.5, (design, full, reduced)


def test_manifest_records_size_ops_params_and_calibration(measured, setup):
    designs, _, calibration = setup
    _, artifact = measured["B", "ort-int8-qdq-entropy"]
    manifest = json.loads((artifact.path.parent / "manifest.json").read_text())
    assert manifest["bytes"] == artifact.path.stat().st_size
    assert manifest["sha256"] == sha256_file(artifact.path)
    assert manifest["ops"]["QuantizeLinear"] > 0 and "MatMul" in manifest["ops"]
    assert manifest["params"]["method"] == "entropy"
    # ORT counts bins across both signs: 256 quantized bins are int8's 128 levels a side.
    assert manifest["params"]["histogram"] == {"num_bins": 2048, "num_quantized_bins": 256}
    assert manifest["params"]["reduce_range"] is SATURATES
    assert manifest["params"]["reduce_range_from"] == f"measured U8S8 probe (saturates: {SATURATES})"
    assert manifest["calibration"] == calibration.describe()
    assert manifest["source_model"]["sha256"] == sha256_file(designs["B"]["onnx"])


def test_int4_accuracy_level_is_recorded_on_every_node(measured, setup):
    designs, _, _ = setup
    for recipe in ("ort-int4-rtn", "ort-int4-hqq"):
        _, artifact = measured["A", recipe]
        levels = {a.i for n in onnx.load(str(artifact.path)).graph.node if n.op_type == "MatMulNBits"
                  for a in n.attribute if a.name == "accuracy_level"}
        assert levels == {4} and artifact.manifest["params"]["accuracy_level"] == 4
    level0 = quantize(designs["A"]["onnx"], "ort-int4-rtn", designs["A"]["root"] / "rtn0", accuracy_level=0)
    assert level0.manifest["params"]["accuracy_level"] == 0


def test_quantized_ort_models_keep_their_taps(measured, setup):
    designs, x, _ = setup
    _, artifact = measured["B", "ort-int8-dynamic"]
    taps = runnable_for(artifact).taps(x)
    assert set(taps) == {"norm_out", "act_in", "act_out", "up"}
    assert taps["act_in"].shape == (4, 16, designs["B"]["block"].cfg.hidden)


def test_bnb_artifacts_record_what_bitsandbytes_computes_in(measured):
    _, int8 = measured["A", "bnb-int8-outlier"]
    _, nf4 = measured["A", "bnb-nf4-dq"]
    assert int8.manifest["params"]["threshold"] == 6.0 and int8.manifest["params"]["activation_dtype"] == "float16"
    assert nf4.manifest["params"]["double_quant"] is True and nf4.manifest["params"]["blocksize"] == 64
    assert nf4.manifest["bytes"] < measured["A", "torch-fp16"][1].manifest["bytes"]


@pytest.mark.parametrize("design", ["A", "B"])
def test_outlier_threshold_rescues_int8_from_outlier_features(setup, design):
    """LLM.int8: outlier features reach the norm output above 6, stay in fp16, and SQNR recovers
    (measured: A 33.7 -> 35.3 dB, B 31.1 -> 33.4 dB on the `outliers` scenario)."""
    designs, _, _ = setup
    block = designs[design]["block"]
    x = scenario("outliers").generate(4, 16, 64, seed=0)
    ref = block(torch.from_numpy(x)).detach().numpy()
    results = {}
    for recipe in ("bnb-int8", "bnb-int8-outlier"):
        artifact = quantize(block, recipe, designs[design]["root"] / f"outliers-{recipe}")
        runnable = runnable_for(artifact)
        results[recipe] = sqnr_db(ref, runnable.run(x))
    assert np.abs(runnable.taps(x)["norm_out"]).max() > 6.0
    assert results["bnb-int8-outlier"] >= results["bnb-int8"] + 1.0, results


def test_calibration_is_checked(setup, tmp_path):
    designs, _, _ = setup
    onnx_path = designs["A"]["onnx"]
    with pytest.raises(UsageError, match="needs calibration data"):
        quantize(onnx_path, "ort-int8-qdq-minmax", tmp_path / "a")
    wide = Calibration("clean", np.zeros((2, 4, 65), np.float32))
    with pytest.raises(UsageError, match="width 65 does not match the model's d_model 64"):
        quantize(onnx_path, "ort-int8-qdq-minmax", tmp_path / "b", calibration=wide)
    bad = np.zeros((2, 4, 64), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(UsageError, match="1 NaN/Inf values"):
        quantize(onnx_path, "ort-int8-qdq-minmax", tmp_path / "c", calibration=Calibration("clean", bad))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("manifest", [None, "without ops"])
def test_a_model_without_matmul_is_refused(tmp_path, manifest):
    """Checked from the file where its manifest does not list the ops (none, or one edited by hand)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["hidden"], ["output"])], "g",
        [onnx.helper.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [None, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10), path)
    if manifest:
        (tmp_path / "manifest.json").write_text(json.dumps({"kind": "ffnbench.export", "bytes": path.stat().st_size}))
    with pytest.raises(UsageError, match="has no MatMul to quantize"):
        quantize(path, "ort-int8-dynamic", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("recipe", "params", "needed"), [
    ("ort-int8-dynamic", {}, False), ("ort-int8-qdq-minmax", {}, True), ("ort-int8-dynamic+rotate", {}, True),
    ("bnb-int8+keep", {"spike_threshold": 4.0}, True), ("ort-int4-rtn", {"accuracy_level": 4}, False)])
def test_which_recipes_need_calibration_data(recipe, params, needed):
    assert needs_calibration(recipe, params) is needed


def test_a_recipe_that_cannot_be_quantized_is_refused_before_calibrating():
    with pytest.raises(UsageError, match="unknown mitigation"):
        needs_calibration("ort-int8-dynamic+twist", {})
