"""Whole-model (lm) cells: the trained pair exported whole, its FFN sublayers quantized, measured
under synthetic and real drift against fp32 torch on the same text."""

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ffnbench.bench import RunConfig, run
from ffnbench.bench.analysis import downstream
from ffnbench.bench.cells import lm_cells
from ffnbench.bench.cells import subject as subject_module
from ffnbench.bench.cells.cell_record import finite
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.cells.lm_cells import LMSubject, windows
from ffnbench.bench.cells.lm_metrics import LM_METRICS
from ffnbench.bench.cells.lm_runnables import LMOrt
from ffnbench.bench.gate.checks import checks
from ffnbench.bench.gate.gate import gate, write_baseline
from ffnbench.bench.report import report
from ffnbench.bench.studies import DownstreamConfig
from ffnbench.bench.traffic.scenarios import Scenario
from ffnbench.errors import UsageError
from ffnbench.export.lm_export import feeds
from ffnbench.models.lm import CausalLM, LMConfig
from ffnbench.quant import RECIPES, Calibration, batch_invariant, quantize
from ffnbench.quant.ort_recipes import quantized_matmuls

LM_RECIPES = ["fp32", "ort-int8-dynamic", "bnb-nf4", "ort-int8-qdq-minmax"]  # the last built by workers
OFF = LatencyConfig(enabled=False)
QUANTIZED_HERE: list[str] = []  # the recipes lm_run quantized in this process
ALL_LM_CELLS: list[dict] = []  # every cell of lm_run, both designs and seeds


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, seed_exports):
    """Both designs, two training seeds each (what the downstream verdict needs, at its smallest):
    every quick lm recipe and a calibrated one, clean, production and the real second domain, 6
    held-out windows each, a synthetic drift in 3 draws. Returns design B's seed-0 cells (B has three
    FFN MatMuls a layer) by (recipe, scenario); `pair_run` gives all of them."""
    out = seed_exports(tmp_path_factory.mktemp("lm") / "run")
    config = RunConfig(models=["tiny"], recipes=LM_RECIPES, scenarios=["clean"], n_requests=1,
                       seq_len=4, latency=OFF,
                       downstream=DownstreamConfig(recipes=LM_RECIPES, scenarios=["clean", "production", "domain-code"],
                                                   windows=6, seeds=[0, 1], draws=3))
    quantize_here = subject_module.quantize

    def quantize_lm(source, recipe, out, *a, **k):  # a whole model's artifacts are named lm-...
        QUANTIZED_HERE.extend([recipe] if out.name.startswith("lm-") else [])
        return quantize_here(source, recipe, out, *a, **k)

    with pytest.MonkeyPatch.context() as patch:  # what this process quantizes, the workers aside
        patch.setattr(subject_module, "quantize", quantize_lm)
        cells = [c for c in run(config, out, progress=False) if c["kind"] == "lm"]
    report.write(out)
    ALL_LM_CELLS.extend(cells)
    return config, out, {(c["recipe"], c["scenario"]): c for c in cells if (c["design"], c["seed"]) == ("B", 0)}


def test_every_lm_cell_measures_every_metric(lm_run):
    _, _, cells = lm_run
    assert len(cells) == len(LM_RECIPES) * 3 and all(c["status"] == "ok" for c in ALL_LM_CELLS), cells
    for cell in cells.values():
        assert set(LM_METRICS) <= cell["metrics"].keys()
        assert all(cell["metrics"][m] is not None for m in LM_METRICS), cell["metrics"]
        assert len(cell["layers"]["spike_ratio"]) == 4 and cell["inject"] == "ffn-input"
    assert cells[("fp32", "clean")]["metrics"]["delta_bpb"] == pytest.approx(0.0, abs=1e-5)  # ORT vs torch
    for recipe in LM_RECIPES[1:]:  # quantization changes the predictions, measurably
        assert cells[(recipe, "clean")]["metrics"]["kl_to_fp32"] > 1e-5


