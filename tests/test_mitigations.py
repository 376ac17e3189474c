"""Mitigations (quant/mitigations.py): each transform, alone and composed, leaves the fp32 model's
output as it was — in torch and through ONNX Runtime, for both designs, as a sublayer and as a whole
model — while changing what a quantizer sees."""

import itertools

import numpy as np
import pytest
import torch

from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.studies import DownstreamConfig
from ffnbench.errors import UsageError
from ffnbench.models import FFNConfig, build_model
from ffnbench.models.lm import CausalLM, Drift, LMConfig
from ffnbench.quant import mitigations

COMBINATIONS = [("shift",), ("smooth",), ("rotate",), ("keep",), ("shift", "smooth"), ("shift", "smooth", "rotate")]


def _shifted(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Hidden states with a positive offset on most features and a few large channels."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 16, d, generator=gen) + 3.0 * (torch.rand(d, generator=gen) < 0.9)
    h[..., :2] *= 30
    return h


@pytest.mark.parametrize(("design", "bias", "mods"), [(d, b, m) for d, b in itertools.product("AB", (True, False))
                                                      for m in COMBINATIONS])
def test_a_transformed_sublayer_computes_what_the_original_did(design, bias, mods):
    block = build_model(FFNConfig(design=design, d_model=64, d_ff=256, bias=bias, residual=False))
    calibration, evaluation = _shifted(4, 64, seed=1), _shifted(4, 64, seed=2)
    transformed, record = mitigations.apply(block, mods, lambda m: m(calibration))
    with torch.no_grad():
        assert torch.allclose(transformed(evaluation), block(evaluation), atol=1e-4, rtol=1e-4)
    assert record["mitigations"] == list(mods) and len(record["layers"]) == 1
    if "shift" in mods or "smooth" in mods or "rotate" in mods:  # what the MLP reads has changed
        with torch.no_grad():
            seen, original = {}, {}
            transformed.forward_with_taps(evaluation, seen)
            block.forward_with_taps(evaluation, original)
        assert not torch.allclose(seen["norm_out"], original["norm_out"], atol=1e-3)
    if mods == ("shift",):  # centred on the calibration data: its channel midpoints are zero
        with torch.no_grad():
            taps: dict = {}
            transformed.forward_with_taps(calibration, taps)
        x = taps["norm_out"].reshape(-1, 64)
        assert torch.allclose(x.amax(0) + x.amin(0), torch.zeros(64), atol=1e-4)


@pytest.mark.parametrize(("design", "alpha"), [("A", 0.5), ("B", 0.5), ("B", 0.8)])
def test_smoothing_follows_smoothquants_formula(design, alpha):
    """s_j = max|X_j|^α / max|W_:,j|^(1−α) on the calibration data: afterwards channel j's largest
    activation is max|X_j|^(1−α)·max|W_j|^(1−α) and its largest weight max|X_j|^α·max|W_j|^α
    (at α = 0.5 the two are equal, SmoothQuant's balance)."""
    block = build_model(FFNConfig(design=design, d_model=64, d_ff=256, residual=False))
    data = _shifted(4, 64)

    def extremes(model) -> tuple[torch.Tensor, torch.Tensor]:
        taps: dict = {}
        with torch.no_grad():
            model.forward_with_taps(data, taps)
        first = [model.mlp.fc1] if design == "A" else [model.mlp.gate, model.mlp.up]
        weight = torch.stack([f.weight.detach().abs().amax(0) for f in first]).amax(0)
        return taps["norm_out"].reshape(-1, 64).abs().amax(0).double(), weight.double()

    act, weight = extremes(block)
    smoothed, _ = mitigations.apply(block, ("smooth",), lambda m: m(data), mitigations.Settings(alpha=alpha))
    act_after, weight_after = extremes(smoothed)
    assert torch.allclose(act_after, act ** (1 - alpha) * weight ** (1 - alpha), rtol=1e-4)
    assert torch.allclose(weight_after, act ** alpha * weight ** alpha, rtol=1e-4)


def test_rotations_are_hadamard_where_the_width_is_a_power_of_two_else_seeded_orthogonal():
    for n in (64, 96):
        r, kind = mitigations.orthogonal(n, seed=3)
        assert torch.allclose(r @ r.T, torch.eye(n), atol=1e-5)
        assert kind == ("hadamard" if n == 64 else "random orthogonal (seed 3)")
    assert torch.equal(mitigations.orthogonal(96, 3)[0], mitigations.orthogonal(96, 3)[0])


def test_keep_marks_a_down_projection_whose_calibration_spike_ratio_exceeds_the_threshold():
    """The spike ratio is lm_metrics.spikes' of the down-projection's input (swish(gate)·up) on the
    calibration data; the layer stays fp32 exactly when it is above the threshold."""
    from ffnbench.bench.cells.lm_metrics import spikes

    block = build_model(FFNConfig(design="B", d_model=64, d_ff=256, residual=False))
    data = _shifted(2, 64)
    taps: dict = {}
    with torch.no_grad():
        block.forward_with_taps(data, taps)
    ratio = spikes((taps["act_out"] * taps["up"]).numpy())[0]
    for threshold, kept in ((ratio * 0.99, True), (ratio * 1.01, False)):
        settings = mitigations.Settings(spike_threshold=threshold)
        out, record = mitigations.apply(block, ("keep",), lambda m: m(data), settings)
        assert record["layers"][0]["spike_ratio"] == pytest.approx(ratio, rel=1e-5)
        assert record["layers"][0]["kept_fp32"] is kept and out.mlp.down.keep_fp32 is kept


@pytest.mark.parametrize("design", ["A", "B"])
def test_a_transformed_whole_model_computes_what_the_original_did(design):
    model = CausalLM(LMConfig(design=design, d_model=64, n_layers=2, n_heads=2, d_ff=256, context=32)).eval()
    tokens = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    drift = Drift(torch.ones(2, 64), torch.full((2, 64), 0.5), torch.ones(3))

    def collect(m):
        with torch.no_grad():
            m(tokens, drift)

    transformed, record = mitigations.apply(model, ("shift", "smooth", "rotate"), collect)
    with torch.no_grad():
        assert torch.allclose(transformed(tokens[:1], drift), model(tokens[:1], drift), atol=1e-4)
    assert len(record["layers"]) == 2 and all("rotation" in layer for layer in record["layers"])


def test_recipe_names_carry_their_mitigations_in_a_fixed_order():
    assert mitigations.parse("ort-int8-dynamic+smooth+shift") == ("ort-int8-dynamic", ("shift", "smooth"))
    assert mitigations.parse("bnb-int8") == ("bnb-int8", ())
    with pytest.raises(UsageError, match=r"unknown mitigation '\+spin'"):
        mitigations.parse("bnb-int8+spin")
    with pytest.raises(UsageError, match="appears twice"):
        mitigations.parse("bnb-int8+shift+shift")


@pytest.mark.parametrize("design", ["A", "B"])
def test_the_transformed_export_runs_in_onnx_runtime_as_the_original_and_quantizes_no_rotation(design, tmp_path):
    import onnxruntime as ort

    from ffnbench.export.lm_export import export_lm, feeds

    model = CausalLM(LMConfig(design=design, d_model=64, n_layers=2, n_heads=2, d_ff=256, context=32)).eval()
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    identity = Drift.identity(2, 64, 2)

    def collect(m):
        with torch.no_grad():
            m(tokens, identity)

    every = ("shift", "smooth", "rotate", "keep")
    transformed, record = mitigations.apply(model, every, collect, mitigations.Settings(spike_threshold=0.0))
    assert all(layer["kept_fp32"] for layer in record["layers"])  # a threshold of 0 keeps every down-projection
    exported = export_lm(transformed, tmp_path / "export")
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], feeds(tokens.numpy(), identity.gain.numpy(), identity.offset.numpy(),
                                        identity.scale.numpy()))[0]
    with torch.no_grad():
        assert np.allclose(got, model(tokens, identity).numpy(), atol=1e-4)
    per_layer = 3 if design == "B" else 2
    assert len(exported.manifest["ffn_matmuls"]) == 2 * (per_layer - 1)  # the kept down-projections left out


