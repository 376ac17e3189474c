"""The latency harness: stopping rules, statistics, paired ratios, config validation (no timed asserts)."""

import numpy as np
import pytest

from ffnbench.bench.cells import latency
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.errors import UsageError


class FakeTimer:
    """Returns a fixed duration per fn name, so the stopping rules are tested without a clock."""

    def __init__(self, ms):
        self.ms, self.calls = ms, []

    def time_ms(self, fn):
        name = fn()
        self.calls.append(name)
        return self.ms[name]


def test_round_robin_stops_at_min_iterations_once_time_is_met():
    timer = FakeTimer({"a": 100.0, "b": 100.0})
    cfg = LatencyConfig(warmup=0, min_iterations=5, min_seconds=0.1, max_iterations=50)
    out, stopped_by = latency.interleaved({"a": lambda: "a", "b": lambda: "b"}, cfg, timer)
    assert len(out["a"]) == len(out["b"]) == 5 and stopped_by == {"a": "minimums", "b": "minimums"}
    assert sorted(timer.calls[:2]) == ["a", "b"]  # each round calls each fn once


def test_a_fast_fn_runs_until_min_seconds_or_max_iterations():
    timer = FakeTimer({"fast": 0.001, "slow": 50.0})
    cfg = LatencyConfig(warmup=0, min_iterations=2, min_seconds=0.2, max_iterations=30)
    out, stopped_by = latency.interleaved({"fast": lambda: "fast", "slow": lambda: "slow"}, cfg, timer)
    assert len(out["fast"]) == 30  # 0.2 s of 1 µs calls would take 200,000 rounds; capped
    assert stopped_by["fast"] == "max_iterations"
    assert len(out["slow"]) == 4 and stopped_by["slow"] == "minimums"  # 0.2 s in 4 calls: it left then


def test_the_time_cap_never_ends_timing_below_min_iterations():
    timer = FakeTimer({"a": 0.001})
    cfg = LatencyConfig(warmup=0, min_iterations=7, min_seconds=100.0, max_iterations=50, max_seconds=1e-9)
    out, stopped_by = latency.interleaved({"a": lambda: "a"}, cfg, timer)
    assert len(out["a"]) == 7 and stopped_by["a"] == "max_seconds"


class RoundTimer:
    """Each call of a fn takes (its base) + (the round it falls in): sample i of each fn must be round i."""

    def __init__(self, base):
        self.base, self.count = base, dict.fromkeys(base, 0)

    def time_ms(self, fn):
        name = fn()
        self.count[name] += 1
        return self.base[name] + self.count[name]


def test_a_runnable_too_slow_for_its_budget_runs_fewer_rounds_and_is_marked_bounded():
    timer = RoundTimer({"fast": 0.0, "slow": 400.0, "reference": 500.0})
    cfg = LatencyConfig(warmup=0, min_iterations=10, min_seconds=0.001, max_iterations=10, max_runnable_seconds=1.0)
    fns = {name: (lambda name=name: name) for name in ("fast", "slow", "reference")}
    out, stopped_by = latency.interleaved(fns, cfg, timer, unbounded={"reference"})
    assert len(out["slow"]) == 2 and len(out["fast"]) == len(out["reference"]) == 10  # 1 s holds two 401 ms calls
    assert stopped_by == {"fast": "minimums", "slow": "bounded", "reference": "minimums"}
    assert list(out["slow"]) == [401.0, 402.0] and list(out["fast"][:2]) == [1.0, 2.0]  # rounds 1 and 2 of each
    r = latency.ratio(out["slow"], out["fast"])  # over the rounds both took part in; too few for an interval
    assert r["ratio"] == pytest.approx(401.5 / 1.5) and r["ci_low"] is None
    assert latency.ratio_text(r) == f"{401.5 / 1.5:.2f}"


def test_a_bounded_runnable_keeps_the_floor_of_two_rounds():
    timer = FakeTimer({"slow": 5000.0})
    cfg = LatencyConfig(warmup=0, min_iterations=5, max_iterations=5, max_runnable_seconds=1.0)
    out, stopped_by = latency.interleaved({"slow": lambda: "slow"}, cfg, timer)
    assert len(out["slow"]) == 2 and stopped_by["slow"] == "bounded"


def test_round_order_varies_between_rounds():
    timer = FakeTimer({k: 1.0 for k in "abcd"})
    cfg = LatencyConfig(warmup=0, min_iterations=20, min_seconds=0.001, max_iterations=20)
    latency.interleaved({k: (lambda k=k: k) for k in "abcd"}, cfg, timer)
    firsts = {tuple(timer.calls[i:i + 4]) for i in range(0, 80, 4)}
    assert len(firsts) > 1


def test_summarize_percentiles_and_throughput():
    samples = np.arange(1.0, 101.0)  # 1..100 ms
    s = latency.summarize(samples, tokens=10)
    assert s["p50_ms"] == pytest.approx(50.5) and s["mean_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(np.percentile(samples, 90)) and s["iterations"] == 100
    assert s["tokens_per_s"] == pytest.approx(10 / 0.0505)
    assert s["p50_ci_low_ms"] < 50.5 < s["p50_ci_high_ms"]


def test_ratio_is_paired_and_its_interval_holds_it():
    rng = np.random.default_rng(0)
    noise = rng.lognormal(0, 0.3, 200)  # shared by both: the same rounds' load
    r = latency.ratio(2.0 * noise, noise)
    assert r["ratio"] == pytest.approx(2.0) and r["ci_low"] == pytest.approx(2.0) and r["ci_high"] == pytest.approx(2.0)
    r = latency.ratio(2.0 * rng.lognormal(0, 0.3, 200), noise)
    assert r["ci_low"] < r["ratio"] < r["ci_high"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"min_iterations": 0}, "[latency] min_iterations: must be positive, got 0"),
    ({"min_iterations": 1}, "[latency] min_iterations: a confidence interval needs at least 2 rounds, got 1; set 2"),
    ({"max_seconds": 0.0}, "[latency] max_seconds: must be positive"),
    ({"min_seconds": -1.0}, "[latency] min_seconds: must be positive"),
    ({"warmup": -1}, "[latency] warmup: must be >= 0"),
    ({"max_runnable_seconds": 0.0}, "[latency] max_runnable_seconds: must be positive"),
    ({"prefill": (8, 0)}, "[latency] prefill: must be two positive sizes (batch, seq), got (8, 0)"),
    ({"decode": [1]}, "[latency] decode: must be two positive sizes"),
    ({"min_iterations": 50, "max_iterations": 10}, "[latency] max_iterations (10) is below min_iterations (50); raise"),
    ({"remeasure_processes": 1}, "[latency] remeasure_processes: a test over worker processes needs at least 2 a "
                                 "side, got 1"),
])
def test_bad_settings_are_refused_by_check_with_the_fix(kwargs, needle):
    config = LatencyConfig(**kwargs)  # made freely (a [per_model] table replaces keys one by one), checked once
    with pytest.raises(UsageError) as e:
        config.check()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_defaults_check_and_a_shape_read_as_a_list_is_held_as_a_tuple():
    assert LatencyConfig().check() == LatencyConfig()
    read = LatencyConfig(decode=[1, 1], prefill=[8, 128])  # as TOML and JSON give them
    assert read == LatencyConfig() and read.shapes() == {"decode": (1, 1), "prefill": (8, 128)}