def test_a_calibrated_artifact_built_by_the_workers_is_the_one_the_run_would_build(lm_run, tmp_path):
    """The run quantizes calibrated ONNX Runtime recipes in worker processes, meanwhile measuring the
    other cells; quantizing the same job here gives the same file."""
    config, out, cells = lm_run
    assert set(QUANTIZED_HERE) == {"bnb-nf4", "fp32"}  # every ONNX Runtime artifact came from the workers
    cell = cells[("ort-int8-qdq-minmax", "clean")]
    subject = LMSubject(config, "B", 0, out / "artifacts")
    built, job = subject.artifact_job("ort-int8-qdq-minmax", "clean")
    assert built.as_posix().endswith(cell["artifact"]["dir"])
    again = quantize(job.pop("source"), job.pop("recipe"), tmp_path / "again", **job)
    assert again.manifest["sha256"] == cell["artifact"]["sha256"] and cell["metrics"]["kl_to_fp32"] > 1e-5


def test_a_calibrated_lm_recipe_is_calibrated_on_its_calibration_scenario_whatever_it_serves(lm_run):
    """The QDQ cells served on production and on code read the artifact calibrated on `clean`
    training text (the run's calibration), the same file as the clean cell's: a run whose prebuild
    and measurement both calibrated on the served scenario would record production's data here."""
    config, out, cells = lm_run
    expected = LMSubject(config, "B", 0, out / "artifacts").calibration("clean").describe()
    dirs = set()
    for scenario in ("clean", "production", "domain-code"):
        cell = cells[("ort-int8-qdq-minmax", scenario)]
        manifest = json.loads((out / cell["artifact"]["dir"] / "manifest.json").read_text())
        assert cell["calibration"] == "clean" and manifest["calibration"] == expected, scenario
        dirs.add(cell["artifact"]["dir"])
    assert len(dirs) == 1


def test_fp32_agrees_with_torch_in_every_runtime(lm_run):
    config, out, cells = lm_run
    for scenario in ("clean", "production", "domain-code"):  # the ORT export, drift fed as inputs
        metrics = cells[("fp32", scenario)]["metrics"]
        assert metrics["kl_to_fp32"] <= 1e-6 and metrics["top1_agreement"] >= 0.999
    subject = LMSubject(config, "B", 0, out / "artifacts")  # finds the run's export by content
    ref_logits, _ = subject.reference("production")
    for runnable in (subject.reference_runnable, LMOrt(subject.export.path)):
        logits, _ = subject.evaluate(runnable, "production")
        assert np.max(np.abs(logits - ref_logits)) <= 1e-4


def test_the_export_matches_torch_and_only_ffn_matmuls_quantize(lm_run):
    _, out, cells = lm_run
    export = json.loads(next((out / "artifacts").glob("lm-export-B-*/manifest.json")).read_text())
    assert export["parity"]["max_abs_err"] <= 1e-4 and export["opset"] == 23
    assert len(export["ffn_matmuls"]) == 3 * 4 and export["ops"]["Attention"] == 4
    int8 = json.loads((out / cells[("ort-int8-dynamic", "clean")]["artifact"]["dir"] / "manifest.json").read_text())
    assert int8["ops"]["MatMulInteger"] == 12 and int8["ops"]["Attention"] == 4
    assert int8["ops"]["MatMul"] == export["ops"]["MatMul"] - 12  # attention and head stay fp32


ORT_KERNELS = {"ort-int8-dynamic": "MatMulInteger", "ort-int8-dynamic-fullrange": "MatMulInteger",
               "ort-int4-rtn": "com.microsoft.MatMulNBits", "ort-int4-hqq": "com.microsoft.MatMulNBits",
               "ort-nf4": "com.microsoft.MatMulBnb4", "ort-fp4": "com.microsoft.MatMulBnb4"}