def test_mitigated_recipes_are_checked_in_the_run_config(tmp_path):
    from ffnbench.bench.config_toml import load_toml

    def config(recipes: str, lm: str) -> None:
        path = tmp_path / "c.toml"
        path.write_text(f'models = ["tiny"]\nrecipes = {recipes}\n[latency]\nenabled = false\n[downstream]\n'
                        f'recipes = {lm}\n')
        load_toml(path).check()

    config('["fp32", "bnb-int8+keep"]', '["fp32", "bnb-int8+keep"]')
    config('["fp32", "bnb-int8+keep"]', '["fp32"]')  # on sublayers alone
    with pytest.raises(UsageError, match="mitigates fp32"):
        config('["fp32+shift"]', '["fp32+shift"]')
    with pytest.raises(UsageError, match=r"\+keep leaves a quantized layer in fp32"):
        config('["torch-fp16+keep"]', '["torch-fp16+keep"]')
    with pytest.raises(UsageError, match=r"unknown mitigation '\+spin'"):
        config('["bnb-int8+spin"]', '["bnb-int8+spin"]')


def test_mitigations_false_leaves_the_mitigated_recipes_out_of_a_run_or_of_one_model_size():
    from ffnbench.bench.config import RunConfig
    from ffnbench.bench.runner import plan

    recipes = ["fp32", "ort-int8-dynamic", "ort-int8-dynamic+rotate"]
    run = RunConfig(models=["tiny", "small"], recipes=recipes, scenarios=["clean"],
                    latency=LatencyConfig(enabled=False),
                    downstream=DownstreamConfig(recipes=recipes, scenarios=["clean"], seeds=[0]))
    assert {c.recipe for c in plan(run)} == set(recipes)
    assert {c.recipe for c in plan(RunConfig(**{**vars(run), "mitigations": False}).check())} == set(recipes[:2])
    one_size = RunConfig(**{**vars(run), "per_model": {"small": {"mitigations": False}}}).check()
    mitigated = {(c.model, c.kind) for c in plan(one_size) if "+" in c.recipe}
    assert mitigated == {("tiny", "accuracy"), ("trained-s0", "lm")}


