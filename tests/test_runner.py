"""The benchmark run: every metric per cell, the seed's prediction, resume, caching, failures, replay."""

import json
import shutil

import numpy as np
import pytest

from ffnbench.bench import RunConfig, run
from ffnbench.bench import runner as runner_module
from ffnbench.bench.cells import prebuild, sublayer_cells
from ffnbench.bench.cells import subject as subject_module
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.cells.metrics import ALL_METRICS, centered_sqnr_db
from ffnbench.bench.cells.runnables import OrtRunnable
from ffnbench.bench.traffic.scenarios import Replay
from ffnbench.errors import UsageError
from ffnbench.quant import Calibration, bnb_recipes


def tiny_config(**kw) -> RunConfig:
    base = dict(models=["tiny"], n_requests=4, seq_len=16, calibration_requests=4, latency=LatencyConfig(enabled=False),
                recipes=["fp32", "ort-int8-dynamic", "bnb-nf4"], scenarios=["clean", "production"])
    return RunConfig(**{**base, **kw})


def lines(out):
    return (out / "results.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, seed_exports):
    """The tiny matrix run once for the module: (its records, its run directory). Copy before changing."""
    out = seed_exports(tmp_path_factory.mktemp("tiny") / "run")
    return run(tiny_config(), out, progress=False), out


def test_every_cell_records_every_metric(tiny_run):
    results, out = tiny_run
    assert len(results) == 2 * 3 * 2 and all(r["status"] == "ok" for r in results)
    for r in results:
        assert set(r["metrics"]) == set(ALL_METRICS)
        assert (r["metrics"]["fp32_drift_db"] is not None) == (r["recipe"] == "fp32")
        assert r["runtime"]["threads"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["onnxruntime"] and manifest["machine"]["machine_class"]
    assert manifest["analysis_versions"]["scipy"]
    assert manifest["config"]["recipes"] == ["fp32", "ort-int8-dynamic", "bnb-nf4"]


def test_norm_positive_fraction_follows_the_seed_prediction(tmp_path, seed_exports):
    """RMSNorm keeps the offset: B's norm output turns positive as the shift grows; A's stays centred."""
    shifts = ["clean", "shift-0.5", "shift-1", "shift-2", "shift-4", "shift-8"]
    results = run(tiny_config(recipes=["fp32"], scenarios=shifts), seed_exports(tmp_path / "run"), progress=False)
    frac = {(r["design"], r["scenario"]): r["metrics"]["norm_positive_fraction"] for r in results}
    b = [frac["B", s] for s in shifts]
    assert all(later > earlier for earlier, later in zip(b, b[1:], strict=False)), b
    assert b[-1] > 0.9
    assert all(abs(frac["A", s] - 0.5) < 0.1 for s in shifts), [frac["A", s] for s in shifts]


def test_resume_skips_finished_cells(tiny_run, tmp_path, monkeypatch):
    first, out = tiny_run[0], shutil.copytree(tiny_run[1], tmp_path / "run")
    before = lines(out)
    calls = []
    monkeypatch.setattr(sublayer_cells, "export_onnx", lambda *a, **k: calls.append("export"))
    monkeypatch.setattr(subject_module, "quantize", lambda *a, **k: calls.append("quantize"))
    assert run(tiny_config(), out, resume=True, progress=False) == first
    assert lines(out) == before and calls == []


def test_a_new_run_reuses_exports_and_artifacts_cached_by_content(tiny_run, tmp_path, monkeypatch):
    first, out = tiny_run[0], shutil.copytree(tiny_run[1], tmp_path / "run")
    (out / "results.jsonl").unlink()
    (out / "manifest.json").unlink()
    calls = []
    monkeypatch.setattr(sublayer_cells, "export_onnx", lambda *a, **k: calls.append("export"))
    monkeypatch.setattr(subject_module, "quantize", lambda *a, **k: calls.append("quantize"))
    again = run(tiny_config(), out, progress=False)
    assert calls == []
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == strip


def test_prebuilt_artifacts_are_the_ones_the_cells_would_build(tiny_run, tmp_path, monkeypatch, seed_exports):
    """Above PREBUILD_MIN_WEIGHTS the ONNX artifacts are quantized in worker processes first; the
    cells then load them (quantize is never called here) and measure what the in-process run did."""
    monkeypatch.setattr(prebuild, "PREBUILD_MIN_WEIGHTS", 0)
    in_process, quantize = [], subject_module.quantize
    monkeypatch.setattr(subject_module, "quantize", lambda source, recipe, *a, **k: (
        in_process.append(recipe), quantize(source, recipe, *a, **k))[1])
    out = seed_exports(tmp_path / "run")
    built = run(tiny_config(recipes=["fp32", "ort-int8-dynamic", "ort-int4-rtn"]), out, progress=False)
    assert in_process == ["fp32", "fp32"]  # the ONNX Runtime recipes came from the workers
    names = sorted(p.name.rsplit("-", 2)[0] for p in (out / "artifacts").iterdir() if (p / "manifest.json").exists())
    assert names == ["export", "export", "fp32", "fp32", "ort-int4-rtn", "ort-int4-rtn", "ort-int8-dynamic",
                     "ort-int8-dynamic"]
    first = {r["key"]: r for r in tiny_run[0]}
    for r in built:  # the same artifact (by hash) as the module's in-process run, where both have the cell
        if r["key"] in first:
            assert r["artifact"]["sha256"] == first[r["key"]]["artifact"]["sha256"]


def test_prebuild_starts_the_longest_builds_first(tmp_path, seed_exports):
    """HQQ first, a recipe variant that asks for it too, then the calibrated recipes; each artifact
    once, and only ONNX Runtime's (bitsandbytes quantizes in the cell)."""
    cfg = tiny_config(designs=["A"], recipes=["ort-int8-dynamic", "ort-int8-qdq-minmax", "rtn-as-hqq", "ort-int4-rtn",
                                              "bnb-nf4"],
                      user_recipes={"rtn-as-hqq": {"base": "ort-int4-rtn", "algorithm": "hqq"}})
    subjects = {"A": sublayer_cells.Subject(cfg, "A", "tiny", seed_exports(tmp_path / "run") / "artifacts")}
    order = [out.name.rsplit("-", 2)[0] for out, _ in prebuild.builds(subjects, runner_module.plan(cfg))]
    assert order[:2] == ["rtn-as-hqq", "ort-int8-qdq-minmax"]
    assert sorted(order[2:]) == ["ort-int4-rtn", "ort-int8-dynamic"]


def test_a_failing_cell_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, seed_exports):
    real = subject_module.quantize

    def broken(source, recipe, *a, **k):
        if recipe == "ort-int8-dynamic":
            raise RuntimeError("injected")
        return real(source, recipe, *a, **k)

    monkeypatch.setattr(subject_module, "quantize", broken)
    results = run(tiny_config(designs=["A"]), seed_exports(tmp_path / "run"), progress=False)
    status = {(r["recipe"], r["scenario"]): r["status"] for r in results}
    assert status["ort-int8-dynamic", "clean"] == "error" and status["bnb-nf4", "clean"] == "ok"
    failed = next(r for r in results if r["status"] == "error")
    assert failed["error"] == "RuntimeError: injected"


def test_a_missing_backend_is_a_skipped_cell_with_its_reason(tmp_path, monkeypatch, seed_exports):
    def missing():
        raise bnb_recipes.BackendMissing("bitsandbytes does not import here: test")

    monkeypatch.setattr(bnb_recipes, "import_bnb", missing)
    results = run(tiny_config(designs=["B"], scenarios=["clean"]), seed_exports(tmp_path / "run"), progress=False)
    skipped = [r for r in results if r["status"] == "skipped"]
    assert [r["recipe"] for r in skipped] == ["bnb-nf4"]
    assert skipped[0]["reason"] == "bitsandbytes does not import here: test"


def test_calibration_mismatch_is_one_run(tmp_path, seed_exports):
    """QDQ calibrated on clean vs on production, both served production. B's RMSNorm passes the
    shift on, so clean ranges misfit; A's LayerNorm removes it, so calibration hardly matters."""
    config = tiny_config(recipes=["ort-int8-qdq-minmax"], scenarios=["production"],
                         calibration=["clean", "production"])
    results = run(config, seed_exports(tmp_path / "run"), progress=False)
    by = {(r["design"], r["calibration"]): r["metrics"]["centered_sqnr_db"] for r in results}
    assert len(results) == 4
    gain = {d: by[d, "production"] - by[d, "clean"] for d in ("A", "B")}
    # Measured on tiny: B +2.9 dB, A -1.9 dB (small model, quick preset: B +4.8, A +0.8).
    assert gain["B"] > 2 and gain["B"] > gain["A"] + 3, by


def test_replayed_hidden_states(tmp_path, seed_exports):
    states = np.random.default_rng(0).standard_normal((12, 64)).astype(np.float32) + 2
    np.save(tmp_path / "h.npy", states)
    config = tiny_config(recipes=["fp32", "ort-int8-dynamic"], scenarios=["captured"],
                         user_scenarios={"captured": Replay("captured", tmp_path / "h.npy")})
    results = run(config, seed_exports(tmp_path / "run"), progress=False)
    assert all(r["status"] == "ok" for r in results)
    assert all(r["metrics"]["fp32_drift_db"] is None for r in results)  # a capture has no unshifted twin
    # The cells measured the captured rows: the int8 cell's SQNR recomputed from them, one batch.
    x = config.scenario("captured").generate(config.n_requests, config.seq_len, 64)
    assert {row.tobytes() for row in x.reshape(-1, 64)} <= {row.tobytes() for row in states}
    for r in (r for r in results if r["recipe"] == "ort-int8-dynamic"):
        reference = OrtRunnable(seed_exports.exports[r["design"]]).run(x)
        y = OrtRunnable(tmp_path / "run" / r["artifact"]["dir"] / "model.onnx").run(x)
        assert r["metrics"]["centered_sqnr_db"] == pytest.approx(centered_sqnr_db(reference, y), abs=1e-3)


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: np.zeros((4, 65), np.float32), "has width 65, the model's d_model is 64"),
    (lambda: np.full((4, 64), np.nan, np.float32), "256 NaN/Inf values"),
    (lambda: np.zeros((2, 2, 2, 64), np.float32), "expected (n, d) or (b, s, d)"),
])
def test_a_bad_trace_fails_before_anything_is_written(tmp_path, make, needle):
    np.save(tmp_path / "h.npy", make())
    config = tiny_config(scenarios=["captured"], user_scenarios={"captured": Replay("captured", tmp_path / "h.npy")})
    with pytest.raises(UsageError) as e:
        run(config, tmp_path / "run", progress=False)
    assert needle in str(e.value)
    assert not (tmp_path / "run").exists()


