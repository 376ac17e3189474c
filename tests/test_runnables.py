"""Runnables: torch, ORT and bitsandbytes behind run/taps/describe, agreeing on fp32."""

import numpy as np
import pytest

from ffnbench.bench.cells.runnables import OrtRunnable, TorchRunnable, runnable_for
from ffnbench.errors import UsageError
from ffnbench.export import export_onnx
from ffnbench.models import build_model, preset
from ffnbench.quant import quantize


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    root = tmp_path_factory.mktemp("runnables")
    block = build_model(preset("tiny", "B"))
    return block, quantize(block, "fp32", root / "fp32"), export_onnx(block, root / "plain")


def test_torch_and_ort_fp32_agree_on_output_and_taps(fp32):
    _, artifact, _ = fp32
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32) + 3.0
    torch_run, ort_run = runnable_for(artifact, prefer="torch"), runnable_for(artifact, prefer="ort")
    assert isinstance(torch_run, TorchRunnable) and isinstance(ort_run, OrtRunnable)
    np.testing.assert_allclose(ort_run.run(x), torch_run.run(x), atol=1e-4)
    t_taps, o_taps = torch_run.taps(x), ort_run.taps(x)
    assert set(t_taps) == set(o_taps) == {"norm_out", "act_in", "act_out", "up"}
    for name in t_taps:
        np.testing.assert_allclose(o_taps[name], t_taps[name], atol=1e-4)


@pytest.mark.parametrize("recipe", ["fp32", "ort-int8-dynamic", "torch-bf16"])
def test_one_pass_gives_what_run_and_taps_give_apart(fp32, recipe, tmp_path):
    """Accuracy cells take output and taps from one forward pass: the output has the same bits as run()'s."""
    block, artifact, _ = fp32
    artifact = artifact if recipe == "fp32" else quantize(block, recipe, tmp_path / recipe)
    x = np.random.default_rng(1).standard_normal((1, 7, 64)).astype(np.float32) + 2.0
    for runnable in {runnable_for(artifact, prefer=p).runtime: runnable_for(artifact, prefer=p)
                     for p in ("ort", "torch")}.values():
        y, taps = runnable.run_with_taps(x)
        np.testing.assert_array_equal(y, runnable.run(x))
        assert {"norm_out", "act_in", "act_out", "up"} <= set(taps)


def test_describe_records_threads_and_optimisation(fp32):
    _, artifact, _ = fp32
    d = OrtRunnable(artifact.path, threads=2, optimization="basic").describe()
    assert d["threads"] == 2 and d["graph_optimization"] == "basic" and d["provider"] == "CPUExecutionProvider"
    assert runnable_for(artifact, prefer="torch", threads=1).describe()["threads"] == 1


def test_ort_model_without_taps_says_how_to_get_them(fp32):
    _, _, plain = fp32
    with pytest.raises(UsageError, match="export it with --taps"):
        OrtRunnable(plain.path).taps(np.zeros((1, 2, 64), np.float32))


def test_half_precision_runnable_returns_float32(fp32, tmp_path):
    block, _, _ = fp32
    artifact = quantize(block, "torch-bf16", tmp_path / "bf16")
    y = runnable_for(artifact).run(np.ones((1, 3, 64), np.float32))
    assert y.dtype == np.float32 and runnable_for(artifact).describe()["dtype"] == "bfloat16"