@pytest.mark.parametrize("design", ["A", "B"])
def test_a_transformed_sublayer_export_runs_in_onnx_runtime_as_the_original(design, tmp_path):
    """ONNX Runtime runs the mitigated export as torch runs the original block; the export lists the
    MatMuls a recipe may quantize (not the rotations, not a kept layer), ONNX Runtime quantizes those
    alone, and the rotated down-projection input is tapped, so U8S8 saturation reads what the int8
    MatMul reads."""
    import onnxruntime as ort

    from ffnbench.bench.machine import u8s8
    from ffnbench.export import export_onnx
    from ffnbench.quant import quantize

    block = build_model(FFNConfig(design=design, d_model=64, d_ff=256, residual=False))
    calibration, evaluation = _shifted(4, 64, seed=1), _shifted(2, 64, seed=2)
    transformed, _ = mitigations.apply(block, ("shift", "smooth", "rotate", "keep"), lambda m: m(calibration),
                                       mitigations.Settings(spike_threshold=0.0))
    exported = export_onnx(transformed, tmp_path / "export", taps=True)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"hidden": evaluation.numpy()}),
                       strict=True))
    with torch.no_grad():
        assert np.allclose(outputs["output"], block(evaluation).numpy(), atol=1e-4)
    first_layers = 2 if design == "B" else 1
    assert len(exported.manifest["ffn_matmuls"]) == first_layers  # the kept down-projection left out
    artifact = quantize(exported.path, "ort-int8-dynamic", tmp_path / "int8")
    assert artifact.manifest["quantized_nodes"] == exported.manifest["ffn_matmuls"]
    assert "down_in" in outputs

    transformed.mlp.down.keep_fp32 = False  # now the rotated down-projection is quantized too
    exported = export_onnx(transformed, tmp_path / "export-down", taps=True)
    artifact = quantize(exported.path, "ort-int8-dynamic", tmp_path / "int8-down")
    assert len(artifact.manifest["quantized_nodes"]) == first_layers + 1
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    taps = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"hidden": evaluation.numpy()}),
                    strict=True))
    assert 0 <= u8s8.saturation_rate(artifact.path, [taps]) <= 1


