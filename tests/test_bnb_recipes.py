"""bitsandbytes 4-bit layers on every CPU: which shapes its CPU kernels get right, and the kernel each layer runs."""

import numpy as np
import pytest
import torch

from ffnbench.bench.cells.runnables import runnable_for
from ffnbench.bench.traffic.scenarios import scenario
from ffnbench.models import build_model, preset
from ffnbench.quant import Skipped, load_artifact, quantize
from ffnbench.quant.bnb_recipes import avx512_dequantization, cpu_limit, fused_kernel_limit, import_bnb

bnb = import_bnb()
# bitsandbytes' own tests of the CPU: the AVX-512 dequantization and the fused AVX512-BF16 kernel.
AVX512 = avx512_dequantization()
FUSED = bool(bnb.functional.has_avx512bf16())


@pytest.mark.parametrize("in_features", [32, 40, 64, 96, 128, 192])
def test_cpu_limit_is_where_bitsandbytes_dequantizes_with_the_wrong_scales(in_features):
    """bitsandbytes' own dequantization of a weight it quantized, against its pure-torch reference
    dequantization of the same codes (exact): wrong on this CPU exactly where cpu_limit says so."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    w = torch.randn(128, in_features, generator=torch.Generator().manual_seed(0))
    codes, state = bnb.functional.quantize_4bit(w, quant_type="nf4", blocksize=64)
    kernel = bnb.functional.dequantize_4bit(codes, state)
    with torch.compiler.set_stance("force_eager"):  # the same arithmetic, without a compile per shape
        reference = _dequantize_4bit_compute(codes.view(torch.uint8).reshape(-1), state.absmax,
                                             _get_4bit_code("nf4", "cpu"), 64, w.shape, torch.float32)
    wrong = not torch.allclose(kernel, reference, rtol=1e-6, atol=0)
    assert wrong == (cpu_limit(in_features) is not None), (AVX512, in_features)
    # The AVX-512 branch steps 16 weights at a time: rows of 40 take the scalar loop.
    assert wrong == (AVX512 and in_features in (32, 96))


@pytest.mark.parametrize(("shape", "limit"), [
    ((64, 128), None),
    ((192, 512), None),
    ((32, 128), "in_features 32 is not a multiple of its 64-weight block"),
    ((40, 128), "in_features 40 is not a multiple of its 64-weight block"),
    ((128, 48), "out_features 48 is not a multiple of its 32-row tile"),
])
def test_the_fused_kernels_shape_limits(shape, limit):
    assert fused_kernel_limit(*shape) == limit


def four_bit_layers(module):
    return {name: m for name, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def repacked(module) -> set[str]:
    return {name for name, m in four_bit_layers(module).items()
            if getattr(m.weight.quant_state, "packing_format_for_cpu", False)}


def sqnr_db(block, artifact, x) -> float:
    with torch.no_grad():
        ref = block(torch.from_numpy(x)).numpy()
    y = runnable_for(artifact).run(x)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - y) ** 2)))


@pytest.mark.parametrize("design", ["A", "B"])
def test_a_layer_narrower_than_a_block_is_skipped_where_bitsandbytes_gets_it_wrong(tmp_path, design):
    """d_model 32, a Hugging Face test checkpoint's width: its input projections hold half a block
    a row. On an AVX-512 CPU the cell is skipped, naming the limit and the layer; elsewhere the
    artifact, rebuilt by load_artifact as a run does, runs without autograd and is accurate."""
    block = build_model(preset("tiny", design, d_model=32, d_ff=128, residual=False))
    x = scenario("clean").generate(2, 16, 32, seed=0)
    if AVX512:
        with pytest.raises(Skipped, match=r"unless in_features is a multiple of its 64-weight block; mlp\.\w+ has 32"):
            quantize(block, "bnb-nf4", tmp_path / "q")
        assert not (tmp_path / "q").exists()
        return
    quantize(block, "bnb-nf4", tmp_path / "q")
    artifact = load_artifact(tmp_path / "q", block)
    assert sqnr_db(block, artifact, x) >= 14
    assert repacked(artifact.module) == set()
    assert artifact.manifest["params"]["cpu_kernel"] == "dequantize + GEMM"


def test_shapes_the_fused_kernel_cannot_take_run_its_dequantizing_path(tmp_path):
    """d_ff 40: fc1's 40 outputs are not whole 32-row tiles, fc2's 40 inputs not whole blocks (nor
    16-weight AVX-512 steps, so they dequantize right on every CPU). Rebuilt from the artifact, both
    layers run without autograd wherever the fused kernel exists, and the fallbacks are recorded."""
    block = build_model(preset("tiny", "A", d_ff=40, residual=False))
    quantize(block, "bnb-nf4", tmp_path / "q")
    artifact = load_artifact(tmp_path / "q", block)
    assert sqnr_db(block, artifact, scenario("clean").generate(2, 16, 64, seed=0)) >= 14
    params = artifact.manifest["params"]
    assert repacked(artifact.module) == set() and params["cpu_kernel"] == "dequantize + GEMM"
    assert params.get("cpu_fallbacks") == ({"mlp.fc1": "out_features 40 is not a multiple of its 32-row tile",
                                            "mlp.fc2": "in_features 40 is not a multiple of its 64-weight block"}
                                           if FUSED else None)


@pytest.mark.parametrize("recipe", ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4"])
def test_layers_the_fused_kernel_takes_record_bfloat16_activations(tmp_path, recipe):
    block = build_model(preset("tiny", "B", residual=False))  # d_model 64, hidden 192: every layer fits
    artifact = quantize(block, recipe, tmp_path / "q")
    assert sqnr_db(block, artifact, scenario("clean").generate(2, 16, 64, seed=0)) >= 11
    params = artifact.manifest["params"]
    assert repacked(artifact.module) == (set(four_bit_layers(artifact.module)) if FUSED else set())
    expected = ("fused bf16 (AVX512-BF16)", "bfloat16") if FUSED else ("dequantize + GEMM", "float32")
    assert (params["cpu_kernel"], params["activation_dtype"]) == expected and "cpu_fallbacks" not in params


def test_a_bitsandbytes_build_without_the_avx512_check_has_no_avx512_branch(monkeypatch):
    """Its CUDA and aarch64 builds export no has_avx512f_cpu: bitsandbytes answers a missing symbol
    with a stub that raises when called. Such a build takes the scalar loop: no limit, no crash."""

    class NoAvx512Check:
        def __getattr__(self, name):
            def stub(*args):
                raise RuntimeError(f"{name} is not in this build")
            return stub

    monkeypatch.setattr(bnb.cextension, "lib", NoAvx512Check())
    assert avx512_dequantization() is False and cpu_limit(32) is None
