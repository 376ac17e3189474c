"""RunConfig: presets, TOML files with user and replayed scenarios, the studies it composes, what
a manifest records of it, and their errors."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.config import DEFAULT_MITIGATED, FULL_MITIGATED, RunConfig, preset_config
from ffnbench.bench.config_toml import load_toml
from ffnbench.bench.studies import DoseConfig, DownstreamConfig, WholeConfig
from ffnbench.bench.traffic.scenarios import NAMED, TEXT_DOMAINS, Replay, Scenario
from ffnbench.errors import UsageError
from ffnbench.quant import FAMILIES, FAMILY_OF, RECIPES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


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
    assert quick.downstream.recipes == [n for n in listed if n in RECIPES]
    assert quick.downstream.scenarios == [n for n in listed if n in NAMED or n in TEXT_DOMAINS]
    listed = _names(downstream, "| `default` |", "|\n")
    assert default.downstream.recipes == [n for n in listed if n.split("+")[0] in RECIPES]
    assert default.downstream.scenarios == [n for n in listed if n in NAMED or n in TEXT_DOMAINS][:4]
    assert default.downstream.pairs == list(dict.fromkeys(n for n in listed if n in ("drift", "trained")))
    assert {"clean", "shift-0.5", "shift-8", "magnitude-1", "magnitude-2"} <= set(default.dose.scenarios)


def test_presets():
    quick = preset_config("quick")
    assert quick.designs == ["A", "B"]
    default = preset_config("default")
    assert default.recipes == [*RECIPES, *DEFAULT_MITIGATED] and default.models == ["default"]
    assert "shift-8" in default.scenarios and all(default.mitigations_of(r) for r in DEFAULT_MITIGATED)
    assert set(preset_config("full").designs) == {"A", "B", "ln-swiglu", "rms-gelu"}
    assert set(quick.downstream.recipes) <= set(quick.recipes)
    # default: one recipe of each family, every seed; full: every recipe; quick: one seed, for gates
    unmitigated = [r for r in default.downstream.recipes if not default.mitigations_of(r)]
    assert {FAMILY_OF[r] for r in unmitigated} == {"fp32", *FAMILIES} == {FAMILY_OF[r] for r in RECIPES}
    assert len(unmitigated) == len(FAMILIES) + 1 and default.downstream.seeds == [0, 1, 2]
    assert [r for r in default.downstream.recipes if r not in unmitigated] == ["ort-int8-dynamic+rotate"]
    assert set(default.downstream.recipes) <= set(default.recipes)  # lm cells run the recipes in both
    assert {"production", "massive", "domain-code"} <= set(default.downstream.scenarios)
    assert default.downstream.windows >= 32
    # The drift-trained pair is the answer, the trained pair its contrast; the dose-response at both
    # injection points covers each axis from clean to its strongest level.
    assert default.downstream.pairs == ["drift", "trained"] and set(default.dose.inject) == {"ffn-input", "residual"}
    assert set(default.dose.scenarios) == {"clean", "shift-0.5", "shift-1", "shift-2", "shift-4", "shift-8",
                                           "magnitude-1", "magnitude-2"}
    full = preset_config("full")
    assert full.downstream.recipes == full.recipes == [*RECIPES, *FULL_MITIGATED]
    assert "shift-8" in full.downstream.scenarios
    assert quick.downstream.seeds == [0]
    with pytest.raises(UsageError, match="--preset: unknown 'huge'"):
        preset_config("huge")


def test_full_times_llama_7b_for_a_and_b_on_a_few_requests(tmp_path):
    from ffnbench.bench.runner import plan

    full = preset_config("full").check()
    big = full.for_model("llama-7b")
    assert full.models[-1] == "llama-7b" and big.designs == ["A", "B"] and big.scenarios == ["production"]
    assert big.latency.prefill == (1, 128) and big.n_requests < full.n_requests and full.for_model("small") is full
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
    ("[per_model.small]\ndiagnose = false\n", "[per_model.small] unknown key 'diagnose'"),
])
def test_toml_errors_name_the_key(tmp_path, text, needle):
    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(UsageError) as e:
        load_toml(tmp_path / "run.toml")
    assert needle in str(e.value)


def _set(cfg: RunConfig, name: str, value) -> RunConfig:
    """cfg with one setting changed: a field, or `study.key` of one of its studies."""
    study, _, key = name.rpartition(".")
    if study:
        setattr(cfg, study, dataclasses.replace(getattr(cfg, study), **{key: value}))
    else:
        setattr(cfg, name, value)
    return cfg


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("scenarios", ["clean", "nowhere"], "scenarios: unknown 'nowhere'"),
    ("recipes", ["int3"], "recipes: unknown 'int3'"),
    ("designs", [], "designs: empty"),
    ("seed", -1, "seed: must be >= 0"),
    ("device", "gpu", "device: 'gpu' is not cpu or cuda"),
    ("per_model", {"llama-7b": {"prefill": [1, 128]}}, "per_model: 'llama-7b' is not one of the run's models"),
    ("per_model", {"small": {"scenarios": ["nowhere"]}}, "per_model.small: scenarios: unknown 'nowhere'"),
    ("per_model", {"small": {"designs": ["ln-swiglu"]}}, r"per_model.small: its designs \(ln-swiglu\) are none of"),
    ("per_model", {"small": {"warmup": -1}}, r"per_model.small: \[latency\] warmup: must be >= 0, got -1"),
    # each study's own check, called by the run's (tests/test_studies.py holds them all)
    ("latency.max_runnable_seconds", 0.0, r"\[latency\] max_runnable_seconds: must be positive"),
    ("downstream.windows", 0, r"\[downstream\] windows: must be positive"),
    ("downstream.pairs", ["fancy"], r"\[downstream\] pairs: unknown 'fancy'; choose from trained, drift"),
    ("whole.windows", 0, r"\[whole\] windows: must be positive"),
    ("dose.windows", 0, r"\[dose\] windows: must be positive"),
])
def test_check_rejects_bad_settings_with_the_fix(name, value, needle):
    with pytest.raises(UsageError, match=needle):
        _set(preset_config("quick"), name, value).check()


def test_check_spans_the_studies():
    """What no study can check alone: a dose study checks its pairs against the run's designs, whole
    models need a recipe in both the run's and the downstream study's, and a whole model is no layer."""
    quick = preset_config("quick")
    with pytest.raises(UsageError, match=r"\[dose\] seeds: \[7\] are not all committed training seeds of the trained "
                                         "design A"):
        _set(_set(preset_config("quick"), "dose.scenarios", ["shift-1"]), "dose.seeds", [7]).check()
    no_pair = _set(_set(preset_config("quick"), "dose.scenarios", ["shift-1"]), "dose.seeds", [7])
    _set(no_pair, "designs", ["ln-swiglu"]).check()  # a design no pair comes in: no seed to hold
    with pytest.raises(UsageError, match=r"\[whole\] models: whole-model cells run the recipes that are in both "
                                         r"recipes and \[downstream\] recipes, and none is; name some in both"):
        _set(_set(quick, "whole.models", ["smollm2"]), "downstream.recipes", []).check()
    with pytest.raises(UsageError, match=r"models: 'tiny' is a whole model .*; list it in \[whole\] models"):
        RunConfig(models=["tiny"], user_whole={"tiny": None}).check()


def test_a_per_model_table_routes_its_timing_keys_into_the_latency_study():
    """[per_model.NAME] keys stay flat; the latency ones replace that model's LatencyConfig fields and
    nothing else, and the run's own latency study is left as it was."""
    run = RunConfig(models=["tiny", "small"],
                    per_model={"small": {"prefill": [1, 16], "warmup": 0, "max_seconds": 5.0, "memory": False,
                                         "n_requests": 3}}).check()
    small, tiny = run.for_model("small"), run.for_model("tiny")
    assert small.latency == dataclasses.replace(run.latency, prefill=(1, 16), warmup=0, max_seconds=5.0, memory=False)
    assert small.n_requests == 3 and small.downstream == run.downstream
    assert tiny is run and run.latency == LatencyConfig()