def test_a_mitigated_module_artifact_is_rebuilt_with_its_transform(tmp_path):
    """A process that rebuilds a bitsandbytes artifact from its directory alone (the memory probe,
    remeasure workers) gets the mitigated block saved beside it, not the seed's."""
    from ffnbench.quant import load_artifact, quantize

    block = build_model(FFNConfig(design="B", d_model=64, d_ff=256, residual=False))
    data = _shifted(2, 64)
    transformed, record = mitigations.apply(block, ("keep",), lambda m: m(data),
                                            mitigations.Settings(spike_threshold=0.0))
    transformed.source = {**block.source, "mitigation": record}
    quantize(transformed, "bnb-int8", tmp_path / "bnb")
    rebuilt = load_artifact(tmp_path / "bnb").module
    assert type(rebuilt.mlp.down) is torch.nn.Linear and type(rebuilt.mlp.gate) is not torch.nn.Linear
    quantize(block, "bnb-int8", tmp_path / "plain")
    assert type(load_artifact(tmp_path / "plain").module.mlp.down) is not torch.nn.Linear


def test_a_run_measures_mitigated_recipes_on_sublayers_beside_their_parents(tmp_path):
    """Every scenario, each mitigated recipe calibrated, its fp32 equivalence recorded, its time a
    ratio of its parent's from the same timing loop, its memory measured from its own artifact, the
    report's sublayer section setting it against its parent, and the gate taking it like any recipe."""
    import json

    from ffnbench.bench import runner
    from ffnbench.bench.config import RunConfig
    from ffnbench.bench.gate.checks import checks
    from ffnbench.bench.gate.gate import gate, write_baseline
    from ffnbench.bench.report.report import write

    recipes = ["fp32", "ort-int8-dynamic", "ort-int8-dynamic+rotate"]  # a module artifact's rebuild: above
    config = RunConfig(models=["tiny"], recipes=recipes, scenarios=["clean", "massive"], calibration=["massive"],
                       calibration_requests=4, n_requests=4,
                       latency=LatencyConfig(min_iterations=3, min_seconds=0.05, max_seconds=0.3, warmup=1,
                                             diagnose=False))
    runner.run(config, tmp_path / "run", progress=False)
    cells = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert all(c["status"] == "ok" for c in cells), [c.get("error") for c in cells if c["status"] != "ok"]
    rotated = [c for c in cells if c["recipe"] == "ort-int8-dynamic+rotate"]
    assert {(c["kind"], c["scenario"] or c["shape"]["name"]) for c in rotated} == \
        {("accuracy", "clean"), ("accuracy", "massive"), ("latency", "decode"), ("latency", "prefill")}
    for cell in (c for c in rotated if c["kind"] == "accuracy"):
        assert cell["calibration"] == "massive" and cell["mitigation"]["mitigations"] == ["rotate"]
        assert cell["mitigation"]["fp32_max_abs_err"] <= 1e-4 * cell["mitigation"]["fp32_max_abs_output"]
        assert len(cell["requests"]["centered_noise"]) == 4
    for cell in (c for c in cells if c["kind"] == "latency" and "+" in c["recipe"]):
        assert cell["metrics"]["vs_parent"]["ratio"] > 0 and cell["metrics"]["resident_mb"] is not None
    text = write(tmp_path / "run").read_text()
    assert "### On sublayers (model `tiny`)" in text and "| `ort-int8-dynamic+rotate@massive` | massive |" in text
    baseline = write_baseline(tmp_path / "run", tmp_path / "baseline.json")
    better = next(k for k, c in baseline["cells"].items()
                  if (c["recipe"], c["scenario"]) == ("ort-int8-dynamic+rotate", "massive"))
    baseline["cells"][better]["metrics"]["centered_sqnr_db"] += 3.0
    (tmp_path / "better.json").write_text(json.dumps(baseline))
    caught = gate(tmp_path / "better.json", tmp_path / "run", checks(), only="accuracy")
    assert [(f.cell, f.metric) for f in caught.failures] == [(better, "centered_sqnr_db")], caught.failures


