"""Versioned records: what this revision writes carries its format, older records are upgraded
explicitly, a newer format is refused; and a run an older revision wrote still gates and reports."""

import json
import shutil
from pathlib import Path

import pytest

from ffnbench.bench import records
from ffnbench.bench.gate import gate as gate_module
from ffnbench.bench.gate.checks import checks
from ffnbench.bench.gate.gate import gate, load_baseline, write_baseline
from ffnbench.bench.report import report
from ffnbench.bench.store import RunStore, load_run
from ffnbench.errors import UsageError

# A quick run written on cpu-amx by revision 7e56645 (2026-11-30), before records had a format:
# lm cells named by their pair alone ("trained"), without seed, pair, study or draws.
FORMAT_1_RUN = Path(__file__).parent / "data" / "runs" / "quick-cpu-amx-format1"


def test_a_format_1_lm_record_gets_its_identity_as_fields():
    matrix = records.upgrade_cell({"key": "k", "kind": "lm", "model": "trained", "status": "ok"}, "here")
    assert matrix == {"key": "k", "kind": "lm", "model": "trained", "status": "ok", "format": records.FORMAT,
                      "seed": 0, "pair": "trained", "inject": "ffn-input", "study": "downstream", "draws": 1}
    dose = records.upgrade_cell({"key": "k", "kind": "lm", "model": "drift-s2@residual", "seed": 2,
                                 "inject": "residual", "status": "error"}, "here")
    assert (dose["pair"], dose["seed"], dose["study"], dose["inject"]) == ("drift", 2, "dose", "residual")
    assert "draws" not in dose  # an unmeasured cell has no windows to deal among draws
    assert records.upgrade_cell({"key": "k", "status": "ok"}, "here")["kind"] == "accuracy"


def test_a_current_record_is_left_as_written():
    cell = {"key": "k", "kind": "lm", "model": "trained-s1", "pair": "trained", "seed": 1, "inject": "residual",
            "study": "downstream", "status": "ok", "draws": 3, "format": records.FORMAT}
    assert records.upgrade_cell(dict(cell), "here") == cell


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"key": "k", "kind": "accuracy", "status": "ok", "format": records.FORMAT + 1}) + "\n")
    with pytest.raises(UsageError, match=rf"line 1: written in record format {records.FORMAT + 1}, newer than"):
        load_run_of(tmp_path)


def load_run_of(run_dir: Path):
    (run_dir / "manifest.json").write_text(json.dumps({"kind": "ffnbench.run", "config": {}}))
    return load_run(run_dir, "report")


def test_every_appended_record_and_the_manifest_carry_the_format(tmp_path):
    store = RunStore(tmp_path / "run", {}, resume=False, machine={})
    store.append({"key": "k", "kind": "accuracy", "status": "ok"})
    line = json.loads((tmp_path / "run" / "results.jsonl").read_text())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert line["format"] == manifest["format"] == records.FORMAT


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("format1") / "run"
    shutil.copytree(FORMAT_1_RUN, run_dir)
    return run_dir


def test_a_flat_config_reads_with_each_study_key_in_its_table_and_a_nested_one_as_it_is():
    flat = {"preset": "quick", "latency": False, "warmup": 0, "lm_draws": 2, "lm_models": ["drift"],
            "healthy_delta_bpb": 0.2, "dose_inject": ["residual"], "whole_windows": 4, "user_models": {}}
    nested = {"preset": "quick", "latency": {"enabled": False, "warmup": 0},
              "downstream": {"draws": 2, "pairs": ["drift"], "healthy_delta_bpb": 0.2},
              "dose": {"inject": ["residual"]}, "whole": {"windows": 4}, "user_models": {}}
    assert records.upgrade_config(flat) == nested
    assert records.upgrade_config(nested) == nested
    every = records.upgrade_config(dict.fromkeys(records.FLAT, 1))  # each flat key lands in one table, once
    assert sum(len(table) for table in every.values()) == len(records.FLAT)
    assert set(every) == {"latency", "downstream", "dose", "whole"}


def test_a_format_1_run_reads_upgraded(old_run):
    manifest, cells = load_run(old_run, "report")
    assert manifest["format"] == records.FORMAT and all(c["format"] == records.FORMAT for c in cells)
    assert manifest["config"]["downstream"]["windows"] == 8 and manifest["config"]["latency"]["enabled"] is True
    lm = [c for c in cells if c["kind"] == "lm"]
    assert lm and all((c["pair"], c["seed"], c["study"]) == ("trained", 0, "downstream") for c in lm)
    assert not any("format" in json.loads(line) for line in (FORMAT_1_RUN / "results.jsonl").read_text().splitlines())


def test_a_format_1_run_gates_against_its_own_baseline_and_catches_a_change(old_run, tmp_path):
    write_baseline(old_run, tmp_path / "baseline.json")
    assert gate(tmp_path / "baseline.json", old_run, checks()).passed
    baseline = load_baseline(tmp_path / "baseline.json")
    key = next(k for k, c in baseline["cells"].items() if c["kind"] == "lm" and c["recipe"] == "ort-int8-dynamic")
    raw = json.loads((tmp_path / "baseline.json").read_text())
    raw["cells"][key]["metrics"]["delta_bpb"] -= 0.05  # a baseline 0.05 bit a byte better than the run
    (tmp_path / "better.json").write_text(json.dumps(raw))
    assert {f.cell for f in gate(tmp_path / "better.json", old_run, checks()).failures} == {key}


def test_a_baselines_flat_config_reads_nested(old_run, tmp_path):
    """Baselines written before the study tables (the committed ones) record a flat config: the gate
    reads its min_iterations from the latency table it upgrades to."""
    write_baseline(old_run, tmp_path / "baseline.json")
    raw = json.loads((tmp_path / "baseline.json").read_text())
    assert raw["config"]["latency"]["min_iterations"] == 10  # a baseline written now records it nested
    raw["config"] = {key: value for key, value in raw["config"].items() if key not in ("latency", "downstream")}
    raw["config"] |= {"latency": True, "min_iterations": 3, "lm_draws": 2}
    (tmp_path / "flat.json").write_text(json.dumps(raw))
    baseline = load_baseline(tmp_path / "flat.json")
    assert baseline["config"]["latency"] == {"enabled": True, "min_iterations": 3}
    assert gate_module.min_rounds(baseline) == 3 and baseline["config"]["downstream"] == {"draws": 2}


def test_a_format_1_run_reports(old_run):
    text = report.write(old_run).read_text()
    assert "## Downstream" in text and "trained pair" in text
