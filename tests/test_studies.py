"""The studies a run composes (bench/studies.py): each refuses its own bad settings in one line that
names its table and key and says the fix, and takes its defaults as they are."""

from pathlib import Path

import pytest

from ffnbench.bench.studies import DoseConfig, DownstreamConfig, WholeConfig
from ffnbench.bench.traffic.scenarios import NAMED, Replay
from ffnbench.errors import UsageError
from ffnbench.quant import RECIPES

SCENARIOS = {**NAMED, "captured": Replay("captured", Path("h.npy"))}  # a user's replay among the named ones


def refused(check, needle: str) -> None:
    with pytest.raises(UsageError) as e:
        check()
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def downstream(**settings) -> None:
    DownstreamConfig(**settings).check(["A", "B"], RECIPES, SCENARIOS, has_whole=False)


@pytest.mark.parametrize(("settings", "needle"), [
    ({"recipes": ["int3"]}, "[downstream] recipes: unknown 'int3'; choose from fp32, "),
    ({"recipes": ["fp32"], "scenarios": ["nowhere"]}, "[downstream] scenarios: unknown 'nowhere'; choose from clean"),
    ({"scenarios": ["captured"]}, "[downstream] scenarios: 'captured' replays hidden states, and a whole model reads "
                                  "text; use a synthetic scenario or a text domain (domain-code)"),
    ({"recipes": ["fp32"], "scenarios": []}, "[downstream] scenarios: empty; name at least one (e.g. clean) or set "
                                             "[downstream] recipes = []"),
    ({"recipes": ["fp32"], "pairs": []}, "[downstream] pairs: empty; name at least one of trained, drift or set "
                                         "[downstream] recipes = []"),
    ({"recipes": ["fp32"], "pairs": ["fancy"]}, "[downstream] pairs: unknown 'fancy'; choose from trained, drift"),
    ({"recipes": ["fp32"], "seeds": [0, 7]}, "[downstream] seeds: [0, 7] are not all committed training seeds of the "
                                             "trained design A; choose from 0, 1, 2"),
    ({"recipes": ["fp32"], "seeds": []}, "[downstream] seeds: [] are not all committed training seeds"),
    ({"inject": "middle"}, "[downstream] inject: unknown 'middle'; choose one of ffn-input, residual"),
    ({"windows": 0}, "[downstream] windows: must be positive, got 0"),
    ({"draws": 0}, "[downstream] draws: must be positive, got 0"),
    ({"healthy_delta_bpb": 0.0}, "[downstream] healthy_delta_bpb: must be positive, got 0.0"),
])
def test_the_downstream_study_refuses_bad_settings_with_the_fix(settings, needle):
    refused(lambda: downstream(**settings), needle)


def test_the_downstream_study_checks_its_pairs_only_where_it_runs():
    downstream(seeds=[7], pairs=["fancy"])  # no recipes: no lm cells, nothing loaded
    # whole models may run without a pair; with one named, its seeds must still be committed
    DownstreamConfig(recipes=["fp32"], pairs=[]).check(["A"], RECIPES, SCENARIOS, has_whole=True)
    refused(lambda: DownstreamConfig(recipes=["fp32"], seeds=[7]).check(["A"], RECIPES, SCENARIOS, has_whole=True),
            "[downstream] seeds: [7] are not all committed")
    DownstreamConfig(recipes=["fp32"], seeds=[7]).check(["ln-swiglu"], RECIPES, SCENARIOS, False)  # no pair's design


def dose(**settings) -> None:
    DoseConfig(**{"scenarios": ["clean", "shift-1"], **settings}).check(["A", "B"], SCENARIOS)


@pytest.mark.parametrize(("settings", "needle"), [
    ({"scenarios": ["domain-code"]}, "[dose] scenarios: 'domain-code' is not a synthetic scenario (a dose is a drift's "
                                     "strength); choose from clean"),
    ({"scenarios": ["captured"]}, "[dose] scenarios: 'captured' is not a synthetic scenario"),
    ({"inject": []}, "[dose] inject: empty; choose from ffn-input, residual"),
    ({"inject": ["middle"]}, "[dose] inject: unknown 'middle'; choose from ffn-input, residual"),
    ({"pairs": []}, "[dose] pairs: empty; name at least one of trained, drift or set [dose] scenarios = []"),
    ({"pairs": ["fancy"]}, "[dose] pairs: unknown 'fancy'; choose from trained, drift"),
    ({"seeds": [7]}, "[dose] seeds: [7] are not all committed training seeds of the trained design A"),
    ({"windows": 0}, "[dose] windows: must be positive, got 0"),
    ({"scenarios": [], "windows": -1}, "[dose] windows: must be positive, got -1"),
])
def test_the_dose_study_refuses_bad_settings_with_the_fix(settings, needle):
    refused(lambda: dose(**settings), needle)


def test_a_dose_study_without_scenarios_is_off_and_checks_nothing_else():
    DoseConfig(inject=[], pairs=["fancy"], seeds=[7]).check(["A", "B"], SCENARIOS)


@pytest.mark.parametrize(("settings", "needle"), [
    ({"models": ["mine"]}, "[whole] models: 'mine' is not a whole model of the config or a shipped one (smollm2); "
                           "define [model.mine] with checkpoint = \"DIR\" or gguf = \"FILE.gguf\""),
    ({"windows": 0}, "[whole] windows: must be positive, got 0"),
])
def test_the_whole_study_refuses_bad_settings_with_the_fix(settings, needle):
    refused(lambda: WholeConfig(**settings).check({}), needle)


def test_the_whole_study_takes_the_configs_own_models_and_the_shipped_ones():
    WholeConfig(models=["mine", "smollm2"]).check({"mine": object()})


def test_every_default_checks():
    DownstreamConfig(recipes=["fp32"]).check(["A", "B"], RECIPES, NAMED, has_whole=False)
    DoseConfig(scenarios=["clean"]).check(["A", "B"], NAMED)
    WholeConfig().check({})
