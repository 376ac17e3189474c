"""Latency cells: the warm-up and the memory probe, with and without a resettable high-water mark."""

import numpy as np
import pytest
from torch import nn

from ffnbench.bench import latency_cells
from ffnbench.bench.latency import LatencyConfig
from ffnbench.bench.runnables import TorchRunnable
from ffnbench.models import build_model, preset


@pytest.mark.parametrize("probe", ["available", "unavailable"])
def test_warm_up_calls_happen_whether_or_not_memory_can_be_probed(tmp_path, monkeypatch, probe):
    """Containers and non-Linux systems cannot reset the kernel's high-water mark; the memory figure
    is then absent, but the untimed warm-up calls still come before the timed rounds."""
    if probe == "unavailable":
        monkeypatch.setattr(latency_cells, "CLEAR_REFS", tmp_path / "absent" / "clear_refs")
    elif not latency_cells.peak_rss_mb(lambda: None, 1):
        pytest.skip("this kernel offers no high-water-mark reset; the 'unavailable' case covers it")
    block = build_model(preset("tiny", "A"))
    calls = []
    first_linear = next(m for m in block.modules() if isinstance(m, nn.Linear))
    first_linear.register_forward_hook(lambda *_: calls.append(1))  # one per block call
    entry = {"runnable": TorchRunnable(block, threads=1), "x": np.zeros((1, 1, 64), np.float32),
             "block_cfg": block.cfg, "model_bytes": 0}
    cfg = LatencyConfig(warmup=3, min_iterations=2, max_iterations=2)
    out = latency_cells.time_group({"a": entry}, (1, 1), cfg, None, threads=1)
    assert len(calls) == 3 + 2 and out["a"]["iterations"] == 2  # warm-up, then the timed rounds
    assert (out["a"]["peak_rss_mb"] is None) == (probe == "unavailable")
    assert out["a"]["stopped_by"] == "max_iterations"
