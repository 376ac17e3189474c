"""`compare --remeasure`: both runs' artifacts re-timed side by side, in this process or each side in
its own environment, and what it will not pretend to re-measure."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ffnbench.bench import RunConfig, run, stats
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.gate import compare
from ffnbench.bench.gate.checks import checks
from ffnbench.bench.gate.compare import LAUNCH_WORKER, remeasure, write
from ffnbench.bench.gate.gate import gate, write_baseline
from ffnbench.bench.gate.reliability import doubled_forward_environment


@pytest.fixture(scope="module")
def default_size_run(tmp_path_factory):
    """A `default`-size run whose timing cap (max_seconds) ends timing as soon as min_iterations
    allows (min_seconds is out of reach; the model's own table raises the minimum to 12), and its
    self-comparison: (run directory, ratios)."""
    out = tmp_path_factory.mktemp("compare") / "run"
    config = RunConfig(models=["default"], designs=["A"], recipes=["fp32", "ort-int8-dynamic", "bnb-int8"],
                       scenarios=["clean"], n_requests=1, seq_len=2,
                       latency=LatencyConfig(warmup=1, min_iterations=10, min_seconds=60.0, max_seconds=0.001,
                                             prefill=(1, 16), memory=False, diagnose=False),
                       per_model={"default": {"min_iterations": 12}})
    run(config, out, progress=False)
    write_baseline(out, out.parent / "baseline.json")
    return out, remeasure(out, out)


def test_a_self_comparison_at_the_default_size_judges_every_cell_on_full_rounds(default_size_run):
    """What the comparison did, not what this machine's timing noise made of it: whether a cell passes
    is tested on simulated samples (test_gate_judges_simulated_re_measurements, test_stats.py)."""
    default_size_run, ratios = default_size_run
    ort = {k: r for k, r in ratios.items() if "not_remeasured" not in r}
    assert len(ort) == 4  # fp32 and int8 at decode and prefill
    for r in ort.values():
        # The cap never cuts below the minimum, the model's own (12), not the run's (10).
        assert r["iterations"] >= 12 and r["stopped_by"] == "max_seconds"
        assert r["processes"] == 1 and r["test"] == "Wilcoxon over paired rounds" and 0 <= r["p_slower"] <= 1
    result = gate(default_size_run.parent / "baseline.json", default_size_run, checks(), only="latency",
                  remeasured=ratios)
    judged = {f.cell for f in result.findings if f.metric == "p50_ms" and not f.advisory}
    assert judged == set(ort)
    text = write(ratios, default_size_run).read_text()
    assert "p (slower)" in text and "Re-measured in this process, old and new interleaved" in text


def test_bitsandbytes_cells_are_not_re_measured_by_this_process(default_size_run):
    """Rebuilding the old bitsandbytes module with the current code would time the new code twice."""
    default_size_run, ratios = default_size_run
    bnb = {k: r for k, r in ratios.items() if "bnb-int8" in k}
    assert len(bnb) == 2 and all("runs this process's code on both sides" in r["not_remeasured"] for r in bnb.values())
    result = gate(default_size_run.parent / "baseline.json", default_size_run, checks(), only="latency",
                  remeasured=ratios)
    judged = [f for f in result.findings if "bnb-int8" in f.cell and f.metric == "p50_ms"]
    assert len(judged) == 2 and all(f.advisory and f.note.startswith("not re-measured") for f in judged)


class CountedWorker(compare.Worker):
    """A real worker whose start is counted: (side, interpreter) in the order they were started."""
    started: list = []

    def __init__(self, python: str, side: str):
        CountedWorker.started.append((side, python))
        super().__init__(python, side)


def test_each_side_is_re_measured_by_workers_of_its_own_environment(tmp_path, seed_exports, monkeypatch):
    """Each side loads and calls its artifacts with its own interpreter and code (here the new side's
    forward runs twice), in workers started alternately, as many as the run's [latency] remeasure_processes,
    and each cell's record counts processes, not rounds. Whether the doubled forward is caught is a
    matter of this machine's timing: the reliability script measures that, not the suite."""
    run_dir = seed_exports(tmp_path / "run")
    run(RunConfig(models=["tiny"], designs=["B"], recipes=["fp32", "bnb-int8"], scenarios=["clean"], n_requests=1,
                  seq_len=2, latency=LatencyConfig(warmup=1, min_iterations=4, min_seconds=0.001, prefill=(2, 16),
                                                   memory=False, diagnose=False, remeasure_processes=2)), run_dir,
        progress=False)
    write_baseline(run_dir, tmp_path / "baseline.json")
    doubled = doubled_forward_environment(tmp_path)
    monkeypatch.setattr(compare, "Worker", CountedWorker)
    CountedWorker.started = []
    ratios = remeasure(run_dir, run_dir, old_python=sys.executable, new_python=str(doubled))
    assert CountedWorker.started == [("old", sys.executable), ("new", str(doubled))] * 2
    assert len(ratios) == 4 and all(r["code"] == "each side's own" for r in ratios.values())
    for r in ratios.values():
        assert r["processes"] == 2 and r["test"] == "Welch t over process medians"
        assert r["iterations"] >= compare.ROUNDS_PER_PROCESS * 2
        assert r["between_process_pct"] >= 0 and r["within_process_pct"] >= 0
    result = gate(tmp_path / "baseline.json", run_dir, checks(), only="latency", remeasured=ratios)
    assert {f.cell for f in result.findings if f.metric == "p50_ms" and not f.advisory} == set(ratios)
    assert "each side in several processes" in write(ratios, run_dir).read_text()


def test_a_cell_re_measured_by_workers_is_tested_over_process_medians_not_rounds():
    """Simulated samples, sample i from worker i mod 3: one new worker sits 30 % higher by its own
    constant, the others within 3 % of old's. Over its 3 process medians a side that is no slowdown;
    pooled over the 24 rounds, as if each were independent, it would be (Wilcoxon p < 0.01), so a
    record that says processes but pools rounds shows here."""
    rng = np.random.default_rng(36)
    old = np.tile([1.0, 1.0, 0.98], 8) * rng.lognormal(0, 0.002, 24)
    new = np.tile([1.3, 1.03, 1.0], 8) * rng.lognormal(0, 0.002, 24)
    assert stats.wilcoxon_greater(new, old) < 0.01
    record = compare.cell_test(new, old, processes=3)
    assert record["processes"] == 3 and record["test"] == "Welch t over process medians"
    expected = stats.process_ratio(new, old, 3)
    assert record["p_slower"] == pytest.approx(expected["p_slower"]) and record["p_slower"] > 0.05
    geometric_means = math.exp(np.mean(np.log([1.3, 1.03, 1.0])) - np.mean(np.log([1.0, 1.0, 0.98])))
    assert record["ratio"] == pytest.approx(geometric_means, rel=0.02)
    paired = compare.cell_test(new, old, processes=1)  # one process timed both: paired rounds
    assert paired["processes"] == 1 and paired["test"] == "Wilcoxon over paired rounds" and paired["p_slower"] < 0.01
    assert record["iterations"] == paired["iterations"] == 24


@pytest.mark.parametrize(("ratio", "p_slower", "fails"), [(1.5, 0.001, True), (1.5, 0.2, False), (1.05, 0.001, False),
                                                          (0.7, 1.0, False)])
def test_gate_judges_simulated_re_measurements(default_size_run, ratio, p_slower, fails):
    """The gate fails a re-measured cell when it is both past the threshold and significant: judged on
    given figures, not on this machine's timings."""
    run_dir, measured = default_size_run
    key = next(k for k, r in measured.items() if "not_remeasured" not in r)
    simulated = {k: ({**r, "ratio": 1.0, "p_slower": 0.5, "ci_low": 0.95, "ci_high": 1.05} if "not_remeasured" not in r
                     else r) for k, r in measured.items()}
    simulated[key] = {**simulated[key], "ratio": ratio, "p_slower": p_slower, "ci_low": ratio * 0.95,
                      "ci_high": ratio * 1.05}
    result = gate(run_dir.parent / "baseline.json", run_dir, checks(), only="latency", remeasured=simulated)
    assert {f.cell for f in result.failures} == ({key} if fails else set())


def test_an_environment_without_the_worker_is_a_usage_error(default_size_run, tmp_path):
    from ffnbench.errors import UsageError

    run_dir, _ = default_size_run
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    with pytest.raises(UsageError, match="--old-python: .* has no usable ffnbench timing worker"):
        remeasure(run_dir, run_dir, old_python=str(tmp_path / "bare" / "bin" / "python"))


@pytest.mark.parametrize(("layout", "runs"), [("gate/worker.py", "new"), ("worker.py", "old")])
def test_a_worker_starts_in_an_environment_of_either_layout(tmp_path, layout, runs):
    """--old-python may name an environment from before bench/ was arranged by concern, whose worker
    is ffnbench.bench.worker and whose ffnbench.bench.gate is a module, not a package."""
    bench = tmp_path / "ffnbench" / "bench"
    bench.mkdir(parents=True)
    for init in (tmp_path / "ffnbench" / "__init__.py", bench / "__init__.py"):
        init.write_text("")
    if layout == "worker.py":
        (bench / "gate.py").write_text("")
    else:
        (bench / "gate").mkdir()
        (bench / "gate" / "__init__.py").write_text("")
    (bench / layout).write_text(f"print('{runs} worker', __name__)\n")
    result = subprocess.run([sys.executable, "-P", "-c", LAUNCH_WORKER], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=60)
    assert result.stdout.strip() == f"{runs} worker __main__", result.stderr
