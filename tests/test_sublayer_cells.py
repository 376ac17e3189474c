"""The sublayer subject and its accuracy cell: artifacts named by the export they come from and found
again by content, a corrupted one rebuilt, and the cell measured against fp32 torch."""

import numpy as np

from ffnbench.bench.cells import subject as subject_module
from ffnbench.bench.cells import sublayer_cells
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.cells.metrics import ALL_METRICS
from ffnbench.bench.config import RunConfig
from ffnbench.bench.runner import Cell
from ffnbench.errors import UsageError


def config() -> RunConfig:
    return RunConfig(models=["tiny"], designs=["A"], recipes=["fp32", "ort-int8-dynamic"], scenarios=["clean"],
                     n_requests=2, seq_len=8, latency=LatencyConfig(enabled=False))


def test_an_artifact_is_found_by_content_and_rebuilt_when_corrupted(tmp_path, seed_exports, monkeypatch):
    artifacts = seed_exports(tmp_path / "run") / "artifacts"
    first = sublayer_cells.Subject(config(), "A", "tiny", artifacts)
    out, _ = first.artifact_job("ort-int8-dynamic", None)
    assert out.name.startswith("ort-int8-dynamic-A-") and first.export.path.parent.parent == artifacts
    first.runnable("ort-int8-dynamic", None)
    calls, real = [], subject_module.quantize
    monkeypatch.setattr(subject_module, "quantize", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    sublayer_cells.Subject(config(), "A", "tiny", artifacts).runnable("ort-int8-dynamic", None)
    assert calls == []  # the same content: found
    (out / "model.onnx").write_bytes(b"not an onnx model")
    sublayer_cells.Subject(config(), "A", "tiny", artifacts).runnable("ort-int8-dynamic", None)
    assert calls == ["ort-int8-dynamic"]  # its hash no longer matches its manifest: built again


def test_a_module_recipes_artifact_is_named_by_the_export_too(tmp_path, seed_exports):
    """The names every sublayer artifact always had: a bitsandbytes artifact names the export's hash,
    so it changes with the export although it quantizes the block."""
    subject = sublayer_cells.Subject(config(), "A", "tiny", seed_exports(tmp_path / "run") / "artifacts")
    before, _ = subject.artifact_job("bnb-nf4", None)
    subject.export.manifest["sha256"] = "0" * 64
    after, _ = subject.artifact_job("bnb-nf4", None)
    assert before.name.startswith("bnb-nf4-A-") and before != after


def test_an_accuracy_cell_measures_every_metric_against_fp32(tmp_path, seed_exports):
    subject = sublayer_cells.Subject(config(), "A", "tiny", seed_exports(tmp_path / "run") / "artifacts")
    fp32 = sublayer_cells.measure(subject, Cell("A", "tiny", "fp32", "clean", None))
    int8 = sublayer_cells.measure(subject, Cell("A", "tiny", "ort-int8-dynamic", "clean", None))
    for record in (fp32, int8):
        assert record["status"] == "ok" and set(record["metrics"]) == set(ALL_METRICS)
    assert fp32["metrics"]["sqnr_db"] > 80 > int8["metrics"]["sqnr_db"] > 10


class NoTaps:
    def run_with_taps(self, x):
        raise UsageError("this artifact has no tap outputs")

    def run(self, x):
        return x * 2


def test_evaluate_says_why_taps_are_unavailable():
    x = np.ones((2, 3, 4), np.float32)
    y, taps = sublayer_cells.evaluate(NoTaps(), [x[:1], x[1:]])
    assert taps == "this artifact has no tap outputs" and np.array_equal(y, 2 * x)


def test_a_reference_is_computed_once_a_scenario(tmp_path, seed_exports):
    subject = sublayer_cells.Subject(config(), "A", "tiny", seed_exports(tmp_path / "run") / "artifacts")
    assert subject.reference("production") is subject.reference("production")
    assert subject.reference("production")[0].shape == (2, 8, subject.block.cfg.d_model)
