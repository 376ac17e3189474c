"""The machine's measured peaks, for roofline fractions: memory bandwidth and fp32 GEMM throughput.

A short micro-benchmark (a few seconds), cached per machine, thread count and torch version.
"""

import hashlib
import json
import os
import time

import torch

from ffnbench import files
from ffnbench.bench.machine.isa import cpu_info


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _bandwidth_gbps() -> float:
    n = 32 * 1024 * 1024  # 128 MiB per fp32 array: 4x the 32 MiB L3 of this project's machines
    a, b, c = torch.ones(n), torch.ones(n), torch.empty(n)
    return 3 * n * 4 / _best_seconds(lambda: torch.add(a, b, out=c), repeats=5) / 1e9  # 2 reads, 1 write


def _gemm_gflops() -> float:
    m = 2048
    x, y = torch.randn(m, m), torch.randn(m, m)
    return 2 * m**3 / _best_seconds(lambda: torch.mm(x, y), repeats=5) / 1e9


def measure(threads: int) -> dict:
    """Best-of-N add bandwidth over arrays far larger than the caches, and best-of-N fp32 matmul."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        bandwidth, gemm = _bandwidth_gbps(), _gemm_gflops()
    finally:
        torch.set_num_threads(previous)
    return {"memory_gbps": round(bandwidth, 2), "fp32_gemm_gflops": round(gemm, 1), "threads": threads,
            "method": "torch.add on 3x128 MiB, torch.mm 2048^3 fp32, best of 5"}


def peaks(threads: int, remeasure: bool = False) -> dict:
    """Cached `measure(threads)` for this CPU and torch build."""
    cpu = cpu_info()
    identity = json.dumps([cpu["model"], cpu["isa"], os.cpu_count(), threads, torch.__version__], sort_keys=True)
    path = files.cache_dir() / f"peaks-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json"
    if path.exists() and not remeasure:
        return {**json.loads(path.read_text()), "cached": True}
    result = measure(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, result)
    return {**result, "cached": False}