def test_every_recipe_quantizes_exactly_the_ffn_matmuls_as_its_graph_shows(lm_run, tmp_path):
    """Read from each quantized graph, not copied from the request: the quantized set is the FFN set
    for every ONNX Runtime recipe (the run's QDQ artifact included), and the module recipes swap the
    FFN layers only. int4 once quantized every MatMul, attention's and the head's too."""
    _, out, cells = lm_run
    export_dir = next((out / "artifacts").glob("lm-export-B-*"))
    ffn = json.loads((export_dir / "manifest.json").read_text())["ffn_matmuls"]
    weight_matmuls = json.loads((export_dir / "manifest.json").read_text())["ops"]["MatMul"]
    assert len(ffn) == 12 and weight_matmuls > 12
    for recipe, kernel in ORT_KERNELS.items():
        artifact = quantize(export_dir / "model.onnx", recipe, tmp_path / recipe)
        graph = onnx.load(str(artifact.path))
        assert artifact.manifest["quantized_nodes"] == ffn, recipe
        assert artifact.manifest["ops"][kernel] == 12 and artifact.manifest["ops"]["MatMul"] == weight_matmuls - 12
        assert quantized_matmuls(onnx.load(str(export_dir / "model.onnx")), graph) == ffn
    qdq = json.loads((out / cells[("ort-int8-qdq-minmax", "clean")]["artifact"]["dir"] / "manifest.json").read_text())
    assert qdq["quantized_nodes"] == ffn
    subject = LMSubject(lm_run[0], "B", 0, out / "artifacts")
    for recipe in ("bnb-int8", "bnb-nf4", "torch-fp16"):
        model = quantize(subject.model, recipe, tmp_path / recipe).module
        changed = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)
                   and (type(m) is not nn.Linear or m.weight.dtype != torch.float32)}
        assert changed and all(".ffn." in name for name in changed), (recipe, changed)
        assert len(changed) == 12, (recipe, sorted(changed))


def test_a_graph_quantizing_a_non_ffn_matmul_is_read_as_such(lm_run, tmp_path):
    """The reading can fail: quantizing every MatMul (what int4 did) is reported as more than the FFN set."""
    _, out, _ = lm_run
    export = next((out / "artifacts").glob("lm-export-B-*/model.onnx"))
    foreign = tmp_path / "foreign" / "model.onnx"  # no export manifest beside it: every MatMul quantizes
    foreign.parent.mkdir()
    shutil.copyfile(export, foreign)
    everything = quantize(foreign, "ort-int8-dynamic", tmp_path / "all")
    ffn = json.loads((export.parent / "manifest.json").read_text())["ffn_matmuls"]
    assert set(ffn) < set(quantized_matmuls(onnx.load(str(export)), onnx.load(str(everything.path))))


def test_drift_alone_is_measured_and_the_fp32_cells_carry_its_statistics(lm_run):
    _, _, cells = lm_run
    production, code = cells[("fp32", "production")], cells[("fp32", "domain-code")]
    assert production["metrics"]["delta_bpb"] > 0.5  # the drift alone costs the trained model bits
    assert all(layer["positive_mean_fraction"] > 0.8 for layer in production["drift_stats"])
    assert len(code["drift_stats"]) == 4 and "drift_stats" not in cells[("bnb-nf4", "clean")]
    assert code["metrics"]["bits_per_byte"] > cells[("fp32", "clean")]["metrics"]["bits_per_byte"]


def test_each_cell_says_where_its_error_enters_and_fp32_whether_an_fp16_norm_overflows(lm_run):
    """fp32 errs nowhere; int8-dynamic's first norm output is exact (nothing upstream is quantized,
    the norm is not) and its error enters at the first quantized MatMul, grows past the second, and
    reaches the later layers' norms from upstream; the fp32 cells record the share of tokens an fp16
    norm would overflow on (B's RMSNorm: none at clean)."""
    _, _, cells = lm_run
    fp32, int8 = cells[("fp32", "clean")]["layers"], cells[("ort-int8-dynamic", "clean")]["layers"]
    assert max(fp32["down_in_rel_err"]) < 1e-4 and len(int8["act_in_rel_err"]) == 4
    assert int8["norm_out_rel_err"][0] < 1e-5 < int8["act_in_rel_err"][0] < int8["down_in_rel_err"][0]
    assert int8["norm_out_rel_err"][3] > int8["act_in_rel_err"][0]
    assert cells[("fp32", "clean")]["layers"]["half_norm_overflow"] == [0.0] * 4
    assert "half_norm_overflow" not in int8


