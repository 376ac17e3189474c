"""Latency cells: every runnable of one model size timed round-robin at decode and prefill shapes."""

import dataclasses
import uuid

from ffnbench.bench.cells import latency
from ffnbench.bench.cells.ort_runnable import latency_model
from ffnbench.bench.cells.runnables import OrtRunnable, Runnable, TorchRunnable, ort_has_cuda


def peak_gpu_mb(fn) -> float:
    """Peak memory torch's CUDA allocator held during one call (ORT's allocator is not seen)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def timing_runnable(runnable: Runnable, threads: int, spinning: bool) -> Runnable:
    if isinstance(runnable, OrtRunnable):
        return OrtRunnable(latency_model(runnable.path), threads=threads, spinning=spinning, device=runnable.device)
    return runnable


def work(block_cfg, tokens: int, model_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes moved) of one call: 2 FLOPs per weight per token; the weights once plus the
    fp32 input and output activations."""
    d, h = block_cfg.d_model, block_cfg.hidden
    weights = (2 if block_cfg.activation == "gelu" else 3) * d * h
    return 2.0 * weights * tokens, float(model_bytes + 2 * tokens * d * 4)


def time_group(entries: dict[str, dict], shape: tuple[int, int], cfg: latency.LatencyConfig, peaks: dict | None,
               threads: int) -> dict[str, dict]:
    """entries: key -> {runnable, x, block_cfg, model_bytes[, ratios: {name: other key}]}. Each
    named ratio is this entry's time over the other's, paired by round. Returns key -> metrics."""
    tokens = shape[0] * shape[1]
    fns = {key: e["runnable"].timed_call(e["x"]) for key, e in entries.items()}
    on_gpu = any(getattr(e["runnable"], "device", "cpu") == "cuda" for e in entries.values())
    gpu = {key: peak_gpu_mb(fn) for key, fn in fns.items()} if on_gpu else {}
    # One warm-up call at least: whether a runnable is bounded is decided on its first timed call,
    # which must not be its first call ever (arena set-up, lazy initialisation). References are
    # never bounded: every ratio is taken against them.
    samples, stopped_by = latency.interleaved(fns, dataclasses.replace(cfg, warmup=max(cfg.warmup, 1)),
                                              latency.CudaTimer() if on_gpu else None,
                                              unbounded={k for k, e in entries.items() if e.get("reference")})
    group = uuid.uuid4().hex[:12]  # ratios pair rounds of one group only
    out = {}
    for key, e in entries.items():
        stats = latency.summarize(samples[key], tokens)
        flops, moved = work(e["block_cfg"], tokens, e["model_bytes"])
        seconds = stats["p50_ms"] / 1e3
        ideal = max(flops / (peaks["fp32_gemm_gflops"] * 1e9), moved / (peaks["memory_gbps"] * 1e9)) if peaks else None
        stats |= {
            "model_bytes": e["model_bytes"],
            "threads": threads,
            "stopped_by": stopped_by[key],
            "timing_group": group,
            "max_runnable_seconds": cfg.max_runnable_seconds,
            "achieved_gflops": flops / seconds / 1e9,
            "achieved_gbps": moved / seconds / 1e9,
            "roofline_fraction": ideal / seconds if ideal else None,
            "samples_ms": [round(float(v), 4) for v in samples[key]],
        }
        if on_gpu:
            stats["peak_gpu_mb"] = gpu[key]
        for name, other in e.get("ratios", {}).items():
            stats[name] = latency.ratio(samples[key], samples[other])
        out[key] = stats
    return out


def reference_runnables(subject, threads: int, spinning: bool) -> dict[str, Runnable]:
    """fp32 in ORT (plain export, no taps) and in torch: what every recipe's speed is compared with."""
    device = subject.config.device
    refs = {"fp32_torch": TorchRunnable(subject.block, threads=threads, device=device)}
    if device == "cpu" or ort_has_cuda():
        refs["fp32_ort"] = OrtRunnable(latency_model(subject.export.path), threads=threads, spinning=spinning,
                                       device=device)
    return refs
