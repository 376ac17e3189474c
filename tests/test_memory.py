"""Memory per runnable, each in a child process of its own: resident_mb tracks the artifact, not the benchmark."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffnbench.bench.cells import memory
from ffnbench.models import build_model, preset
from ffnbench.quant import quantize


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One MatMul with an 8 MB fp32 weight (1024 x 2048), as a file, and quantized to 4 bits."""
    tmp = tmp_path_factory.mktemp("memory")
    weight = np.random.default_rng(0).standard_normal((1024, 2048), np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 2048])],
                              [numpy_helper.from_array(weight, "w")])
    fp32 = tmp / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), fp32)
    int4 = quantize(fp32, "ort-int4-rtn", tmp / "int4")
    return {"fp32": fp32, "int4": int4.path}, {"fp32": fp32.stat().st_size, "int4": int4.manifest["bytes"]}


def _inputs():
    rng = np.random.default_rng(0)
    return {"decode": rng.standard_normal((1, 1, 1024), np.float32),
            "prefill": rng.standard_normal((4, 64, 1024), np.float32)}


def test_resident_memory_tracks_the_artifact_and_the_call_peak_tracks_the_shape(artifacts):
    paths, sizes = artifacts
    requests = {name: {"kind": "onnx", "path": str(path), "threads": 1, "spinning": False, "inputs": "x"}
                for name, path in paths.items()}
    out = memory.measure(requests, {"x": _inputs()})
    fp32, int4 = out["fp32"], out["int4"]
    assert "error" not in fp32 and "error" not in int4, out
    # The ORT runtime's own start-up (about 37 MB) is primed before the baseline: what is left is the weights.
    assert 0.8 * sizes["fp32"] / 1e6 <= fp32["resident_mb"] <= 2 * sizes["fp32"] / 1e6 + 2
    assert int4["resident_mb"] < fp32["resident_mb"] / 2  # the 4-bit saving shows in this number
    assert fp32["peak_call_mb"]["prefill"] > fp32["peak_call_mb"]["decode"] + 1  # 256 tokens x 2048 wide, fp32


def test_forked_and_fresh_children_measure_alike(artifacts):
    """The forked children against new interpreters, the way they replaced: the same resident memory."""
    paths, _ = artifacts
    requests = {name: {"kind": "onnx", "path": str(path), "threads": 1, "spinning": False, "inputs": "x"}
                for name, path in paths.items()}
    forked, fresh = (memory.measure(requests, {"x": _inputs()}, fresh=f) for f in (False, True))
    assert {r["probe"] for r in forked.values()} == {"forked"} and {r["probe"] for r in fresh.values()} == {"fresh"}
    for name in paths:
        assert abs(forked[name]["resident_mb"] - fresh[name]["resident_mb"]) < 0.5, (forked, fresh)


def test_a_child_that_fails_is_a_reason_not_a_crash(tmp_path):
    out = memory.measure({"broken": {"kind": "onnx", "path": str(tmp_path / "missing.onnx"), "threads": 1,
                                     "spinning": False, "inputs": "x"}}, {"x": _inputs()})
    assert out["broken"]["error"].startswith("the memory probe failed") and "missing.onnx" in out["broken"]["error"]


def test_without_a_resettable_high_water_mark_every_runnable_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CLEAR_REFS", tmp_path / "absent" / "clear_refs")
    out = memory.measure({"a": {"kind": "onnx", "path": "x.onnx", "threads": 1, "spinning": False, "inputs": "x"}},
                         {"x": _inputs()})
    assert "clear_refs is missing" in out["a"]["error"]


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """A bitsandbytes (LLM.int8) and a torch (fp16) artifact of design A at d_model 1024, d_ff 4096:
    8 MB of fp32 weights a Linear, so what they hold stands far above the probe's noise."""
    tmp = tmp_path_factory.mktemp("modules")
    block = build_model(preset("small", "A", d_model=1024, d_ff=4096))
    return {recipe: quantize(block, recipe, tmp / recipe) for recipe in ("bnb-int8", "torch-fp16")}


def test_a_bitsandbytes_and_a_torch_module_hold_their_weights_bytes_in_either_probe(modules):
    """resident_mb of a module runnable (the README's bitsandbytes and torch memory figures) lies within
    0.8x-1.5x (+2 MB) of its weights' bytes: LLM.int8 keeps 1 byte a weight (8.4 MB for the two
    Linears), torch-fp16 2 (16.8 MB); the forked and the fresh probe measure the same."""
    weights = 2 * 1024 * 4096
    expected_mb = {"bnb-int8": weights / 1e6, "torch-fp16": 2 * weights / 1e6}
    requests = {r: {"kind": "module", "artifact_dir": str(a.path.parent), "threads": 1, "spinning": False,
                    "inputs": "x"} for r, a in modules.items()}
    forked, fresh = (memory.measure(requests, {"x": _inputs()}, fresh=f) for f in (False, True))
    for recipe, mb in expected_mb.items():
        for probe in (forked, fresh):
            assert "error" not in probe[recipe], probe
            assert 0.8 * mb <= probe[recipe]["resident_mb"] <= 1.5 * mb + 2, (recipe, probe[recipe])
        assert abs(forked[recipe]["resident_mb"] - fresh[recipe]["resident_mb"]) < 1.0, (forked, fresh)