def test_a_manifest_records_each_study_as_a_table_and_reads_back():
    config = RunConfig(downstream=DownstreamConfig(recipes=["fp32"], windows=8), dose=DoseConfig(scenarios=["clean"]),
                       whole=WholeConfig(windows=4), latency=LatencyConfig(prefill=(2, 16), enabled=False))
    recorded = json.loads(json.dumps(config.to_dict()))  # as the manifest holds it
    assert recorded["latency"]["prefill"] == [2, 16] and recorded["latency"]["enabled"] is False
    assert recorded["downstream"]["windows"] == 8 and recorded["whole"] == {"models": [], "windows": 4}
    assert config.to_dict() == recorded  # what --resume compares against the manifest
    assert RunConfig.from_dict(recorded) == config


def test_an_older_runs_flat_config_reads_as_the_nested_one():
    """The format-1 run's manifest records the flat config of its revision; it reads to the same
    RunConfig as the nested config that names those settings in their tables."""
    flat = json.loads((ROOT / "tests" / "data" / "runs" / "quick-cpu-amx-format1" / "manifest.json").read_text())
    nested = {key: value for key, value in flat["config"].items() if key in (
        "calibration", "calibration_requests", "delta", "designs", "device", "files_dir", "models", "n_requests",
        "per_model", "preset", "recipes", "residual", "scenarios", "seed", "seq_len", "shard", "threads",
        "user_models", "user_recipes", "user_scenarios")}
    nested |= {"latency": {"enabled": True, "warmup": 2, "min_iterations": 10, "min_seconds": 0.3,
                           "max_iterations": 200, "max_seconds": 60.0, "max_runnable_seconds": 10.0, "decode": [1, 1],
                           "prefill": [8, 128], "memory": True, "diagnose": True, "ort_spinning": False},
               "downstream": {"recipes": ["fp32", "ort-int8-dynamic", "bnb-nf4"], "inject": "ffn-input",
                              "scenarios": ["clean", "production", "domain-code"], "windows": 8}}
    old = RunConfig.from_dict(flat["config"])
    assert old == RunConfig.from_dict(nested)
    assert old.downstream.windows == 8 and old.downstream.draws == DownstreamConfig().draws  # unrecorded: default
    assert old.check().latency.prefill == (8, 128)


