"""RunConfig: presets, TOML files with user and replayed scenarios, and their errors."""

import re
from pathlib import Path

import pytest

from ffnbench.bench.config import DEFAULT_MITIGATED, FULL_MITIGATED, TEXT_DOMAINS, Replay, preset_config
from ffnbench.bench.config_toml import load_toml
from ffnbench.bench.traffic.scenarios import NAMED, Scenario
from ffnbench.errors import UsageError
from ffnbench.quant import FAMILIES, FAMILY_OF, RECIPES

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _names(text: str, start: str, end: str) -> list[str]:
    """The `backticked` names in text between start and end (the docs' list of a preset)."""
    return re.findall(r"`([^`]+)`", text[text.index(start) + len(start):text.index(end, text.index(start))])


def test_presets_run_what_the_docs_say():
    """Against the names the documentation lists, not the code's own constants."""
    runs = (DOCS / "runs-scenarios-metrics.md").read_text()
    quick, default = preset_config("quick"), preset_config("default")
    listed = _names(runs, "Presets: `quick` (", "`default` (")
    assert quick.recipes == [n for n in listed if n in RECIPES] and quick.models == ["small"] == listed[-1:]
    assert quick.scenarios == [n for n in listed if n in NAMED] == ["clean", "production"]
    downstream = (DOCS / "downstream.md").read_text()
    listed = _names(downstream, "| `quick` |", "|\n")
    assert quick.lm_recipes == [n for n in listed if n in RECIPES]
    assert quick.lm_scenarios == [n for n in listed if n in NAMED or n in TEXT_DOMAINS]
    listed = _names(downstream, "| `default` |", "|\n")
    assert default.lm_recipes == [n for n in listed if n.split("+")[0] in RECIPES]
    assert default.lm_scenarios == [n for n in listed if n in NAMED or n in TEXT_DOMAINS][:4]
    assert default.lm_models == list(dict.fromkeys(n for n in listed if n in ("drift", "trained")))
    assert {"clean", "shift-0.5", "shift-8", "magnitude-1", "magnitude-2"} <= set(default.dose_scenarios)


def test_presets():
    quick = preset_config("quick")
    assert quick.designs == ["A", "B"]
    default = preset_config("default")
    assert default.recipes == [*RECIPES, *DEFAULT_MITIGATED] and default.models == ["default"]
    assert "shift-8" in default.scenarios and all(default.mitigations_of(r) for r in DEFAULT_MITIGATED)
    assert set(preset_config("full").designs) == {"A", "B", "ln-swiglu", "rms-gelu"}
    assert set(quick.lm_recipes) <= set(quick.recipes)
    # default: one recipe of each family, every seed; full: every recipe; quick: one seed, for gates
    unmitigated = [r for r in default.lm_recipes if not default.mitigations_of(r)]
    assert {FAMILY_OF[r] for r in unmitigated} == {"fp32", *FAMILIES} == {FAMILY_OF[r] for r in RECIPES}
    assert len(unmitigated) == len(FAMILIES) + 1 and default.lm_seeds == [0, 1, 2]
    assert [r for r in default.lm_recipes if r not in unmitigated] == ["ort-int8-dynamic+rotate"]
    assert set(default.lm_recipes) <= set(default.recipes)  # lm cells run the recipes in both
    assert {"production", "massive", "domain-code"} <= set(default.lm_scenarios) and default.lm_windows >= 32
    # The drift-trained pair is the answer, the trained pair its contrast; the dose-response at both
    # injection points covers each axis from clean to its strongest level.
    assert default.lm_models == ["drift", "trained"] and set(default.dose_inject) == {"ffn-input", "residual"}
    assert set(default.dose_scenarios) == {"clean", "shift-0.5", "shift-1", "shift-2", "shift-4", "shift-8",
                                           "magnitude-1", "magnitude-2"}
    full = preset_config("full")
    assert full.lm_recipes == full.recipes == [*RECIPES, *FULL_MITIGATED] and "shift-8" in full.lm_scenarios
    assert quick.lm_seeds == [0]
    with pytest.raises(UsageError, match="--preset: unknown 'huge'"):
        preset_config("huge")


