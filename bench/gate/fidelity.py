"""Harness fidelity: does the latency harness add time? It is compared with a bare session.run loop
on the same ONNX Runtime session, in one process, in alternating blocks.

    python -m ffnbench.bench.gate.fidelity [--model default] [--blocks 30]

Prints the ratio of medians (harness / bare) per shape; the target is at most 1.03.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ffnbench.bench.cells.latency import LatencyConfig, interleaved
from ffnbench.bench.cells.latency_cells import latency_model
from ffnbench.bench.cells.runnables import OrtRunnable
from ffnbench.export import export_onnx
from ffnbench.models import build_model, preset


def bare_ms(session, feeds: dict, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        session.run(["output"], feeds)
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--design", default="A")
    # Many short blocks: both loops then sample the same drift in machine load.
    parser.add_argument("--blocks", type=int, default=30, help="alternating bare/harness blocks")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        block = build_model(preset(args.model, args.design, residual=False))
        path = latency_model(export_onnx(block, Path(tmp) / "fp32").path)
        runnable = OrtRunnable(path, threads=args.threads, spinning=False)
        rng = np.random.default_rng(0)
        for shape, (batch, seq), per_block in (("decode", (1, 1), 60), ("prefill", (8, 128), 3)):
            x = rng.standard_normal((batch, seq, block.cfg.d_model)).astype(np.float32)
            feeds = {runnable.input_name: x}
            cfg = LatencyConfig(warmup=0, min_iterations=per_block, min_seconds=1e-3, max_iterations=per_block)
            bare, harness = [], []
            for _ in range(args.blocks):
                bare += bare_ms(runnable.session, feeds, per_block)
                harness += list(interleaved({"h": runnable.timed_call(x)}, cfg)[0]["h"])
            ratio = np.median(harness) / np.median(bare)
            print(f"{args.model} {args.design} {shape}: bare p50 {np.median(bare):.4f} ms, harness p50 "
                  f"{np.median(harness):.4f} ms, ratio {ratio:.3f} ({len(bare)} + {len(harness)} calls)")


if __name__ == "__main__":
    main()