def test_a_run_measures_mitigated_recipes_on_the_trained_pair_beside_their_parents(tmp_path, seed_exports):
    """Calibrated like QDQ (the cell names its scenario), the transformed model's fp32 equivalence
    measured and recorded, ONNX Runtime quantizing the transformed export's FFN MatMuls but not its
    rotations, and the report setting each mitigated recipe against its parent."""
    import json

    from ffnbench.bench import runner
    from ffnbench.bench.config import RunConfig
    from ffnbench.bench.report.report import write

    recipes = ["fp32", "ort-int8-dynamic", "ort-int8-dynamic+rotate", "bnb-int8+keep"]
    config = RunConfig(models=["tiny"], designs=["B"], recipes=recipes, scenarios=["clean"],
                       latency=LatencyConfig(enabled=False),
                       downstream=DownstreamConfig(recipes=recipes, scenarios=["clean"], seeds=[0], windows=4, draws=1),
                       calibration=["clean"], calibration_requests=4)
    runner.run(config, seed_exports(tmp_path / "run"), progress=False)
    cells = {c["recipe"]: c for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()
             if (c := json.loads(line)).get("kind") == "lm"}
    assert all(c["status"] == "ok" for c in cells.values()), [c.get("error") for c in cells.values()]
    rotated = cells["ort-int8-dynamic+rotate"]
    assert rotated["calibration"] == "clean" and rotated["mitigation"]["mitigations"] == ["rotate"]
    assert rotated["mitigation"]["fp32_max_abs_err"] <= 1e-4 * rotated["mitigation"]["fp32_max_abs_output"]
    artifact = json.loads((tmp_path / "run" / rotated["artifact"]["dir"] / "manifest.json").read_text())
    assert len(artifact["quantized_nodes"]) == 4 * 3  # the pair's four layers, three FFN MatMuls each
    assert "kept_fp32" in cells["bnb-int8+keep"]["mitigation"]["layers"][0]
    text = write(tmp_path / "run").read_text()
    assert "| trained pair | B | clean | `ort-int8-dynamic+rotate@clean` / `ort-int8-dynamic` |" in text


def test_a_variant_of_a_mitigated_recipe_sets_its_mitigations_parameters(tmp_path):
    """alpha, spike_threshold and the rotation seed come from a [recipe] variant of a mitigated recipe, are
    checked against the mitigations it applies, and reach the transform (recorded in its cells)."""
    from ffnbench.bench.cells import sublayer_cells
    from ffnbench.bench.config import RunConfig

    def config(**spec) -> RunConfig:
        return RunConfig(models=["tiny"], recipes=["fp32", "mine"], scenarios=["clean"],
                         latency=LatencyConfig(enabled=False), user_recipes={"mine": spec}).check()

    chosen = config(base="ort-int8-dynamic+smooth", alpha=0.9)
    assert chosen.recipe_spec("mine") == ("ort-int8-dynamic", {}) and chosen.mitigations_of("mine+rotate") == \
        ("smooth", "rotate")
    assert chosen.mitigation_settings("mine") == mitigations.Settings(alpha=0.9)
    assert chosen.unmitigated("mine+rotate") == "ort-int8-dynamic" and chosen.unmitigated("fp32") is None
    both = config(base="bnb-int8+keep", threshold=4.0, spike_threshold=3.0)  # LLM.int8's threshold stays its own
    assert both.recipe_spec("mine") == ("bnb-int8", {"threshold": 4.0})
    assert both.mitigation_settings("mine") == mitigations.Settings(spike_threshold=3.0)
    subject = sublayer_cells.Subject(chosen, "B", "tiny", tmp_path)
    assert subject.mitigated("mine", "clean")[0].source["mitigation"]["alpha"] == 0.9
    for spec, message in (({"base": "ort-int8-dynamic+rotate", "alpha": 0.9}, "alpha sets \\+smooth"),
                          ({"base": "ort-int8-dynamic+smooth", "alpha": 1.5}, "within \\[0, 1\\]"),
                          ({"base": "bnb-int8+keep", "spike_threshold": 0.5}, "must be > 1"),
                          ({"base": "bnb-int8+keep", "spike_threshold": "8"}, "must be a number"),
                          ({"base": "ort-int8-dynamic+rotate", "seed": 1.5}, "non-negative integer"),
                          ({"base": "ort-int8-dynamic+spin"}, "unknown mitigation")):
        with pytest.raises(UsageError, match=message):
            config(**spec)
