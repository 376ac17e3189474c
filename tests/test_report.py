"""The report: built from a real run's records, with the decision table, verdict, plots and caveats."""

import json

import pytest

from ffnbench.bench import RunConfig, run
from ffnbench.bench.report import write
from ffnbench.errors import UsageError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, seed_exports):
    out = seed_exports(tmp_path_factory.mktemp("report") / "run")
    cfg = RunConfig(models=["tiny"], n_requests=2, seq_len=8, calibration_requests=2, warmup=0, min_iterations=3,
                    min_seconds=0.001, prefill=[2, 4], recipes=["fp32", "ort-int8-dynamic", "bnb-nf4"],
                    scenarios=["clean", "shift-1", "shift-4", "production"])
    run(cfg, out, progress=False)
    return out


def test_report_has_the_decision_table_verdict_and_plots(run_dir):
    report = write(run_dir).read_text()
    assert "## Decision: A vs B under `production` (model `tiny`)" in report
    assert "| ort-int8-dynamic |" in report and "A/B [95 % CI]" in report
    assert "median A − B =" in report and "quantized recipes" in report
    for plot in ("robustness_shift_tiny.png", "latency_decode_tiny.png", "latency_prefill_tiny.png", "size_tiny.png"):
        assert f"plots/{plot}" in report
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Caveats" in report and "## Machine" in report


def test_verdict_numbers_come_from_the_records(run_dir):
    cells = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    get = {(c["design"], c["recipe"]): c["metrics"]["centered_sqnr_db"] for c in cells
           if c["kind"] == "accuracy" and c["scenario"] == "production"}
    delta = get["A", "ort-int8-dynamic"] - get["B", "ort-int8-dynamic"]
    assert f"{delta:.1f} dB" in write(run_dir).read_text()


def test_failed_cells_are_listed(run_dir):
    results = run_dir / "results.jsonl"
    original = results.read_text()
    try:
        with open(results, "a") as f:
            f.write(json.dumps({"key": "A/tiny/x/clean/cal=-", "status": "error", "error": "Boom: injected",
                                "design": "A", "model": "tiny", "recipe": "x", "scenario": "clean"}) + "\n")
        report = write(run_dir).read_text()
        assert "| A/tiny/x/clean/cal=- | error | Boom: injected |" in report
    finally:
        results.write_text(original)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UsageError, match="is not a run directory"):
        write(tmp_path)