def test_an_fp16_overflow_is_recorded_not_fatal(tmp_path, seed_exports):
    """Features of 1e5 overflow fp16 (max 65504): metrics that come out non-finite are recorded as
    absent, nonfinite_rate says why, and the run goes on."""
    from ffnbench.bench.traffic.scenarios import Scenario

    loud = Scenario("loud", outlier_channels=4, outlier_scale=1e5)
    results = run(tiny_config(recipes=["torch-fp16"], scenarios=["loud"], user_scenarios={"loud": loud}),
                  seed_exports(tmp_path / "run"), progress=False)
    assert all(r["status"] == "ok" for r in results)
    assert any(r["metrics"]["nonfinite_rate"] > 0 for r in results)


def test_a_replay_that_calibrates_and_is_evaluated_uses_disjoint_parts(tmp_path, seed_exports):
    states = np.random.default_rng(1).standard_normal((8, 16, 64)).astype(np.float32) + 1
    np.save(tmp_path / "h.npy", states)
    replay = Replay("cap", tmp_path / "h.npy")
    config = tiny_config(designs=["B"], recipes=["ort-int8-qdq-minmax"], scenarios=["cap"], calibration=["cap"],
                         user_scenarios={"cap": replay})
    (record,) = run(config, seed_exports(tmp_path / "run"), progress=False)
    assert record["status"] == "ok"
    manifest = json.loads((tmp_path / "run" / record["artifact"]["dir"] / "manifest.json").read_text())
    evaluated = replay.generate(4, 16, 64)
    assert manifest["calibration"]["shape"] == [2, 16, 64] and len(evaluated) == 6
    assert manifest["calibration"]["sha256"] == Calibration("cap", states[:2]).sha256
    assert manifest["calibration"]["sha256"] != Calibration("cap", evaluated).sha256
