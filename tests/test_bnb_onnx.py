"""bitsandbytes 4-bit weights shipped as ONNX MatMulBnb4: the two runtimes agree on the same weights."""

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from bitsandbytes.functional import _convert_weight_packed_for_cpu

from ffnbench.bench.cells.runnables import OrtRunnable, runnable_for
from ffnbench.bench.traffic.scenarios import scenario
from ffnbench.errors import UsageError
from ffnbench.export import export_onnx
from ffnbench.models import build_model, preset
from ffnbench.quant import quantize
from ffnbench.quant.bnb_onnx import bnb4_to_onnx


def sqnr_db(ref, y):
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - y) ** 2)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """design -> (fp32 block, its export): one tiny export per design for the whole module."""
    out = {}
    for design in ("A", "B"):
        block = build_model(preset("tiny", design, residual=False))
        out[design] = block, export_onnx(block, tmp_path_factory.mktemp(f"fp32-{design}"))
    return out


def four_bit_layers(module):
    return [m for m in module.modules() if isinstance(m, bnb.nn.Linear4bit)]


def agreement_and_error(block, artifact, shipped) -> tuple[float, float]:
    """(SQNR of ORT vs bitsandbytes on the same codes, SQNR of bitsandbytes vs fp32), in dB."""
    x = scenario("shift-2").generate(4, 16, 64, seed=0)
    ref = block(torch.from_numpy(x)).detach().numpy()
    y_bnb = runnable_for(artifact).run(x)
    y_ort = OrtRunnable(shipped).run(x)
    return sqnr_db(y_bnb, y_ort), sqnr_db(ref, y_bnb)


@pytest.mark.parametrize("recipe", ["bnb-nf4", "bnb-fp4"])
@pytest.mark.parametrize("design", ["A", "B"])
def test_bnb_weights_run_in_ort_agree_with_bnb(tmp_path, exports, design, recipe):
    """Agreement (ORT vs bitsandbytes on the same codes) far exceeds either's error vs fp32.

    Measured at the `small` size: agreement 39-46 dB vs 13-18 dB quantization error. On a CPU with
    AVX512-BF16, what remains is bitsandbytes' kernel, which repacks the layer with bf16 scales.
    """
    block, exported = exports[design]
    artifact = quantize(exported.path, recipe, tmp_path / recipe)
    bnb4_to_onnx(exported.path, block, artifact.path, tmp_path / "shipped.onnx")
    agreement, error = agreement_and_error(block, artifact, tmp_path / "shipped.onnx")
    assert agreement >= 35, agreement
    assert agreement >= error + 15, (agreement, error)


def test_double_quantized_scales_are_refused(tmp_path, exports):
    block, exported = exports["A"]
    artifact = quantize(exported.path, "bnb-nf4-dq", tmp_path / "dq")
    with pytest.raises(UsageError, match="double-quantized scales"):
        bnb4_to_onnx(exported.path, block, artifact.path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_repacked_state_is_refused_on_every_cpu(tmp_path, exports):
    """The repack bitsandbytes' forward does on AVX512-BF16 CPUs, done by its own function here, so
    the refusal is exercised whatever this CPU is."""
    block, exported = exports["A"]
    artifact = quantize(exported.path, "bnb-nf4", tmp_path / "nf4")
    for layer in four_bit_layers(artifact.module):
        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state)
    with pytest.raises(UsageError, match=r"repacked by a forward pass \(torch.bfloat16"):
        bnb4_to_onnx(exported.path, block, artifact.module.state_dict(), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_module_after_its_first_forward_ships_only_where_nothing_was_repacked(tmp_path, exports):
    """bitsandbytes repacks on the first forward exactly where the CPU has AVX512-BF16. There the
    state is refused; elsewhere it is unchanged, ships, and agrees with bitsandbytes as before."""
    block, exported = exports["A"]
    artifact = quantize(exported.path, "bnb-nf4", tmp_path / "nf4")
    runnable_for(artifact).run(np.zeros((1, 2, 64), np.float32))
    repacked = any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in four_bit_layers(artifact.module))
    assert repacked == bool(bnb.functional.has_avx512bf16())  # bitsandbytes' own test of the CPU
    shipped = tmp_path / "x.onnx"
    if repacked:
        with pytest.raises(UsageError, match="repacked by a forward pass"):
            bnb4_to_onnx(exported.path, block, artifact.module.state_dict(), shipped)
        assert not shipped.exists()
    else:
        bnb4_to_onnx(exported.path, block, artifact.module.state_dict(), shipped)
        agreement, error = agreement_and_error(block, artifact, shipped)
        assert agreement >= 35 and agreement >= error + 15, (agreement, error)
