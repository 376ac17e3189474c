"""The analysis step: a run's lm records indexed by pair and study, their verdicts written to
downstream.json (versioned) by the run itself, and read back whatever format wrote them."""

import json

import numpy as np
from test_verdicts import cell, healthy_fp32, index

from ffnbench.bench import records
from ffnbench.bench.analysis import downstream
from ffnbench.bench.analysis import verdicts as dv
from ffnbench.bench.store import RunStore


def lm_record(c: dict, pair: str, study: str = "downstream") -> dict:
    return {**c, "key": f"{c['design']}/{pair}-s{c['seed']}/{c['recipe']}/{study}/{c['scenario']}", "kind": "lm",
            "status": "ok", "model": f"{pair}-s{c['seed']}", "pair": pair, "study": study, "inject": "ffn-input"}


def pair_cells(a_kl: float, b_kl: float) -> list[dict]:
    rng = np.random.default_rng(0)
    out = healthy_fp32()
    for s in range(3):
        noise = rng.uniform(0.9, 1.1, 32)
        out += [cell("A", "ort-int8-dynamic", "clean", s, a_kl * noise, np.zeros(32)),
                cell("B", "ort-int8-dynamic", "clean", s, b_kl * noise, np.zeros(32))]
    return out


def test_each_pair_gets_its_own_verdicts_and_dose_cells_none(tmp_path):
    """The drift pair's A is ahead, the trained pair's B; dose-response cells of the drift pair, which
    say the opposite, are no evidence for its verdict."""
    drift, trained = pair_cells(1.0, 2.0), pair_cells(2.0, 1.0)
    store = RunStore(tmp_path / "run", {"healthy_delta_bpb": 0.1}, resume=False, machine={})
    for c in drift:
        store.append(lm_record(c, "drift"))
    for c in trained:
        store.append(lm_record(c, "trained"))
    for c in pair_cells(4.0, 1.0):
        store.append(lm_record(c, "drift", study="dose"))
    path = downstream.write(tmp_path / "run")
    written = json.loads(path.read_text())
    assert written["format"] == records.FORMAT and written["kind"] == downstream.KIND
    found = {(v["pair"], v["family"]): v for v in downstream.load(tmp_path / "run")}
    assert found["drift", "int8-dynamic"]["verdict"] == "A" and found["trained", "int8-dynamic"]["verdict"] == "B"
    expected = [c for c in dv.comparisons(index(drift), 0.1, "drift") if c.family == "int8-dynamic"][0]
    assert found["drift", "int8-dynamic"]["ci95"] == expected.ci95  # the analysis, not a second implementation


def test_a_run_without_lm_cells_writes_no_verdicts(tmp_path):
    RunStore(tmp_path / "run", {}, resume=False, machine={}).append({"key": "k", "kind": "accuracy", "status": "ok"})
    assert downstream.write(tmp_path / "run") is None and downstream.load(tmp_path / "run") == []


def test_format_1_verdicts_read_as_the_trained_pairs(tmp_path):
    (tmp_path / downstream.DOWNSTREAM_JSON).write_text(json.dumps([{"scenario": "clean", "family": "fp16",
                                                                     "verdict": "A"}]))
    assert downstream.load(tmp_path) == [{"pair": "trained", "scenario": "clean", "family": "fp16", "verdict": "A"}]


def test_the_report_reads_the_verdicts_the_analysis_wrote(tmp_path):
    """Rendering takes the comparisons from downstream.json, not from a second bootstrap: a verdict
    changed in the file is the one returned; without the file they are computed, the same."""
    store = RunStore(tmp_path / "run", {"downstream": {"healthy_delta_bpb": 0.1}}, resume=False, machine={})
    for c in pair_cells(1.0, 2.0):
        store.append(lm_record(c, "drift"))
    manifest, cells = json.loads((tmp_path / "run" / "manifest.json").read_text()), store.results()
    computed = downstream.analyse(manifest, cells)
    path = downstream.write(tmp_path / "run")
    assert downstream.found(tmp_path / "run", manifest, cells) == computed
    written = json.loads(path.read_text())
    written["comparisons"][0]["verdict"] = "B"
    path.write_text(json.dumps(written))
    assert downstream.found(tmp_path / "run", manifest, cells)["drift"][0].verdict == "B"
    path.unlink()
    assert downstream.found(tmp_path / "run", manifest, cells) == computed
