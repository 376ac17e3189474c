"""The CI gate: tolerance specs, pass against itself, fail on injected regressions, exit 2 on bad input."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ffnbench.bench import RunConfig, run
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.gate import gate as gate_module
from ffnbench.bench.gate.checks import checks, parse
from ffnbench.bench.gate.gate import gate, load_baseline, write_baseline
from ffnbench.bench.gate.gate_report import write
from ffnbench.errors import UsageError


def config(**kw) -> RunConfig:
    base = dict(models=["tiny"], n_requests=2, seq_len=8, calibration_requests=2,
                latency=LatencyConfig(warmup=0, min_iterations=5, min_seconds=0.001, prefill=(2, 4), memory=False,
                                      diagnose=False),
                recipes=["fp32", "ort-int8-dynamic", "ort-int4-rtn"], scenarios=["clean", "production"])
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, seed_exports):
    root = tmp_path_factory.mktemp("gate")
    run(config(), seed_exports(root / "base"), progress=False)
    run(config(), seed_exports(root / "same"), progress=False)
    write_baseline(root / "base", root / "baseline.json")
    return root


def test_tolerance_specs_parse():
    c = parse("centered_sqnr_db:-1dB")
    assert c.passes(30.0, 29.1) and not c.passes(30.0, 28.9)
    c = parse("top1_agreement:-0.5pp")
    assert c.allowed(0.95) == pytest.approx(0.945)
    c = parse("p50_ms:+15%")
    assert c.relative and c.allowed(10.0) == pytest.approx(11.5)
    assert parse("nonfinite_rate:+0").passes(0.0, 0.0) and not parse("nonfinite_rate:+0").passes(0.0, 0.01)
    assert checks(["p50_ms:+30%"])["p50_ms"].limit == pytest.approx(0.3)


def test_llama_cpp_figures_gate_in_their_direction():
    """same_top1 and delta_p_mean regress by a drop (in points), the KL percentiles by a rise."""
    assert parse("same_top1:-0.5pp").passes(0.99, 0.986) and not parse("same_top1:-0.5pp").passes(0.99, 0.984)
    assert parse("delta_p_mean:-1pp").passes(-0.02, -0.029) and not parse("delta_p_mean:-1pp").passes(-0.02, -0.031)
    assert parse("kld_p99:+10%").passes(0.1, 0.109) and not parse("kld_p99:+10%").passes(0.1, 0.111)
    with pytest.raises(UsageError, match="regresses by a drop"):
        parse("same_top1:+1pp")


@pytest.mark.parametrize(("spec", "needle"), [
    ("p50:+15%", "unknown metric 'p50'"),
    ("p50_ms+15%", "does not parse; the form is METRIC:[+-]NUMBER[dB|pp|%]"),
    ("p50_ms:+15ms", "does not parse"),
    ("centered_sqnr_db:+1dB", "regresses by a drop, '-'"),
    ("p50_ms:+15pp", "pp does not fit p50_ms; it takes % or no unit"),
    ("p50_ms:+2dB", "dB does not fit p50_ms"),
    ("centered_sqnr_db:-5%", "% does not fit centered_sqnr_db; it takes dB"),
    ("top1_agreement:-1dB", "dB does not fit top1_agreement; it takes pp, % or no unit, e.g. top1_agreement:-0.5pp"),
])
def test_bad_tolerances(spec, needle):
    with pytest.raises(UsageError) as e:
        parse(spec)
    assert needle in str(e.value)


def test_a_run_passes_against_its_own_build(runs):
    result = gate(runs / "baseline.json", runs / "same", checks(), only="accuracy")
    assert result.passed and not result.missing and not result.new
    assert len(result.findings) == 2 * 3 * 2 * 4  # cells x gated accuracy metrics


def test_a_recipe_swap_is_caught_and_reported(runs):
    result = gate(runs / "baseline.json", runs / "same", checks(), only="accuracy",
                  aliases={"ort-int8-dynamic": "ort-int4-rtn"})
    assert not result.passed and not result.missing
    assert {f.metric for f in result.failures} >= {"centered_sqnr_db", "sqnr_db"}
    assert all("vs baseline" in f.note and "ort-int8-dynamic" in f.note for f in result.failures)
    md, xml = write(result, runs / "baseline.json", runs / "same", checks())
    text = md.read_text()
    assert text.startswith("# ffnbench gate: FAIL") and "## Regressions" in text
    suite = ET.parse(xml).getroot()
    assert int(suite.get("failures")) == len(result.failures) == len(suite.findall(".//failure"))


def test_missing_new_and_skipped_cells_are_listed(runs, tmp_path, seed_exports):
    run(config(recipes=["fp32", "ort-int8-dynamic"], scenarios=["clean", "shift-1"],
               latency=LatencyConfig(enabled=False)),
        seed_exports(tmp_path / "other"), progress=False)
    result = gate(runs / "baseline.json", tmp_path / "other", checks(), only="accuracy")
    assert not result.passed
    assert any("ort-int4-rtn" in k for k in result.missing) and any("production" in k for k in result.missing)
    assert any("shift-1" in k for k in result.new)


def test_latency_needs_both_size_and_significance(runs, tmp_path):
    baseline = json.loads((runs / "baseline.json").read_text())
    key = next(k for k, c in baseline["cells"].items() if c["kind"] == "latency")
    cell = baseline["cells"][key]
    samples = np.asarray(cell["metrics"]["samples_ms"])
    # A run 3x slower in every round: far beyond +15 % and significant.
    slow = {**cell, "metrics": {**cell["metrics"], "p50_ms": cell["metrics"]["p50_ms"] * 3,
                                "samples_ms": list(samples * 3)}}
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text((runs / "base" / "manifest.json").read_text())
    (fake / "results.jsonl").write_text(json.dumps(slow) + "\n")
    result = gate(runs / "baseline.json", fake, checks(), only="latency", strict_recorded_latency=True)
    assert [f.cell for f in result.failures] == [key]
    # By default, times recorded in two separate runs only warn: their level moves between runs.
    advisory = gate(runs / "baseline.json", fake, checks(), only="latency")
    assert not advisory.failures and [f.cell for f in advisory.warnings] == [key]
    _, xml = write(advisory, runs / "baseline.json", fake, checks())
    failed = {case.get("classname") for case in ET.parse(xml).getroot() if case.find("failure") is not None}
    assert key not in failed  # advisory findings never show red in CI
    # Two baseline samples alone: beyond the threshold but too few to be significant.
    thin = {**slow, "metrics": {**slow["metrics"], "samples_ms": list(samples[:2] * 3)}}
    (fake / "results.jsonl").write_text(json.dumps(thin) + "\n")
    base_thin = {**baseline, "cells": {key: {**cell, "metrics": {**cell["metrics"], "samples_ms": list(samples[:2])}}}}
    (tmp_path / "thin.json").write_text(json.dumps(base_thin))
    assert not gate(tmp_path / "thin.json", fake, checks(), only="latency", strict_recorded_latency=True).failures
    # A bounded cell has few rounds by design: it is judged on the threshold, so a 3x slowdown fails.
    bounded = {**thin, "metrics": {**thin["metrics"], "stopped_by": "bounded"}}
    (fake / "results.jsonl").write_text(json.dumps(bounded) + "\n")
    result = gate(tmp_path / "thin.json", fake, checks(), only="latency", strict_recorded_latency=True)
    assert [f.cell for f in result.failures] == [key] and "judged on the threshold alone" in result.failures[0].note


def test_stack_change_is_refused_unless_allowed(runs, tmp_path):
    baseline = json.loads((runs / "baseline.json").read_text())
    baseline["versions"]["onnxruntime"] = "0.0.1"
    (tmp_path / "old.json").write_text(json.dumps(baseline))
    with pytest.raises(UsageError, match="onnxruntime 0.0.1 -> .*--allow-stack-change"):
        gate(tmp_path / "old.json", runs / "same", checks(), only="accuracy")
    result = gate(tmp_path / "old.json", runs / "same", checks(), allow_stack_change=True, only="accuracy")
    assert result.passed and "onnxruntime 0.0.1" in result.notes[0]


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "is not valid JSON"),
    ('{"kind": "pytest-benchmark", "benchmarks": []}', "is not an ffnbench baseline (kind 'pytest-benchmark')"),
    ("[1, 2]", "is not an ffnbench baseline"),
])
def test_unusable_baselines(tmp_path, content, needle):
    (tmp_path / "b.json").write_text(content)
    with pytest.raises(UsageError) as e:
        load_baseline(tmp_path / "b.json")
    assert needle in str(e.value)


def test_an_alias_to_a_recipe_the_run_lacks_is_refused(runs):
    with pytest.raises(UsageError, match="the run has no cells of recipe 'ort-int4-rnt'"):
        gate(runs / "baseline.json", runs / "same", checks(), aliases={"ort-int8-dynamic": "ort-int4-rnt"})


BASELINES = sorted((Path(__file__).resolve().parents[1] / "baselines").glob("*.json"))


def run_of(baseline: Path, out: Path) -> Path:
    """The run a baseline was made from, as the gate reads it: its stack, machine class, config and cells."""
    data = json.loads(baseline.read_text())
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({
        "kind": "ffnbench.run", "versions": data["versions"], "config": data["config"],
        "machine": {"machine_class": data["machine_class"]}}))
    (out / "results.jsonl").write_text("".join(json.dumps(c) + "\n" for c in data["cells"].values()))
    return out


@pytest.mark.parametrize("new", BASELINES, ids=lambda p: p.stem)
@pytest.mark.parametrize("old", BASELINES, ids=lambda p: p.stem)
def test_latency_verdicts_on_the_committed_baselines_match_the_normal_approximation(tmp_path, monkeypatch, old, new):
    """scipy's Mann-Whitney is exact where samples have no ties; the hand-written test it replaced was
    the tie-corrected normal approximation (scipy's 'asymptotic'). Every committed baseline's run,
    judged against every baseline on recorded times, gets the same verdicts from both."""
    run_dir = run_of(new, tmp_path / "run")

    def verdicts():
        result = gate(old, run_dir, checks(), allow_stack_change=True, only="latency", strict_recorded_latency=True)
        return [(f.cell, f.metric, f.passed) for f in result.findings if "Mann-Whitney" in f.note]

    exact = verdicts()
    monkeypatch.setattr(gate_module, "mann_whitney_greater", lambda a, b: float(
        stats.mannwhitneyu(a, b, alternative="greater", method="asymptotic").pvalue))
    assert verdicts() == exact
    assert len(exact) == 20  # every latency cell, judged on its samples
    if old == new:
        assert all(passed for *_, passed in exact)  # a run never regresses against itself


def test_latency_cells_are_judged_as_one_family_and_advisory_ones_apart():
    """Three slowdowns beyond tolerance at p = 0.02, 0.03, 0.04 would each fail alone at 0.05, but not
    as a family of three (Holm: 0.06 each); one at p = 0.001 still fails. Advisory findings never
    enlarge the family that gates."""
    def finding(p, advisory=False):
        return gate_module.Finding("c", "p50_ms", 1.0, 1.3, 1.15, True, "", advisory=advisory, p=p, beyond=True)

    result = gate_module.GateResult(findings=[finding(0.02), finding(0.03), finding(0.04)])
    gate_module._judge_latency_as_a_family(result)
    assert result.passed and all("over 3 gating latency findings" in f.note for f in result.findings)
    strong = gate_module.GateResult(findings=[finding(0.001), finding(0.04), finding(0.04)])
    gate_module._judge_latency_as_a_family(strong)
    assert [f.p for f in strong.failures] == [0.001]  # adjusted 0.003; the others 0.08
    alone = gate_module.GateResult(findings=[finding(0.02), *[finding(0.9, advisory=True) for _ in range(10)]])
    gate_module._judge_latency_as_a_family(alone)
    assert [f.p for f in alone.failures] == [0.02]  # in a family of 11 it would be 0.22