def test_downstream_seeds_in_a_config_file_are_integers(tmp_path):
    (tmp_path / "run.toml").write_text('[downstream]\nseeds = [0, 2]\ndraws = 7\n')
    config = load_toml(tmp_path / "run.toml").check()
    assert config.downstream.seeds == [0, 2] and config.downstream.draws == 7
    (tmp_path / "run.toml").write_text('[downstream]\nseeds = ["0"]\n')
    with pytest.raises(UsageError, match=r"\[downstream\] 'seeds' must be a list of integers, e\.g\. seeds = \[0, 1"):
        load_toml(tmp_path / "run.toml")


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="--config: no file at"):
        load_toml(tmp_path / "absent.toml")


def test_a_replay_cannot_drive_a_whole_model(tmp_path):
    (tmp_path / "run.toml").write_text('[downstream]\nscenarios = ["captured"]\n'
                                       '[scenario.captured]\nreplay = "h.npy"\n')
    with pytest.raises(UsageError, match=r"\[downstream\] scenarios: 'captured' replays hidden states, and a whole"):
        load_toml(tmp_path / "run.toml").check()


def test_a_replay_cannot_calibrate_a_whole_model(tmp_path):
    (tmp_path / "run.toml").write_text('calibration = ["captured"]\n[downstream]\nrecipes = ["ort-int8-qdq-minmax"]\n'
                                       '[scenario.captured]\nreplay = "h.npy"\n')
    with pytest.raises(UsageError, match="calibration: 'captured' replays hidden states, which cannot calibrate"):
        load_toml(tmp_path / "run.toml").check()


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_example_config_loads_and_checks(example):
    config = load_toml(example).check()
    assert config.recipes and set(config.whole.models) <= {*config.user_whole, "smollm2"}


def test_the_shipped_smollm2_example_plans_every_recipe_on_every_text_as_design_b():
    from ffnbench.bench.runner import plan

    config = load_toml(Path(__file__).resolve().parents[1] / "examples" / "smollm2.toml").check()
    cells = [c for c in plan(config) if c.kind == "whole"]
    assert {c.design for c in cells} == {"B"} and {c.model for c in cells} == {"smollm2"}
    assert len(cells) == len(config.downstream.recipes) * len(config.downstream.scenarios) == len(plan(config))
    assert config.whole_spec("smollm2").path.is_file()  # installed by `make venv`, by hash