def test_full_times_llama_7b_for_a_and_b_on_a_few_requests(tmp_path):
    from ffnbench.bench.runner import plan

    full = preset_config("full").check()
    big = full.for_model("llama-7b")
    assert full.models[-1] == "llama-7b" and big.designs == ["A", "B"] and big.scenarios == ["production"]
    assert big.prefill == [1, 128] and big.n_requests < full.n_requests and full.for_model("small") is full
    cells = [c for c in plan(full) if c.model == "llama-7b"]
    assert {c.design for c in cells} == {"A", "B"} and {c.recipe for c in cells} == set(RECIPES)
    assert {c.scenario for c in cells if c.kind == "accuracy"} == {"production"}
    (tmp_path / "a.toml").write_text('preset = "full"\ndesigns = ["A"]\n')  # the run's designs still narrow it
    assert {c.design for c in plan(load_toml(tmp_path / "a.toml").check()) if c.model == "llama-7b"} == {"A"}


def test_presets_are_copies():
    preset_config("quick").designs.append("X")
    assert preset_config("quick").designs == ["A", "B"]


def test_toml_overrides_and_defines_scenarios(tmp_path):
    (tmp_path / "run.toml").write_text(
        'designs = ["B"]\nn_requests = 3\ndelta = 0.2\nscenarios = ["clean", "mine", "captured"]\n'
        '[scenario.mine]\nmean_shift = 2\nshift_fraction = 0.5\n'
        '[scenario.captured]\nreplay = "h.npy"\n')
    cfg = load_toml(tmp_path / "run.toml").check()
    assert cfg.designs == ["B"] and cfg.n_requests == 3 and cfg.delta == 0.2
    assert cfg.scenario("mine") == Scenario("mine", mean_shift=2.0, shift_fraction=0.5)
    assert isinstance(cfg.scenario("captured"), Replay) and cfg.scenario("captured").file == tmp_path / "h.npy"


@pytest.mark.parametrize(("text", "needle"), [
    ("colour = 1\n", "unknown key 'colour'"),
    ("n_requests = \"many\"\n", "'n_requests' must be int, got str"),
    ("n_requests = true\n", "'n_requests' must be int, got bool"),
    ("designs = \"A\"\n", "'designs' must be a list of strings"),
    ("[scenario.x]\nshift = 2\n", "[scenario.x] unknown key 'shift'"),
    ("[scenario.x]\nmean_shift = \"big\"\n", "[scenario.x] 'mean_shift' must be float, got str"),
    ("designs = [\n", "is not valid TOML"),
    ("[per_model.small]\nprefill = [1]\n", "[per_model.small] 'prefill' must be [batch, seq]"),
    ("[per_model.small]\nlm_recipes = [\"fp32\"]\n", "[per_model.small] unknown key 'lm_recipes'"),
])
def test_toml_errors_name_the_key(tmp_path, text, needle):
    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(UsageError) as e:
        load_toml(tmp_path / "run.toml")
    assert needle in str(e.value)


@pytest.mark.parametrize(("axis", "value", "needle"), [
    ("scenarios", ["clean", "nowhere"], "scenarios: unknown 'nowhere'"),
    ("recipes", ["int3"], "recipes: unknown 'int3'"),
    ("designs", [], "designs: empty"),
    ("seed", -1, "seed: must be >= 0"),
    ("device", "gpu", "device: 'gpu' is not cpu or cuda"),
    ("lm_recipes", ["int3"], "lm_recipes: unknown 'int3'"),
    ("lm_scenarios", ["nowhere"], "lm_scenarios: unknown 'nowhere'"),
    ("lm_scenarios", [], "lm_scenarios: empty"),
    ("lm_inject", "middle", "lm_inject: unknown 'middle'"),
    ("lm_windows", 0, "lm_windows: must be positive"),
    ("lm_draws", 0, "lm_draws: must be positive"),
    ("lm_seeds", [], r"lm_seeds: \[\] are not all committed training seeds of the trained design A"),
    ("lm_models", ["fancy"], "lm_models: unknown 'fancy'; choose from trained, drift"),
    ("lm_models", [], "lm_models: empty"),
    ("healthy_delta_bpb", 0.0, "healthy_delta_bpb: must be positive"),
    ("per_model", {"llama-7b": {"prefill": [1, 128]}}, "per_model: 'llama-7b' is not one of the run's models"),
    ("per_model", {"small": {"scenarios": ["nowhere"]}}, "per_model.small: scenarios: unknown 'nowhere'"),
    ("per_model", {"small": {"designs": ["ln-swiglu"]}}, r"per_model.small: its designs \(ln-swiglu\) are none of"),
    ("max_runnable_seconds", 0.0, "max_runnable_seconds: must be positive"),
    ("remeasure_processes", 1, "remeasure_processes: a test over worker processes needs at least 2 a side, got 1"),
])
def test_check_rejects_unknown_names(axis, value, needle):
    cfg = preset_config("quick")
    setattr(cfg, axis, value)
    with pytest.raises(UsageError, match=needle):
        cfg.check()


