"""GPU paths: they need a CUDA device and skip without one; the half-precision norm runs anywhere."""

import numpy as np
import pytest
import torch

from ffnbench.bench.cells.runnables import runnable_for
from ffnbench.bench.traffic.scenarios import Scenario
from ffnbench.models import build_model, preset
from ffnbench.quant import quantize

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")


@pytest.mark.parametrize("design", ["A", "B"])
def test_fp16_norm_overflow_is_shown_and_fp32_norm_fixes_it(tmp_path, design):
    """Requests scaled past |h| = 256 square past fp16's 65504: the norm divides by inf and the token
    collapses to zero (finite, so nonfinite_rate misses it; the error shows). In fp32 it does not."""
    block = build_model(preset("tiny", design, residual=False))
    x = Scenario("loud", magnitude_sigma=0.0).generate(2, 8, 64) * 400.0
    ref = block(torch.from_numpy(x)).detach().numpy()
    err = {}
    for norm_fp32 in (False, True):
        artifact = quantize(block, "torch-fp16", tmp_path / str(norm_fp32), norm_fp32=norm_fp32)
        y = runnable_for(artifact).run(x)
        err[norm_fp32] = float(np.sqrt(np.mean((y - ref) ** 2)) / np.sqrt(np.mean(ref**2)))
    assert err[True] < 0.01 and err[False] > 0.5, err


def test_device_cuda_without_a_gpu_is_a_usage_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so --device cuda is valid here")
    from ffnbench.bench.cli import _device
    from ffnbench.errors import UsageError

    with pytest.raises(UsageError, match="no CUDA device here"):
        _device("cuda")
    assert _device("auto") == "cpu"


# SQNR (dB) on CUDA, (low, high): the CPU bounds of tests/test_quantize.py (bnb-int8 31, nf4 14,
# fp16 55, bf16 40; measured there 34-64 dB) less 3 dB for other kernels (cuBLAS's and bitsandbytes'
# CUDA ones), and each format's ceiling, so that a recipe that did not quantize fails as well.
CUDA_SQNR_DB = {"bnb-int8": (28, 45), "bnb-nf4": (11, 25), "torch-fp16": (52, 80), "torch-bf16": (37, 55)}


@needs_cuda
@pytest.mark.parametrize("recipe", list(CUDA_SQNR_DB))
def test_cuda_recipes_track_fp32(tmp_path, recipe):
    block = build_model(preset("tiny", "B", residual=False)).cuda()
    x = np.random.default_rng(0).standard_normal((2, 8, 64)).astype(np.float32)
    ref = block(torch.from_numpy(x).cuda()).detach().cpu().numpy()
    y = runnable_for(quantize(block, recipe, tmp_path / recipe, device="cuda"), device="cuda").run(x)
    low, high = CUDA_SQNR_DB[recipe]
    assert low < 10 * np.log10(np.sum(ref**2) / np.sum((ref - y) ** 2)) < high


@needs_cuda
def test_cuda_timer_measures_a_synchronised_call():
    """Four chained products take about four times one: the timer waits for the device's work, where
    an unsynchronised one would time the launches (microseconds, alike)."""
    from ffnbench.bench.cells.latency import CudaTimer

    a = torch.randn(4096, 4096, device="cuda")
    timer = CudaTimer()
    timer.time_ms(lambda: a @ a)  # warm-up: cuBLAS picks its kernel
    one = min(timer.time_ms(lambda: a @ a) for _ in range(5))
    four = min(timer.time_ms(lambda: a @ a @ a @ a @ a) for _ in range(5))
    assert 2.5 < four / one < 6, (one, four)