def test_module_recipes_swap_only_the_ffn_linears(tmp_path):
    model = CausalLM(LMConfig(design="A", d_model=64, n_layers=1, n_heads=2, d_ff=128, context=16))
    swapped = quantize(model, "bnb-int8", tmp_path / "q").module
    assert type(swapped.blocks[0].attn.qkv) is nn.Linear and type(swapped.head) is nn.Linear
    assert type(swapped.blocks[0].ffn.mlp.fc1).__name__ == "Linear8bitLt"
    assert type(model.blocks[0].ffn.mlp.fc1) is nn.Linear  # the source is left as it was


def test_text_shorter_than_a_context_is_refused():
    with pytest.raises(UsageError, match="shorter than one context of 129 bytes"):
        windows(np.zeros(100, np.uint8), 4, 128, "tiny text")


def test_the_gate_judges_lm_cells_by_delta_bpb(lm_run, tmp_path):
    _, out, _ = lm_run
    write_baseline(out, tmp_path / "baseline.json")
    assert gate(tmp_path / "baseline.json", out, checks()).passed
    worse = tmp_path / "worse"
    shutil.copytree(out, worse, ignore=shutil.ignore_patterns("artifacts"))
    cells = [json.loads(line) for line in (worse / "results.jsonl").read_text().splitlines()]
    for cell in cells:
        if cell["key"] == "B/trained-s0/bnb-nf4/lm:domain-code/cal=-":
            cell["metrics"]["delta_bpb"] += 0.05
    (worse / "results.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    failures = gate(tmp_path / "baseline.json", worse, checks()).failures
    assert [(f.cell, f.metric) for f in failures] == [("B/trained-s0/bnb-nf4/lm:domain-code/cal=-", "delta_bpb")]


def test_the_report_has_a_downstream_section_with_the_training_curves(lm_run):
    _, out, cells = lm_run
    text = report.write(out).read_text()
    downstream = text[text.index("## Downstream: the trained pair"):text.index("## Caveats")]
    assert (out / "plots" / "training_curves.png").stat().st_size > 10_000
    assert "### A vs B under `production`, per recipe" in downstream
    assert "### Drift at the FFN inputs, measured" in downstream
    kl = [np.mean([c["metrics"]["kl_to_fp32"] for c in ALL_LM_CELLS
                   if (c["design"], c["recipe"], c["scenario"]) == (d, "bnb-nf4", "domain-code")]) for d in "AB"]
    assert f"| bnb-nf4 | {kl[0]:.2e} | {kl[1]:.2e} | " in downstream  # the cells' own numbers, over seeds
    assert "| B | domain-code | " in downstream and "| B | 1 | 1,902,976 | 1200 |" in downstream
    # llama.cpp's figures: the cells' own percentiles over seeds, means with their interval.
    nf4 = [c["metrics"] for c in ALL_LM_CELLS if (c["design"], c["recipe"], c["scenario"]) == ("B", "bnb-nf4",
                                                                                                "domain-code")]
    row = next(line for line in downstream.splitlines() if line.startswith("| domain-code | bnb-nf4 | B | "))
    assert f" | {np.mean([m['kld_p99'] for m in nf4]):.2e} | " in row and row.count("[") == 3, row
    assert f" | {np.mean([m['delta_p_rms'] for m in nf4]):.4f} |" in row


def test_a_changed_checkpoint_stops_a_run_before_anything_is_written(tmp_path, monkeypatch):
    from ffnbench.models import pair

    shutil.copytree(pair.TRAINED, tmp_path / "trained")
    (tmp_path / "trained" / "seeds" / "A" / "0" / "model.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(pair, "TRAINED", tmp_path / "trained")
    config = RunConfig(models=["tiny"], designs=["A"], recipes=["fp32"], scenarios=["clean"], latency=OFF,
                       downstream=DownstreamConfig(recipes=["fp32"]))
    with pytest.raises(UsageError, match="model.safetensors has sha256 .* its manifest wants"):
        run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_whole_model_export_refuses_hidden_state_calibration(lm_run, tmp_path):
    _, out, _ = lm_run
    export = next((out / "artifacts").glob("lm-export-B-*/model.onnx"))
    hidden = Calibration("clean", np.zeros((2, 4, 192), np.float32))
    with pytest.raises(UsageError, match="is a whole language model, which calibrates on text"):
        quantize(export, "ort-int8-qdq-minmax", tmp_path / "q", calibration=hidden)
    assert not (tmp_path / "q").exists()


def test_non_finite_values_are_recorded_as_absent():
    assert finite({"a": 1.0, "b": float("inf"), "c": None}) == {"a": 1.0, "b": None, "c": None}
    assert finite([float("nan"), 2.0]) == [None, 2.0]
    assert lm_cells._max([None, float("inf"), 3.0]) == 3.0 and lm_cells._max([None]) is None


@pytest.fixture(scope="module")
def pair_run(lm_run):
    config, out, _ = lm_run
    return config, out, ALL_LM_CELLS


def test_the_run_writes_its_verdicts_from_the_cells_own_windows(pair_run):
    _, out, cells = pair_run
    found = {(v["scenario"], v["family"]): v for v in downstream.load(out)}
    families = ("int8-dynamic", "nf4", "int8-static")
    assert set(found) == {(s, f) for s in ("clean", "production", "domain-code") for f in families} | {
        ("production", "fp32")}
    assert {c["model"] for c in cells} == {"trained-s0", "trained-s1"} and len(cells) == 2 * 2 * 4 * 3
    for scenario in ("clean", "production", "domain-code"):
        verdict = found[scenario, "int8-dynamic"]
        assert verdict["recipes"] == ["ort-int8-dynamic"] and verdict["seeds"] == 2 and verdict["windows"] == 6

        kl = {d: np.mean([c["metrics"]["kl_to_fp32"] for c in cells
                          if (c["design"], c["recipe"], c["scenario"]) == (d, "ort-int8-dynamic", scenario)])
              for d in ("A", "B")}
        assert verdict["kl_ratio"] == pytest.approx(kl["A"] / kl["B"], rel=1e-5)
        assert verdict["ci95"][0] <= verdict["kl_ratio"] <= verdict["ci95"][1]
        resolved = "A" if verdict["ci95"][1] < 1 else "B" if verdict["ci95"][0] > 1 else "none"
        assert verdict["verdict"] in ("broken", resolved)


def test_a_scenario_whose_fp32_models_the_drift_breaks_gets_no_verdict(pair_run):
    """Under `production` at the FFN inputs the committed models lose bits per byte in fp32 alone;
    the verdict is `broken` exactly where an fp32 cell says so."""
    _, out, cells = pair_run
    found = downstream.load(out)
    for scenario in ("clean", "production", "domain-code"):
        fp32 = [c for c in cells if c["recipe"] == "fp32" and c["scenario"] == scenario]
        unhealthy = any(c["metrics"]["delta_bpb"] > 0.1
                        or c["metrics"]["bits_per_byte"] >= c["reference"]["order0_bits_per_byte"] for c in fp32)
        for c in fp32:  # the reference figures every cell carries are fp32's own, here measured through ORT
            assert c["reference"]["bits_per_byte"] == pytest.approx(c["metrics"]["bits_per_byte"], abs=1e-4)
            assert c["reference"]["delta_bpb"] == pytest.approx(c["metrics"]["delta_bpb"], abs=1e-4)
        assert {v["verdict"] == "broken" for v in found if v["scenario"] == scenario} == {unhealthy}
    assert any(c["metrics"]["delta_bpb"] > 0.1 for c in cells if c["recipe"] == "fp32"
               and c["scenario"] == "production")
    text = (out / "report.md").read_text()
    assert "- `production`: **broken**, no verdict: " in text and (out / "plots" / "downstream_intervals.png").exists()


def test_drift_draws_take_turns_over_the_windows_and_are_the_same_for_both_designs(pair_run):
    config, out, cells = pair_run
    subjects = [LMSubject(config, design, 1, out / "artifacts") for design in ("A", "B")]
    tokens = subjects[0].text("production")[:, :-1]
    batches = [s._feeds("production", tokens, config.seed, 3) for s in subjects]
    (a, order), (b, order_b) = batches
    assert order.tolist() == order_b.tolist() == [0, 3, 1, 4, 2, 5]  # production mixes a draw's windows in one call
    assert [len(f["tokens"]) for f in a] == [2, 2, 2]
    assert not np.allclose(a[0]["drift_offset"], a[1]["drift_offset"])  # each draw shifts other features
    assert [f["drift_scale"].tolist() for f in a] == [f["drift_scale"].tolist() for f in b]
    assert {c["draws"] for c in cells if c["scenario"] == "production"} == {3}
    assert {c["draws"] for c in cells if c["scenario"] == "clean"} == {3}  # clean is synthetic, with no drift
    assert {c["draws"] for c in cells if c["scenario"] == "domain-code"} == {1}  # real text: nothing drawn


def test_each_row_of_an_evaluation_is_its_window_under_its_own_draw(lm_run):
    """Re-derived from the scenario's definition, window by window: window w gets draw w % draws
    (seed + 1000·draw), and the rows come back in window order whatever order the calls ran in."""
    config, out, _ = lm_run
    subject = LMSubject(config, "B", 0, out / "artifacts")
    logits, _ = subject.evaluate(subject.reference_runnable, "production")
    draws = config.downstream.draws
    tokens, spec, n = subject.text("production")[:, :-1], config.scenario("production"), config.downstream.windows
    for w in (0, 1, 4, 5):
        draw = w % draws
        gain, offset, scale = spec.affine(len(range(draw, n, draws)), subject.cfg.d_model,
                                          config.seed + 1000 * draw)
        layers = subject.cfg.n_layers
        alone, _ = subject.reference_runnable.run(feeds(tokens[w:w + 1], np.tile(gain, (layers, 1)),
                                                        offset[None] * subject.feature_std,
                                                        scale[w // draws:w // draws + 1]))
        assert np.max(np.abs(alone[0] - logits[w])) <= 1e-4, w


def test_a_run_measures_each_kind_of_committed_model_on_its_own(tmp_path, monkeypatch, seed_exports):
    """[downstream] pairs names which committed models run: each kind gets its own cells, verdicts and report
    section (here a stand-in "drift" set: seed 1's models as drift seed 0, so the kinds must differ)."""
    from ffnbench.models import pair

    shutil.copytree(pair.TRAINED / "seeds", tmp_path / "trained" / "seeds")
    for design in ("A", "B"):
        shutil.copytree(pair.TRAINED / "seeds" / design / "1", tmp_path / "trained" / "drift" / design / "0")
    monkeypatch.setattr(pair, "TRAINED", tmp_path / "trained")
    config = RunConfig(models=["tiny"], recipes=["fp32", "ort-int8-dynamic"], scenarios=["clean"], n_requests=1,
                       seq_len=4, latency=OFF,
                       downstream=DownstreamConfig(recipes=["fp32", "ort-int8-dynamic"], scenarios=["clean"], windows=4,
                                                   draws=2, seeds=[0], pairs=["trained", "drift"]))
    out = seed_exports(tmp_path / "run")
    cells = [c for c in run(config, out, progress=False) if c["kind"] == "lm"]
    assert {(c["model"], c["pair"]) for c in cells} == {("trained-s0", "trained"), ("drift-s0", "drift")}
    by = {(c["pair"], c["design"], c["recipe"]): c for c in cells}
    for _, design, recipe in by:
        drift, trained = by["drift", design, recipe], by["trained", design, recipe]
        assert drift["metrics"]["bits_per_byte"] != trained["metrics"]["bits_per_byte"]
        assert drift["checkpoint"]["sha256"] == json.loads(
            (pair.TRAINED / "seeds" / design / "1" / "manifest.json").read_text())["sha256"]
    text = report.write(out).read_text()
    assert text.index("## Downstream: the drift-trained pair") < text.index("## Downstream: the trained pair")
    found = downstream.load(out)
    assert sorted(v["pair"] for v in found) == ["drift", "trained"]
    with pytest.raises(UsageError, match=r"\[downstream\] seeds: \[7\] are not all committed training seeds of the "
                                          "drift design"):
        RunConfig(downstream=DownstreamConfig(recipes=["fp32"], seeds=[7], pairs=["drift"])).check()


def test_requests_share_calls_only_where_the_recipe_cannot_tell(lm_run):
    """batch_invariant recipes evaluate a draw's windows in one call, for speed: the same rows as one
    window a call. ORT's dynamic int8 takes one activation range over the call, so batching would
    change what it computes: it keeps one call a window, and the difference is there to see."""
    config, out, _ = lm_run
    spread = Scenario("spread", magnitude_sigma=2.0)  # requests of very different scales, one call each
    subject = LMSubject(dataclasses.replace(config, user_scenarios={"spread": spread}), "B", 0, out / "artifacts")
    assert not batch_invariant(RECIPES["ort-int8-dynamic"]) and not batch_invariant(RECIPES["bnb-int8-outlier"])
    assert all(batch_invariant(RECIPES[r]) for r in ("fp32", "bnb-int8", "bnb-nf4", "ort-int4-rtn", "torch-fp16"))
    for recipe in ("fp32", "bnb-nf4", "ort-int8-dynamic"):
        runnable, _ = subject.runnable(recipe, None)
        alone, _ = subject.evaluate(runnable, "spread")
        together, _ = subject.evaluate(runnable, "spread", batched=True)
        gap = np.max(np.abs(alone - together))
        assert gap <= 1e-4 if recipe != "ort-int8-dynamic" else gap > 1e-3, (recipe, gap)


def test_a_shift_is_the_same_drift_whatever_the_windows_a_cell_reads(lm_run):
    """The feature stds that set every offset come from a fixed set of clean windows, so a dose cell
    ([dose] windows) and a matrix cell ([downstream] windows) of one scenario inject the same drift."""
    config, out, _ = lm_run
    few = LMSubject(config, "B", 0, out / "artifacts")
    many = LMSubject(config, "B", 0, out / "artifacts", windows=16)
    assert few.text("clean").shape[0] != many.text("clean").shape[0]
    assert np.array_equal(few.feature_std, many.feature_std)


def test_a_model_that_learned_the_library_is_read_on_its_held_out_documents(tmp_path, monkeypatch):
    """Clean and synthetic-drift windows come from the corpus the checkpoint's manifest names (the
    library's held-out documents here), the pydoc topics are a text domain of their own, and the
    order-0 reference is fitted on that corpus's training part."""
    from ffnbench.models import corpus
    from ffnbench.models.train import TrainConfig, train

    small = LMConfig(design="B", d_model=32, n_layers=1, n_heads=2, d_ff=64, context=16)
    train(small, TrainConfig(steps=1, batch=2, warmup=1, eval_batch=4096, corpus="library", validation=False),
          tmp_path / "B" / "0", progress=False)
    monkeypatch.setattr(lm_cells, "trained_dir", lambda design, seed, kind: tmp_path / design / str(seed))
    config = RunConfig(models=["tiny"], designs=["B"], recipes=["fp32"],
                       downstream=DownstreamConfig(recipes=["fp32"], seeds=[0], windows=3))
    subject = LMSubject(config, "B", 0, tmp_path / "artifacts")
    library_held_out = corpus.load("library").split()[1].tobytes()
    prose_held_out = corpus.prose().split()[1].tobytes()
    assert subject.home == "library" and subject.checkpoint["corpus_read_sha256"] == corpus.load("library").sha256
    assert all(bytes(w.astype(np.uint8)) in library_held_out for w in subject.text("clean"))
    assert all(bytes(w.astype(np.uint8)) in prose_held_out for w in subject.text("domain-pydoc"))
    # The report's training table says what was held out: documents, not a tail of the bytes.
    from ffnbench.bench.report import downstream as report_downstream

    lm = {("B", "fp32", "clean"): [{"design": "B", "seed": 0, "checkpoint": subject.checkpoint}]}
    text = "\n".join(report_downstream._training(lm, tmp_path, tmp_path, "trained"))
    assert "bytes of documents never trained on held out" in text and "django-5.2.20.tar.gz" in text


def test_the_text_a_model_learned_is_refused_as_a_drift_of_it():
    """For the committed pairs (they learned the pydoc topics) `domain-pydoc` is their clean text."""
    config = RunConfig(models=["tiny"], designs=["A"], recipes=["fp32"],
                       downstream=DownstreamConfig(recipes=["fp32"], seeds=[0], scenarios=["clean", "domain-pydoc"]))
    with pytest.raises(UsageError, match="'domain-pydoc' is the text the trained models learned \\(prose\\)"):
        lm_cells.check(config)