@pytest.mark.parametrize(("axis", "value", "needle"), [
    ("dose_scenarios", ["domain-code"], "dose_scenarios: 'domain-code' is not a synthetic scenario"),
    ("dose_inject", [], "dose_inject: empty"),
    ("dose_inject", ["middle"], "dose_inject: unknown 'middle'"),
    ("dose_seeds", [7], r"dose_seeds: \[7\] are not all committed training seeds of the trained design A"),
    ("dose_models", ["fancy"], "dose_models: unknown 'fancy'"),
])
def test_check_rejects_a_bad_dose_response(axis, value, needle):
    cfg = preset_config("quick")
    cfg.dose_scenarios = ["clean", "shift-1", "shift-4"]
    setattr(cfg, axis, value)
    with pytest.raises(UsageError, match=needle):
        cfg.check()


def test_lm_seeds_in_a_config_file_are_integers(tmp_path):
    (tmp_path / "run.toml").write_text('lm_seeds = [0, 2]\nlm_draws = 7\n')
    config = load_toml(tmp_path / "run.toml").check()
    assert config.lm_seeds == [0, 2] and config.lm_draws == 7
    (tmp_path / "run.toml").write_text('lm_seeds = ["0"]\n')
    with pytest.raises(UsageError, match="'lm_seeds' must be a list of integers, e.g. lm_seeds = \\[0, 1, 2\\]"):
        load_toml(tmp_path / "run.toml")


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="--config: no file at"):
        load_toml(tmp_path / "absent.toml")


def test_a_replay_cannot_drive_a_whole_model(tmp_path):
    (tmp_path / "run.toml").write_text('lm_scenarios = ["captured"]\n[scenario.captured]\nreplay = "h.npy"\n')
    with pytest.raises(UsageError, match="lm_scenarios: 'captured' replays hidden states, and a whole model reads"):
        load_toml(tmp_path / "run.toml").check()


def test_a_replay_cannot_calibrate_a_whole_model(tmp_path):
    (tmp_path / "run.toml").write_text('lm_recipes = ["ort-int8-qdq-minmax"]\ncalibration = ["captured"]\n'
                                       '[scenario.captured]\nreplay = "h.npy"\n')
    with pytest.raises(UsageError, match="calibration: 'captured' replays hidden states, which cannot calibrate"):
        load_toml(tmp_path / "run.toml").check()


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_example_config_loads_and_checks(example):
    config = load_toml(example).check()
    assert config.recipes and set(config.whole_models) <= {*config.user_whole, "smollm2"}


def test_the_shipped_smollm2_example_plans_every_recipe_on_every_text_as_design_b():
    from ffnbench.bench.runner import plan

    config = load_toml(Path(__file__).resolve().parents[1] / "examples" / "smollm2.toml").check()
    cells = [c for c in plan(config) if c.kind == "whole"]
    assert {c.design for c in cells} == {"B"} and {c.model for c in cells} == {"smollm2"}
    assert len(cells) == len(config.lm_recipes) * len(config.lm_scenarios) and len(cells) == len(plan(config))
    assert config.whole_spec("smollm2").path.is_file()  # installed by `make venv`, by hash
