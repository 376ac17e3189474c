"""Latency you can trust: warm-up, round-robin interleaving, percentiles, bootstrap intervals.

Timing several runnables in one process, one call each per round (A B C A B C ...), exposes them
to the same background noise, so their ratio is far steadier than any absolute time. Every
runnable runs until both a minimum number of rounds and a minimum total time are met.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ffnbench.bench import stats
from ffnbench.errors import UsageError


@dataclass(frozen=True)
class LatencyConfig:
    """The latency study ([latency]): how every recipe is timed at decode and prefill shapes, and what
    is measured beside the times."""

    enabled: bool = True  # time every recipe at decode and prefill shapes, interleaved
    warmup: int = 2  # untimed rounds first: page faults, allocator pools, ORT's first-run planning
    min_iterations: int = 10  # timed rounds, at least
    min_seconds: float = 0.3  # and at least this much timed work per runnable,
    max_iterations: int = 200  # unless this many rounds are done: fast calls need no more
    # or the group has been timed this long; never before min_iterations rounds (a cell that
    # stopped at a cap records which: `stopped_by`)
    max_seconds: float = 60.0
    # Timed work one runnable may take. A runnable whose first timed call says min_iterations calls
    # would take longer runs as many rounds as fit (2 at least) and is recorded as `bounded`: how
    # torch's half precision on a CPU, or a 4-bit path that dequantizes every call, is still timed
    # at the llama-7b size instead of holding up the whole group.
    max_runnable_seconds: float = 10.0
    decode: tuple[int, int] = (1, 1)  # (batch, seq): one new token
    prefill: tuple[int, int] = (8, 128)  # (batch, seq): a prompt batch
    # resident_mb and peak_call_mb of every latency cell, each runnable in a child process of its own (CPU)
    memory: bool = True
    # profile what ran where one weight width spreads more than 3x at decode (kernel_path; CPU)
    diagnose: bool = True
    # ORT workers spin after a call; off by default so they do not take the cores from the torch and
    # bitsandbytes calls timed beside them (measured: bnb-nf4 decode 2.8 ms with it, 0.81 without; README).
    ort_spinning: bool = False
    # Worker processes a side when a gate or compare re-measures this run by workers (--old-python):
    # each process is one observation of the test, so at least 2 (bench/gate/compare.py).
    remeasure_processes: int = 5

    def __post_init__(self) -> None:
        # TOML and JSON give a shape as a list: held as a tuple, so one config compares equal however read
        for name in ("decode", "prefill"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def check(self) -> "LatencyConfig":
        for name in ("min_iterations", "min_seconds", "max_seconds", "max_iterations", "max_runnable_seconds"):
            if not getattr(self, name) > 0:
                raise UsageError(f"[latency] {name}: must be positive, got {getattr(self, name)}")
        if self.min_iterations < 2:
            raise UsageError(f"[latency] min_iterations: a confidence interval needs at least 2 rounds, "
                             f"got {self.min_iterations}; set 2 or more")
        if self.max_iterations < self.min_iterations:
            raise UsageError(f"[latency] max_iterations ({self.max_iterations}) is below min_iterations "
                             f"({self.min_iterations}); raise it")
        if self.warmup < 0:
            raise UsageError(f"[latency] warmup: must be >= 0, got {self.warmup}")
        for name in ("decode", "prefill"):
            shape = getattr(self, name)
            if len(shape) != 2 or min(shape) <= 0:
                raise UsageError(f"[latency] {name}: must be two positive sizes (batch, seq), got {shape}")
        if self.remeasure_processes < 2:
            raise UsageError(f"[latency] remeasure_processes: a test over worker processes needs at least 2 a "
                             f"side, got {self.remeasure_processes}")
        return self

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {"decode": tuple(self.decode), "prefill": tuple(self.prefill)}


class CpuTimer:
    """Wall time around a synchronous call."""

    def time_ms(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1e6


class CudaTimer:
    """CUDA events around a call: GPU time of the kernels it queued, waited for before reading."""

    def __init__(self):
        import torch

        self.torch = torch

    def time_ms(self, fn: Callable[[], object]) -> float:
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def interleaved(fns: dict[str, Callable[[], object]], cfg: LatencyConfig, timer: CpuTimer | None = None,
                seed: int = 0, unbounded: set[str] = frozenset()) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Time each fn once per round, in a fresh random order each round (so no fn always follows the
    same neighbour); a fn leaves once it has min_iterations rounds and min_seconds of timed work, and
    past min_iterations rounds, max_iterations rounds or max_seconds of timing end it for all. A fn whose
    first call says min_iterations calls would exceed max_runnable_seconds leaves after the rounds
    that fit (2 at least): it is `bounded`, and its samples are still rounds 1..n of the others'.
    Names in `unbounded` (the references every ratio is taken against) are never bounded.

    Returns (ms per fn, sample i from round i; per fn what stopped it: "minimums", "max_iterations",
    "max_seconds" or "bounded").
    """
    timer = timer or CpuTimer()
    names = list(fns)
    order = np.random.default_rng(seed)
    for _ in range(cfg.warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    totals = dict.fromkeys(fns, 0.0)
    bounded: dict[str, int] = {}  # name -> its rounds
    done: dict[str, str] = {}  # name -> what stopped it, once it stops
    started, cap = time.perf_counter(), "max_iterations"
    for rounds in range(1, cfg.max_iterations + 1):
        for i in order.permutation(len(names)):
            name = names[i]
            if name in done:
                continue
            ms = timer.time_ms(fns[name])
            samples[name].append(ms)
            totals[name] += ms
            if rounds == 1 and name not in unbounded and ms * cfg.min_iterations > cfg.max_runnable_seconds * 1e3:
                bounded[name] = max(2, min(cfg.min_iterations - 1, int(cfg.max_runnable_seconds * 1e3 // ms)))
            if name in bounded:
                if len(samples[name]) >= bounded[name]:
                    done[name] = "bounded"
            elif len(samples[name]) >= cfg.min_iterations and totals[name] >= cfg.min_seconds * 1e3:
                done[name] = "minimums"  # a slow call leaves here; the fast ones go on to their minimums
        if len(done) == len(names):
            break
        if rounds >= cfg.min_iterations and time.perf_counter() - started > cfg.max_seconds:
            cap = "max_seconds"  # no cap ends timing below the minimum (a bounded fn's rounds are fewer)
            break
    return {name: np.asarray(s) for name, s in samples.items()}, {name: done.get(name, cap) for name in names}


def summarize(samples_ms: np.ndarray, tokens: int) -> dict[str, float | int]:
    """p50/p90/p99/mean in ms, the bootstrap interval of p50, tokens per second at p50."""
    p50 = float(np.median(samples_ms))
    low, high = stats.bootstrap_ci((samples_ms,), np.median)
    return {
        "p50_ms": p50,
        "p90_ms": float(np.percentile(samples_ms, 90)),
        "p99_ms": float(np.percentile(samples_ms, 99)),
        "mean_ms": float(np.mean(samples_ms)),
        "p50_ci_low_ms": low,
        "p50_ci_high_ms": high,
        "tokens_per_s": tokens / (p50 / 1e3),
        "iterations": int(len(samples_ms)),
    }


MIN_PAIRS_FOR_CI = 5  # a bootstrap over fewer paired rounds says nothing (min_iterations below 5 gives none)


def ratio_text(r: dict | None, digits: int = 2) -> str:
    """'1.23 [1.20, 1.26]', or '1.23' where too few rounds gave no interval, or '–'."""
    if not r:
        return "–"
    interval = f" [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]" if r.get("ci_low") is not None else ""
    return f"{r['ratio']:.{digits}f}{interval}"


def ratio(a_ms: np.ndarray, b_ms: np.ndarray, seed: int = 0) -> dict[str, float]:
    """median(a)/median(b) with a 95 % bootstrap interval over paired rounds (same index, same round):
    the rounds both took part in, where one left first (at its minimums, or bounded)."""
    rounds = min(len(a_ms), len(b_ms))
    a_ms, b_ms = np.asarray(a_ms[:rounds]), np.asarray(b_ms[:rounds])
    if rounds < MIN_PAIRS_FOR_CI:
        return {"ratio": float(np.median(a_ms) / np.median(b_ms)), "ci_low": None, "ci_high": None}
    low, high = stats.bootstrap_ci((a_ms, b_ms), lambda a, b, axis: np.median(a, axis) / np.median(b, axis), seed)
    return {"ratio": float(np.median(a_ms) / np.median(b_ms)), "ci_low": low, "ci_high": high}
