"""Latency cells: warm-up before the timed rounds, and each record's roofline figures."""

import numpy as np
from torch import nn

from ffnbench.bench.cells import latency_cells
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.cells.runnables import TorchRunnable
from ffnbench.models import build_model, preset


def test_warm_up_calls_come_before_the_timed_rounds():
    block = build_model(preset("tiny", "A"))
    calls = []
    first_linear = next(m for m in block.modules() if isinstance(m, nn.Linear))
    first_linear.register_forward_hook(lambda *_: calls.append(1))  # one per block call
    entry = {"runnable": TorchRunnable(block, threads=1), "x": np.zeros((1, 1, 64), np.float32),
             "block_cfg": block.cfg, "model_bytes": 1000}
    cfg = LatencyConfig(warmup=3, min_iterations=2, max_iterations=2)
    peaks = {"memory_gbps": 10.0, "fp32_gemm_gflops": 100.0}
    out = latency_cells.time_group({"a": entry}, (1, 1), cfg, peaks, threads=1)["a"]
    assert len(calls) == 3 + 2 and out["iterations"] == 2  # warm-up, then the timed rounds
    assert out["stopped_by"] == "max_iterations"
    moved = 1000 + 2 * 64 * 4  # the artifact's bytes and the fp32 input and output
    assert out["achieved_gbps"] == np.float64(moved / (out["p50_ms"] / 1e3) / 1e9)
    assert out["roofline_fraction"] > 0
