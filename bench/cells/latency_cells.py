"""Latency cells: every runnable of one model size timed round-robin at decode and prefill shapes,
and each runnable's memory measured in a process of its own."""

import dataclasses
import time
import uuid

import numpy as np

from ffnbench.bench.cells import diagnosis, latency, memory
from ffnbench.bench.cells.ort_runnable import latency_model
from ffnbench.bench.cells.runnables import OrtRunnable, Runnable, TorchRunnable, ort_has_cuda
from ffnbench.quant import Skipped


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


def latency_inputs(subject, shape: tuple[int, int]) -> np.ndarray:
    """What latency calls a runnable on: the run's latency scenario (production when it has it)."""
    config = subject.config
    return config.scenario(config.latency_scenario()).generate(shape[0], shape[1], subject.block.cfg.d_model,
                                                               seed=config.seed)


def measure_memory(subjects: dict, cells: list, config) -> dict[tuple, dict]:
    """Cell.artifact -> {resident_mb, peak_call_mb: {shape: MB}} or {error}: each
    latency cell's runnable loaded and called at every shape by a child process of its own (bench/cells/memory.py)."""
    if not config.latency.memory or config.device != "cpu":
        return {}
    requests, inputs = {}, {}
    for design, subject in subjects.items():
        inputs[design] = {name: latency_inputs(subject, shape) for name, shape in config.latency.shapes().items()}
        for cell in {c.artifact: c for c in cells if c.design == design}.values():
            try:
                runnable, manifest = subject.timed(cell.recipe, cell.calibration)
            except Exception:  # the timing records why (skipped or failed); nothing to measure
                continue
            common = {"threads": config.threads, "spinning": config.latency.ort_spinning, "inputs": design}
            requests[cell.artifact] = (
                {"kind": "onnx", "path": str(runnable.path), **common}
                if hasattr(runnable, "path") else
                {"kind": "module", "artifact_dir": str(subject.artifacts.parent / manifest["dir"]),
                 "files_dir": config.files_dir, **common})
    try:
        return memory.measure(requests, inputs)
    except OSError as e:  # the inputs could not be written: every runnable says why, the timing goes on
        return {key: {"error": f"{type(e).__name__}: {e}"} for key in requests}


def measure_latency(subjects: dict, cells: list, config, peaks: dict,
                    memory_mb: dict | None = None) -> list[dict]:
    """Time every cell's runnable, plus each design's fp32 references, round-robin in one loop."""
    shape = config.latency.shapes()[cells[0].scenario]
    entries, records, scenario = {}, {}, config.latency_scenario()
    for design, subject in subjects.items():
        x = latency_inputs(subject, shape)
        references = reference_runnables(subject, config.threads, config.latency.ort_spinning)
        for name, ref in references.items():
            entries[f"{design}/{name}"] = {"runnable": ref, "x": x, "block_cfg": subject.block.cfg, "model_bytes": 0,
                                           "reference": True}
    for cell in cells:
        subject = subjects[cell.design]
        record = {"key": cell.key, "kind": "latency", "design": cell.design, "model": cell.model,
                  "recipe": cell.recipe, "scenario": None, "calibration": cell.calibration,
                  "shape": {"name": cell.scenario, "batch": shape[0], "seq": shape[1]}, "inputs": scenario}
        try:
            timed, manifest = subject.timed(cell.recipe, cell.calibration)
            x = entries[f"{cell.design}/fp32_torch"]["x"]
            refs = {f"vs_{name}": f"{cell.design}/{name}" for name in ("fp32_ort", "fp32_torch")
                    if f"{cell.design}/{name}" in entries}
            entries[cell.key] = {"runnable": timed, "x": x, "block_cfg": subject.block.cfg,
                                 "model_bytes": manifest["bytes"], "ratios": refs}
            record |= {"runtime": timed.describe(), "artifact": {"sha256": manifest["sha256"], "dir": manifest["dir"],
                                                                 "bytes": manifest["bytes"]}}
        except Skipped as e:
            record |= {"status": "skipped", "reason": str(e)}
        except Exception as e:  # recorded like an accuracy cell's failure; the others are still timed
            record |= {"status": "error", "error": f"{type(e).__name__}: {e}"}
        records[cell.key] = record
    for cell in cells:  # a mitigated recipe's time over its parent's, where both run
        for parent in _parents(cell, cells, config):
            if cell.key in entries and parent.key in entries:
                entries[cell.key]["ratios"]["vs_parent"] = parent.key
    started = time.perf_counter()
    try:
        timings = time_group(entries, shape, config.latency, peaks, config.threads)
    except Exception as e:  # one runnable failing mid-timing fails this group's cells, not the run
        timings = {}
        for record in records.values():
            record.setdefault("status", "error")
            record.setdefault("error", f"{type(e).__name__} while timing the group: {e}")
    if timings and config.latency.diagnose and config.device == "cpu":  # CPU profilers
        diagnosis.diagnose(cells[0].scenario, subjects, records, entries, timings, config)
    seconds = round(time.perf_counter() - started, 3)
    for key, record in records.items():
        if "status" not in record:
            record |= {"status": "ok", "metrics": timings[key], "seconds": seconds}
            _add_memory(record, (memory_mb or {}).get((record["design"], record["model"], record["recipe"],
                                                       record["calibration"])), config)
        record.setdefault("seconds", 0.0)
    return list(records.values())


def _parents(cell, cells: list, config) -> list:
    """A mitigated cell's unmitigated recipe among `cells` (the same design and shape; calibrated on
    the same scenario where the parent is calibrated at all), whose time its own is a ratio of."""
    parent = config.unmitigated(cell.recipe)
    return [c for c in cells if parent and c.recipe == parent and c.design == cell.design
            and c.calibration in (cell.calibration, None)]


def _add_memory(record: dict, measured: dict | None, config) -> None:
    shape = record["shape"]["name"]
    ok = measured is not None and "error" not in measured
    record["metrics"] |= {"resident_mb": measured["resident_mb"] if ok else None,
                          "peak_call_mb": measured["peak_call_mb"][shape] if ok else None}
    if ok:
        record["memory_probe"] = measured["probe"]  # a forked child, or a new interpreter (bench/cells/memory.py)
        return
    if measured is not None:
        record["memory_unavailable"] = measured["error"]
    elif not config.latency.memory:
        record["memory_unavailable"] = "memory = false in the run's config"
    elif config.device != "cpu":
        record["memory_unavailable"] = (f"not measured on {config.device} (host RSS is not the device's memory; "
                                        "see peak_gpu_mb)")
    else:
        record["memory_unavailable"] = "its runnable could not be built for the memory probe (see the cell's status)"
